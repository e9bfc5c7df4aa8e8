"""Stripe PaymentIntents adapter over plain HTTP (``requests``; no ``stripe`` SDK).

Wire format: form-encoded POST bodies with bracket nesting (``metadata[out_trade_no]=…``),
``Authorization: Bearer sk_…``, optional ``Stripe-Version``; amounts are integer minor units, which
for every currency in :data:`domain.money.CURRENCY_EXPONENTS` is Stripe's "smallest currency unit"
(cents; yen and won are zero-decimal at both ends).

Contracts beyond :class:`adapters.payments.base.PaymentProvider`:

* Every POST carries an ``Idempotency-Key``: ``create`` sends ``request.idempotency_key``;
  ``refund`` sends ``refund_no``; ``close`` sends ``cancel:{pi}:{request.idempotency_key}`` (the
  prefix keeps it from colliding with a create key, which Stripe would refuse as a different
  endpoint). Keys longer than Stripe's 255 characters are replaced by their SHA-256. When a
  cancel or refund key replays a stored 500, the next key of a fixed sequence (``…:r1``,
  ``…:r2``) is used — for a refund only after ``query_refund`` finds no refund with its number
  (see :func:`_key_sequence`). ``create`` leaves that to the service (``REPLAYED_FAILURE``), which
  stores the next key of the same sequence (:func:`adapters.payments.base.rotated_key`).
* ``query``/``refund``/``query_refund`` need ``ref.provider_ref`` (the ``pi_…`` id that
  ``create`` returned); without it they raise ``ProviderRejected(code="missing_reference")``.
  ``close`` without it repeats ``request.create`` with the same key to recover the id (a
  replay); a replayed stored failure there means no intent exists: closed, state ``NOT_FOUND``.
  Stripe's search API is not used: it lags writes by up to a minute.
* ``query`` expands ``latest_charge`` so that a fully refunded payment reports ``REFUNDED``
  (``raw_status`` stays Stripe's ``succeeded``) and ``paid_at`` is the charge time.
* ``close`` on a PaymentIntent Stripe will not cancel (``payment_intent_unexpected_state``)
  retrieves it and returns ``closed=False`` with its status (``PAID`` when it was paid; also when it
  is ``processing``, then ``PENDING``); an already canceled one gives ``closed=True``.
* ``query_refund`` gets ``refund_no``, not Stripe's ``re_…`` id, so it lists the PaymentIntent's
  refunds (``GET /v1/refunds?payment_intent=…``, all pages) and matches ``metadata.refund_no``;
  none matches → ``ProviderRejected(code="resource_missing")``.
* ``notify_url``/``expires_at`` of :class:`CreatePayment` are not sent: Stripe webhooks are
  configured per account endpoint, and PaymentIntents do not expire (the service closes them).
* Notifications: ``payment_intent.succeeded|canceled|payment_failed`` → ``PAYMENT`` (the status
  comes from the event's object, ``paid_at`` is the event time); ``refund.created|updated|failed``,
  ``charge.refund.updated`` and ``charge.refunded`` → ``REFUND``; everything else → ``OTHER``.
  Every refund and charge event sets ``provider_ref`` (the ``pi_…`` id): a refund made in the
  dashboard has no ``metadata.out_trade_no``, so that is how its payment is found.
  ``refund.*`` events carry the Refund object: its state, amount, ``re_…`` id and
  ``metadata.refund_no`` (``""`` when we did not make it). For ``charge.refunded`` the refund is
  the newest in the charge's embedded ``refunds`` list (API versions before 2022-11-15); a charge
  without that list gives ``refund=None`` and ``refunds_unlisted=True`` — the adapter does not
  invent a refund from the charge's total: the caller lists them (:meth:`list_refunds`). When the
  charge is fully refunded, ``status`` is also set (``REFUNDED``).
  ``charge.dispute.created|updated|closed|funds_withdrawn|funds_reinstated`` → ``DISPUTE`` with
  ``out_trade_no=None`` and the dispute in ``dispute`` (:mod:`adapters.payments.stripe_disputes`).
* Errors are classified once, in :func:`classify_error`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests

from adapters.payments.base import (
    REPLAYED_FAILURE,
    ClosePayment,
    CloseResult,
    CreatePayment,
    Notification,
    NotificationKind,
    NotificationReply,
    PaymentCreated,
    PaymentRef,
    PaymentState,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
    RefundRequest,
    RefundResult,
    RefundState,
    SignatureInvalid,
    TradeStatus,
    rotated_key,
)
from adapters.payments.stripe_disputes import DISPUTE_EVENTS, dispute_notification
from domain.money import Money, MoneyError

__all__ = ["StripeConfig", "StripeProvider", "classify_error", "encode_form", "verify_signature"]

NAME = "stripe"
_MAX_KEY_LEN = 255
#: How many fresh keys a POST may move on to after stored failures (see ``_key_sequence``);
#: 17 stored 500s in a row for one operation is not a fault rate any test or outage produces.
_MAX_KEY_ROTATIONS = 16

_PI_STATES: Mapping[str, PaymentState] = {
    "requires_payment_method": PaymentState.PENDING,
    "requires_confirmation": PaymentState.PENDING,
    "requires_action": PaymentState.PENDING,
    "processing": PaymentState.PENDING,
    "requires_capture": PaymentState.PENDING,
    "succeeded": PaymentState.PAID,
    "canceled": PaymentState.CLOSED,
}
_REFUND_STATES: Mapping[str, RefundState] = {
    "pending": RefundState.PENDING,
    "requires_action": RefundState.PENDING,
    "succeeded": RefundState.SUCCEEDED,
    "failed": RefundState.FAILED,
    "canceled": RefundState.FAILED,
}
_PAYMENT_EVENTS = frozenset(
    {"payment_intent.succeeded", "payment_intent.canceled", "payment_intent.payment_failed"}
)
#: Events whose object is one Refund (``charge.refund.updated`` is the older name of an update).
_REFUND_EVENTS = frozenset(
    {"refund.created", "refund.updated", "refund.failed", "charge.refund.updated"}
)
_RETRYABLE_CODES = frozenset({"lock_timeout", "rate_limit"})  # legacy 400 rate_limit included
# Failures where the request may or may not have reached Stripe: safe to retry with the same key.
_NETWORK_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class StripeConfig:
    """Connection settings. ``api_base`` is the origin, e.g. ``https://api.stripe.com``."""

    api_base: str
    secret_key: str = field(repr=False)
    webhook_secret: str = field(repr=False)
    api_version: str | None = None
    tolerance_s: int = 300
    connect_timeout: float = 3.05
    read_timeout: float = 10.0


# -- pure helpers (module level so they can be tested without a server) ---------------------
def encode_form(params: Mapping[str, object], prefix: str = "") -> list[tuple[str, str]]:
    """Stripe's form encoding: ``{"metadata": {"a": "1"}}`` → ``[("metadata[a]", "1")]``.

    Lists use indices (``key[0]``) like stripe-python, booleans are ``true``/``false``, ``None``
    is left out. Only ``str``, ``int``, ``bool``, mappings and lists/tuples are accepted.
    """
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        pairs.extend(_encode_value(f"{prefix}[{key}]" if prefix else key, value))
    return pairs


def _encode_value(name: str, value: object) -> list[tuple[str, str]]:
    if value is None:
        return []
    if isinstance(value, bool):  # before int: bool is an int subclass
        return [(name, "true" if value else "false")]
    if isinstance(value, str | int):
        return [(name, str(value))]
    if isinstance(value, Mapping):
        return encode_form(value, name)
    if isinstance(value, list | tuple):
        return [
            pair for i, item in enumerate(value) for pair in _encode_value(f"{name}[{i}]", item)
        ]
    raise TypeError(f"cannot form-encode {name}={value!r}")


def classify_error(response: requests.Response) -> ProviderError:
    """The one place that maps a non-2xx Stripe answer to the error tree.

    Modeled on stripe-python's ``_should_retry``: ``Stripe-Should-Retry`` decides when present
    (``true`` → retryable, ``false`` → not); otherwise 409 (concurrent idempotent request), 429
    (rate limit, ``lock_timeout``) and >= 500 are retryable, as are the ``lock_timeout`` and legacy
    ``rate_limit`` codes on other statuses. Everything else is a rejection whose ``code`` is
    ``error.code`` or ``error.type`` (so a mismatched Idempotency-Key gives
    ``idempotency_error``); 401/403 without a code give ``authentication_error`` /
    ``permission_error``.
    """
    status = response.status_code
    error = _error_body(response)
    err_type = _opt_str(error, "type")
    code = _opt_str(error, "code")
    if err_type == "idempotency_error" and status == 400:
        code = "idempotency_error"  # the code (idempotency_key_mismatch) is not documented
    code = code or {401: "authentication_error", 403: "permission_error"}.get(status) or err_type
    message = _error_message(response, error, code)
    should_retry = response.headers.get("Stripe-Should-Retry")
    if should_retry is not None:
        retry = should_retry.lower() == "true"
    else:
        retry = status in (409, 429) or status >= 500 or code in _RETRYABLE_CODES
    if retry and status >= 500 and response.headers.get("Idempotent-Replayed") == "true":
        # Stripe replays a saved 5xx for the same key forever: the caller needs a new key.
        return ProviderUnavailable(NAME, message, code=REPLAYED_FAILURE)
    error_cls = ProviderUnavailable if retry else ProviderRejected
    return error_cls(NAME, message, code=code or f"http_{status}")


def _error_body(response: requests.Response) -> Json:
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _error_message(response: requests.Response, error: Json, code: str | None) -> str:
    text = _opt_str(error, "message") or response.reason or ""
    request_id = response.headers.get("Request-Id", "?")
    return f"HTTP {response.status_code} {code or ''}: {text} (request {request_id})"


def verify_signature(
    header: str | None, body: bytes, secret: str, tolerance_s: int, now: float
) -> None:
    """Verify a ``Stripe-Signature`` header over the raw body, or raise :class:`SignatureInvalid`.

    Header ``t=<unix>,v1=<hex>[,v1=<hex>…]`` (other schemes such as ``v0`` are ignored). The
    expected value is hex HMAC-SHA256(secret, ``"{t}." + body``); any ``v1`` may match (Stripe
    sends several while a secret is being rolled), compared in constant time. A timestamp more
    than ``tolerance_s`` away from ``now`` in either direction is refused: it bounds replays.
    """
    if not header:
        raise SignatureInvalid(NAME, "missing Stripe-Signature header")
    timestamp, candidates = _parse_signature_header(header)
    if abs(now - timestamp) > tolerance_s:
        raise SignatureInvalid(NAME, f"timestamp {timestamp} outside the {tolerance_s} s tolerance")
    payload = str(timestamp).encode() + b"." + body
    expected = hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()
    # Check every candidate (no early exit) so timing does not reveal which one matched.
    matches = [hmac.compare_digest(expected, candidate) for candidate in candidates]
    if not any(matches):
        raise SignatureInvalid(NAME, "no v1 signature matches")


def _parse_signature_header(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise SignatureInvalid(NAME, "malformed Stripe-Signature header")
        if key == "t":
            if not (value.isascii() and value.isdigit()) or timestamp is not None:
                raise SignatureInvalid(NAME, "malformed Stripe-Signature timestamp")
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureInvalid(NAME, "Stripe-Signature lacks t or v1")
    return timestamp, candidates


# -- the adapter ------------------------------------------------------------------------------
class StripeProvider:
    """:class:`adapters.payments.base.PaymentProvider` for Stripe PaymentIntents.

    ``session`` lets the caller share a connection pool; ``clock`` (unix seconds) exists for
    signature-tolerance tests. Thread-safe as far as the ``requests.Session`` is.
    """

    name = NAME

    def __init__(
        self,
        config: StripeConfig,
        session: requests.Session | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._session = session or requests.Session()
        self._clock = clock
        self._base = config.api_base.rstrip("/")

    # -- PaymentProvider ----------------------------------------------------------------------
    def create(self, request: CreatePayment) -> PaymentCreated:
        """POST /v1/payment_intents; the same ``idempotency_key`` returns the same PaymentIntent."""
        metadata = {**request.metadata, "out_trade_no": request.out_trade_no}  # ours wins
        params: dict[str, object] = {
            "amount": request.amount.amount,
            "currency": request.amount.currency.lower(),
            "automatic_payment_methods": {"enabled": True},
            "description": request.description or None,  # Stripe refuses an empty string
            "metadata": metadata,
        }
        pi = self._post("/v1/payment_intents", params, request.idempotency_key)
        return PaymentCreated(
            provider_ref=_str(pi, "id"),
            instructions={"client_secret": _str(pi, "client_secret")},
        )

    def query(self, ref: PaymentRef) -> TradeStatus:
        """GET /v1/payment_intents/{id} with the latest charge expanded."""
        pi = self._get(f"/v1/payment_intents/{_pi_id(ref)}", [("expand[]", "latest_charge")])
        return _payment_status(pi)

    def close(self, request: ClosePayment) -> CloseResult:
        """POST …/cancel; a PaymentIntent past cancelling comes back as ``closed=False``.

        Without ``ref.provider_ref`` the PaymentIntent id is recovered by repeating
        ``request.create`` (same idempotency key, so Stripe replays what it stored). A replayed
        stored failure means this key never created an intent — and an earlier key was only
        given up after it replayed a failure too — so the trade never existed: ``closed=True``,
        state ``NOT_FOUND``. Should the repeat create the intent now, it is cancelled at once.
        """
        ref = request.ref
        if not ref.provider_ref and request.create is not None:
            try:
                created = self.create(request.create)
            except ProviderUnavailable as exc:
                if exc.code != REPLAYED_FAILURE:
                    raise
                never = TradeStatus(PaymentState.NOT_FOUND, raw_status="never_created")
                return CloseResult(closed=True, status=never)
            ref = PaymentRef(ref.out_trade_no, created.provider_ref)
        pi_id = _pi_id(ref)
        try:
            pi = self._cancel(pi_id, request.idempotency_key)
        except ProviderRejected as exc:
            if exc.code != "payment_intent_unexpected_state":
                raise
            status = self.query(ref)
            return CloseResult(closed=status.state is PaymentState.CLOSED, status=status)
        return CloseResult(closed=True, status=_payment_status(pi))

    def _cancel(self, pi_id: str, close_key: str) -> Json:
        # Cancelling twice does no harm (the second is refused, and close re-reads the intent),
        # so a key that replays a stored 500 is simply followed by the next one.
        for n, key in enumerate(_key_sequence(f"cancel:{pi_id}:{close_key}")):
            try:
                return self._post(f"/v1/payment_intents/{pi_id}/cancel", {}, _idempotency_key(key))
            except ProviderUnavailable as exc:
                if not _move_on(exc, n):
                    raise
        raise AssertionError("unreachable: _move_on refuses the last key")

    def refund(self, request: RefundRequest) -> RefundResult:
        """POST /v1/refunds with ``Idempotency-Key: refund_no``: one refund per ``refund_no``.

        ``reason`` goes into metadata: Stripe's own ``reason`` is a closed enum.
        """
        params: dict[str, object] = {
            "payment_intent": _pi_id(request.ref),
            "amount": request.amount.amount,
            "metadata": {
                "refund_no": request.refund_no,
                "out_trade_no": request.ref.out_trade_no,
                "reason": request.reason or None,
            },
        }
        for n, key in enumerate(_key_sequence(request.refund_no)):
            try:
                refund = self._post("/v1/refunds", params, _idempotency_key(key))
            except ProviderUnavailable as exc:
                if not _move_on(exc, n):
                    raise
            else:
                return _refund_result(refund, request.refund_no)
            # A stored 500 may still hide a refund that was made: look before a new key.
            try:
                return self.query_refund(request.ref, request.refund_no)
            except ProviderRejected as missing:
                if missing.code != "resource_missing":
                    raise
        raise AssertionError("unreachable: _move_on refuses the last key")

    def query_refund(self, ref: PaymentRef, refund_no: str) -> RefundResult:
        """Find the refund whose ``metadata.refund_no`` matches, among the PaymentIntent's."""
        for refund in self._refunds_of(ref):
            if _metadata(refund, "refund_no") == refund_no:
                return _refund_result(refund, refund_no)
        raise ProviderRejected(
            NAME, f"no refund {refund_no!r} for {ref.provider_ref}", code="resource_missing"
        )

    def list_refunds(self, ref: PaymentRef) -> list[RefundResult]:
        """``GET /v1/refunds?payment_intent=…``, all pages, newest first: every refund of the
        payment, ours (``refund_no`` from ``metadata.refund_no``) and those made elsewhere
        (``refund_no=""``, named by ``provider_refund_ref``)."""
        return [_refund_result(r, _metadata(r, "refund_no") or "") for r in self._refunds_of(ref)]

    def _refunds_of(self, ref: PaymentRef) -> Iterator[Json]:
        query: list[tuple[str, str]] = [("payment_intent", _pi_id(ref)), ("limit", "100")]
        cursor: str | None = None
        while True:
            page = self._get(
                "/v1/refunds", query + ([("starting_after", cursor)] if cursor else [])
            )
            refunds = [r for r in page.get("data") or [] if isinstance(r, dict)]
            yield from refunds
            if page.get("has_more") is not True or not refunds:
                return
            cursor = _str(refunds[-1], "id")

    def parse_notification(self, headers: Mapping[str, str], body: bytes) -> Notification:
        """Verify ``Stripe-Signature`` over the raw ``body`` first, then parse the event."""
        header = next((v for k, v in headers.items() if k.lower() == "stripe-signature"), None)
        cfg = self._config
        verify_signature(header, body, cfg.webhook_secret, cfg.tolerance_s, self._clock())
        try:
            event = json.loads(body)
        except ValueError as exc:
            raise ProviderRejected(NAME, "event is not JSON", code="invalid_payload") from exc
        if not isinstance(event, dict):
            raise ProviderRejected(NAME, "event is not an object", code="invalid_payload")
        return _notification(event)

    def notification_reply(self, ok: bool) -> NotificationReply:
        """200 acknowledges; any other status makes Stripe retry the delivery."""
        body = b'{"received":true}' if ok else b'{"received":false}'
        return NotificationReply(200 if ok else 400, body, "application/json")

    # -- HTTP -------------------------------------------------------------------------------
    def _post(self, path: str, params: Mapping[str, object], idempotency_key: str) -> Json:
        return self._request("POST", path, data=encode_form(params), key=idempotency_key)

    def _get(self, path: str, query: list[tuple[str, str]] | None = None) -> Json:
        return self._request("GET", path, query=query)

    def _request(
        self,
        method: str,
        path: str,
        *,
        data: list[tuple[str, str]] | None = None,
        query: list[tuple[str, str]] | None = None,
        key: str | None = None,
    ) -> Json:
        headers = {"Authorization": f"Bearer {self._config.secret_key}", "User-Agent": "orderflow"}
        if self._config.api_version:
            headers["Stripe-Version"] = self._config.api_version
        if key is not None:
            headers["Idempotency-Key"] = key
        try:
            response = self._session.request(
                method,
                self._base + path,
                data=data,
                params=query,
                headers=headers,
                timeout=(self._config.connect_timeout, self._config.read_timeout),
            )
        except _NETWORK_ERRORS as exc:
            raise ProviderUnavailable(NAME, f"{method} {path}: {exc!r}", code="network") from exc
        except requests.RequestException as exc:  # bad URL, bad config: retrying will not help
            raise ProviderRejected(NAME, f"{method} {path}: {exc!r}", code="request_error") from exc
        if not 200 <= response.status_code < 300:
            raise classify_error(response)
        return _json_object(response)


# -- mapping Stripe objects -------------------------------------------------------------------
def _payment_status(pi: Json, paid_at: datetime | None = None) -> TradeStatus:
    """Normalize a PaymentIntent; unknown statuses count as PENDING (never final by accident)."""
    raw = _str(pi, "status")
    state = _PI_STATES.get(raw, PaymentState.PENDING)
    charge = pi.get("latest_charge")
    if isinstance(charge, dict):  # expanded
        if state is PaymentState.PAID and charge.get("refunded") is True:
            state = PaymentState.REFUNDED
        paid_at = paid_at or _timestamp(charge.get("created"))
    paid = state in (PaymentState.PAID, PaymentState.REFUNDED)
    amount = _int(pi, "amount_received" if paid else "amount")
    return TradeStatus(
        state=state,
        raw_status=raw,
        provider_ref=_str(pi, "id"),
        amount=_money(amount, _str(pi, "currency")),
        paid_at=paid_at if paid else None,
    )


def _refund_result(refund: Json, refund_no: str) -> RefundResult:
    raw = _str(refund, "status")
    return RefundResult(
        refund_no=refund_no,
        state=_REFUND_STATES.get(raw, RefundState.PENDING),
        raw_status=raw,
        amount=_money(_int(refund, "amount"), _str(refund, "currency")),
        provider_refund_ref=_str(refund, "id"),
    )


def _notification(event: Json) -> Notification:
    event_id, event_type = _str(event, "id"), _str(event, "type")
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        raise ProviderRejected(NAME, "event without data.object", code="invalid_payload")
    if event_type in _PAYMENT_EVENTS:
        status = _payment_status(obj, paid_at=_timestamp(event.get("created")))
        return Notification(
            NotificationKind.PAYMENT,
            event_id,
            _metadata(obj, "out_trade_no"),
            status=status,
            raw_type=event_type,
        )
    if event_type == "charge.refunded":
        return _charge_refunded(event_id, event_type, obj)
    if event_type in DISPUTE_EVENTS:
        return dispute_notification(event_id, event_type, event, obj)
    if event_type in _REFUND_EVENTS:
        refund = _refund_result(obj, _metadata(obj, "refund_no") or "")
        return Notification(
            NotificationKind.REFUND,
            event_id,
            _metadata(obj, "out_trade_no"),
            refund=refund,
            raw_type=event_type,
            provider_ref=_opt_str(obj, "payment_intent"),
        )
    return Notification(
        NotificationKind.OTHER, event_id, _metadata(obj, "out_trade_no"), raw_type=event_type
    )


def _charge_refunded(event_id: str, event_type: str, charge: Json) -> Notification:
    """A charge with (some) refunds. With an embedded list (API versions before 2022-11-15) the
    newest refund is the one this event is for; without one, nothing says which refund it was:
    ``refund=None`` and ``refunds_unlisted`` (the caller lists the payment's refunds)."""
    embedded = charge.get("refunds")
    refunds = embedded.get("data") if isinstance(embedded, dict) else None
    newest = refunds[0] if isinstance(refunds, list) and refunds else None
    currency = _str(charge, "currency")
    refund = None
    out_trade_no = _metadata(charge, "out_trade_no")
    if isinstance(newest, dict):
        refund = _refund_result(newest, _metadata(newest, "refund_no") or "")
        out_trade_no = out_trade_no or _metadata(newest, "out_trade_no")
    status = None
    if charge.get("refunded") is True:
        status = TradeStatus(
            state=PaymentState.REFUNDED,
            raw_status="refunded",
            provider_ref=_opt_str(charge, "payment_intent"),
            amount=_money(_int(charge, "amount"), currency),
        )
    return Notification(
        NotificationKind.REFUND,
        event_id,
        out_trade_no,
        status=status,
        refund=refund,
        raw_type=event_type,
        provider_ref=_opt_str(charge, "payment_intent"),
        refunds_unlisted=refund is None,
    )


# -- typed access to JSON (a malformed answer is the provider's fault, not ours) ---------------
def _json_object(response: requests.Response) -> Json:
    try:
        body = response.json()
    except ValueError as exc:
        raise ProviderUnavailable(NAME, "response is not JSON", code="invalid_response") from exc
    if not isinstance(body, dict):
        raise ProviderUnavailable(NAME, "response is not a JSON object", code="invalid_response")
    return body


def _bad(obj: Json, key: str) -> ProviderRejected:
    kind = obj.get("object", "object")
    return ProviderRejected(NAME, f"{kind} without a valid {key!r}", code="invalid_response")


def _str(obj: Json, key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise _bad(obj, key)
    return value


def _opt_str(obj: Json, key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) else None


def _int(obj: Json, key: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(obj, key)
    return value


def _metadata(obj: Json, key: str) -> str | None:
    metadata = obj.get("metadata")
    return _opt_str(metadata, key) if isinstance(metadata, dict) else None


def _money(amount: int, currency: str) -> Money:
    try:
        return Money(amount, currency.upper())
    except MoneyError as exc:
        raise ProviderRejected(NAME, str(exc), code="unsupported_currency") from exc


def _timestamp(value: object) -> datetime | None:
    """A Unix time as an aware datetime; None when absent or not one a datetime can hold (a
    signed event's ``created`` before year 1 is nonsense, not a reason to fail the webhook)."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return None


def _pi_id(ref: PaymentRef) -> str:
    if not ref.provider_ref:
        raise ProviderRejected(
            NAME, f"{ref.out_trade_no}: no PaymentIntent id stored", code="missing_reference"
        )
    return ref.provider_ref


def _key_sequence(base_key: str) -> list[str]:
    """The keys a POST may use, in order: ``base``, ``base:r1`` … ``base:r{_MAX_KEY_ROTATIONS}``.

    Stripe replays a saved 500 for its key forever, so a retry under that key can never succeed:
    the next key is used instead. Nothing is stored: every call walks the sequence from its start
    (a replay is cheap), so all workers agree on the next key, and Stripe's idempotency makes that
    one key execute once — two workers never issue the same refund under two keys.
    """
    return [rotated_key(base_key, n) for n in range(_MAX_KEY_ROTATIONS + 1)]


def _move_on(exc: ProviderUnavailable, attempt: int) -> bool:
    """True if ``exc`` is a replayed stored failure and key number ``attempt`` is not the last."""
    return exc.code == REPLAYED_FAILURE and attempt < _MAX_KEY_ROTATIONS


def _idempotency_key(key: str) -> str:
    """Stripe allows 255 characters; a longer key is hashed, which keeps it stable."""
    if len(key) <= _MAX_KEY_LEN:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()
