"""A local Stripe (PaymentIntents + Refunds, API v1) that speaks the real wire protocol.

Written from the protocol description, not from the adapter: it imports nothing from
``adapters/``, ``services/`` or ``domain/`` so that a misunderstanding in the adapter cannot hide
behind shared code.

Wire behaviour
--------------
* ``Authorization: Bearer sk_…`` on every ``/v1`` call; a wrong key is a 401
  (``type=invalid_request_error``, no code), like Stripe.
* Request bodies (and GET query strings) are ``application/x-www-form-urlencoded`` with bracket
  nesting: ``metadata[k]=v`` → ``{"metadata": {"k": "v"}}``, ``expand[]=x`` and ``items[0]=x`` →
  lists. Unknown parameters are refused with ``parameter_unknown``, so adapter typos surface.
* Routes: ``POST /v1/payment_intents``, ``GET /v1/payment_intents/{id}``
  (``expand[]=latest_charge``), ``POST /v1/payment_intents/{id}/cancel``, ``POST /v1/refunds``,
  ``GET /v1/refunds/{id}``,
  ``GET /v1/refunds?payment_intent=…`` (a list object, newest first, ``limit``/``starting_after``),
  ``GET /v1/balance_transactions`` (:mod:`simulators.stripe_settlement`, with ``/_sim/settlement``).
* Idempotency (``Idempotency-Key`` on POST), as Stripe documents it: once endpoint execution
  begins, the first response — status and body, *including* a 500 from an injected fault and
  business errors such as ``payment_intent_unexpected_state`` — is saved per key and replayed
  (with ``Idempotent-Replayed: true``). The same key with other parameters or another endpoint
  is a 400 ``idempotency_error``; a request whose key is still in flight gets a 409
  (``idempotency_key_in_use`` — the code is third-party knowledge, unconfirmed). Nothing is saved
  for authentication failures, parameter validation failures, unknown objects or 409s.
* Faults from :class:`simulators.harness.Faults`: ``error_rate`` → 500 ``api_error`` (saved under
  the key, see above), ``timeout_rate``/``reset_rate`` as the harness does them (a hung request
  still executes afterwards, as a real server would), ``business_error="card_declined"`` → 402
  ``card_error`` with that code (saved under the key as well).

Webhooks
--------
Events (``payment_intent.created|succeeded|payment_failed|canceled``, ``charge.succeeded``,
``refund.created|updated|failed``, ``charge.refunded``, ``charge.refund.updated``,
``charge.dispute.created|updated|closed|funds_withdrawn|funds_reinstated`` — disputes in
:mod:`simulators.stripe_disputes`) are JSON
``event`` objects POSTed to ``webhook_url`` with ``Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of
"t.body">``, retried by :class:`simulators.harness.Notifier` until the receiver answers 2xx. Options
(attributes, also settable through ``POST /_sim/config``): ``webhook_url``, ``webhook_copies``
(duplicates), ``webhook_delay_s``, ``webhook_stale_by_s`` (sign with a timestamp that many seconds
in the past), ``webhook_types`` (``None`` = all), and :meth:`StripeSimulator.hold_webhooks` /
:meth:`StripeSimulator.release_webhooks` (``order="reverse"|"shuffle"``) for out-of-order delivery.
The signature timestamp is fixed when the event is queued; retries resend the same header.
Events emitted while ``webhook_url`` is ``None`` are kept in the ledger but never delivered.

API versions: events carry ``api_version`` and are rendered in the account's default version
(``api_version``, settable through ``/_sim/config``; today's by default); a request is answered
in its ``Stripe-Version`` header's version, else the default (a malformed one is a 400); the
latest 10,000 ``/v1`` requests' method, path and header are kept in ``api_requests``. The one
shape that differs is the Charge's: before 2022-11-15 it embeds its ``refunds`` list (in
``charge.refunded`` and an expanded ``latest_charge``), since then it does not — the refunds are
in the ``refund.*`` events and ``GET /v1/refunds``. A new refund sends ``refund.created`` and
``charge.refunded``; a status change sends ``refund.updated`` (with ``previous_attributes``),
``refund.failed`` when it failed, and the older ``charge.refund.updated``.

Books kept in the past: ``books_offset_s`` (default 0, settable through ``/_sim/config``) shifts
the ``created`` time of new PaymentIntents, charges and refunds — and so of their balance
transactions — by that many seconds, so that a test on real workers, whose clocks it cannot
move, finds today's payments on a past day's bill that Stripe would already list in full. Events
and webhook signatures keep the real time.

Control: :meth:`StripeSimulator.pay`, :meth:`StripeSimulator.fail_payment`,
:meth:`StripeSimulator.settle_refund`, :meth:`StripeSimulator.dashboard_refund` (a refund made
in the dashboard: no merchant metadata; created ``requires_action`` and moved with
``settle_refund`` to ``pending`` then ``succeeded``, with ``webhook_types={"refund.updated"}``, it
reaches the merchant only as ``refund.updated`` events), ``auto_pay_after_ms``,
``refunds_start_pending``,
``execution_delay_ms`` (hold requests inside endpoint execution, to provoke the 409); HTTP:
``POST /_sim/pay``, ``/_sim/fail_payment``, ``/_sim/settle_refund``, ``/_sim/dashboard_refund``
(``{"payment_intent"|"out_trade_no", "amount"?, "status"?}``), ``/_sim/dispute``,
``/_sim/config``,
``/_sim/release_webhooks`` plus the harness's ``/_sim/ledger``, ``/_sim/faults``, ``/_sim/reset``.

Run standalone: ``python -m simulators.stripe --port 12111`` with ``STRIPE_SECRET_KEY`` and
``STRIPE_WEBHOOK_SECRET`` (and optionally ``STRIPE_WEBHOOK_URL``) in the environment, or the
matching ``--secret-key`` / ``--webhook-secret`` / ``--webhook-url`` arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import hmac
import json
import os
import random
import re
import secrets
import string
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from simulators.harness import Notifier, Request, Response, SimulatorServer, serve_forever
from simulators.stripe_disputes import DisputeDesk
from simulators.stripe_settlement import BalanceBook

#: Stripe's newest API version when this was written (docs.stripe.com/changelog: Dahlia).
API_VERSION = "2026-04-22.dahlia"
#: From this API version on a Charge no longer embeds its ``refunds`` list (it is listed with
#: ``GET /v1/refunds?charge=…`` or expanded); older versions keep it.
REFUNDS_UNEMBEDDED_SINCE = "2022-11-15"
_VERSION_FORMAT = re.compile(r"\d{4}-\d{2}-\d{2}(\.[a-z]+)?")
_ID_ALPHABET = string.ascii_letters + string.digits
_CURRENCIES = frozenset(
    {"usd", "eur", "gbp", "cny", "hkd", "sgd", "aud", "cad", "chf", "jpy", "krw", "nzd", "sek"}
)
_CANCELABLE = frozenset(
    {"requires_payment_method", "requires_capture", "requires_confirmation", "requires_action"}
)
_PAYABLE = _CANCELABLE | {"processing"}
_CANCELLATION_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer", "abandoned"})
_REFUND_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})
_CREATE_PI_PARAMS = frozenset(
    {
        "amount",
        "currency",
        "automatic_payment_methods",
        "payment_method_types",
        "capture_method",
        "confirm",
        "customer",
        "description",
        "expand",
        "metadata",
        "payment_method",
        "receipt_email",
        "return_url",
        "statement_descriptor",
    }
)


# -- form encoding with bracket nesting -----------------------------------------------------------
def parse_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """``[("metadata[a]", "1"), ("expand[]", "x")]`` → ``{"metadata": {"a": "1"},
    "expand": ["x"]}``.

    Index keys (``items[0]``) become lists once every key of a level is a number.
    """
    root: dict[str, Any] = {}
    for key, value in pairs:
        head, _, rest = key.partition("[")
        parts = [head, *re.findall(r"([^\]]*)\]", rest)] if rest else [head]
        _insert(root, parts, value)
    return {k: _lists_from_indices(v) for k, v in root.items()}


def _insert(node: dict[str, Any], parts: list[str], value: str) -> None:
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if nxt == "":  # "a[]" appends a scalar
            node.setdefault(part, [])
            if isinstance(node[part], list):
                node[part].append(value)
            return
        child = node.setdefault(part, {})
        if not isinstance(child, dict):  # "a=1&a[b]=2": the later, nested form wins
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def _lists_from_indices(node: Any) -> Any:
    if isinstance(node, list):
        return [_lists_from_indices(v) for v in node]
    if not isinstance(node, dict):
        return node
    converted = {k: _lists_from_indices(v) for k, v in node.items()}
    if converted and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


# -- errors -----------------------------------------------------------------------------------
class _StripeError(Exception):
    """An error answer raised during validation; validation failures are never saved."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.response = _error_response(status, message, type_, code, param, extra)


def _error_response(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    error: dict[str, Any] = {"type": type_, "message": message}
    if code:
        error["code"] = code
        error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
    if param:
        error["param"] = param
    error.update(extra or {})
    return Response.json({"error": error}, status, headers)


def _missing(kind: str, obj_id: str, param: str = "id") -> _StripeError:
    return _StripeError(404, f"No such {kind}: '{obj_id}'", code="resource_missing", param=param)


def _new_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


@dataclass
class _Saved:
    fingerprint: str
    status: int
    body: bytes
    headers: dict[str, str]


Action = Callable[[], Response]


# -- the simulator ----------------------------------------------------------------------------
class StripeSimulator(SimulatorServer):
    """Stripe PaymentIntents/Refunds on 127.0.0.1; see the module docstring for the behaviour."""

    def __init__(
        self,
        secret_key: str,
        webhook_secret: str,
        webhook_url: str | None = None,
        *,
        port: int = 0,
        retry_delays: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0),
    ) -> None:
        super().__init__("stripe", port=port, error_response=self._injected_error)
        self.secret_key = secret_key
        self.webhook_secret = webhook_secret
        self.webhook_url = webhook_url
        self.webhook_copies = 1
        self.webhook_delay_s = 0.0
        self.webhook_stale_by_s = 0
        self.webhook_types: set[str] | None = None
        self.auto_pay_after_ms: int | None = None
        self.refunds_start_pending = False
        #: The account's default API version: webhook events are rendered in it, and requests
        #: without a ``Stripe-Version`` header are answered in it.
        self.api_version = API_VERSION
        self.execution_delay_ms = 0
        self.minimum_amount = 1
        self.books_offset_s = 0
        self._state = threading.RLock()
        self._clear_state()
        self.disputes = DisputeDesk(self._state, self._find_pi, lambda: self.charges, self._emit)
        self.balance = BalanceBook(
            self._state, lambda: self.charges, lambda: self.refunds, lambda: self.disputes.disputes
        )
        self._held: list[tuple[bytes, dict[str, str]]] | None = None
        self._timers: list[threading.Timer] = []
        self.notifier = Notifier(lambda r: 200 <= r.status_code < 300, retry_delays=retry_delays)
        self.ledger_provider = self.ledger
        self.reset_hooks.append(self._on_reset)
        for method in ("GET", "POST"):
            self.route(method, "/v1/", self._handle, prefix=True)
        self.route("POST", "/_sim/pay", self._sim_pay)
        self.route("POST", "/_sim/fail_payment", self._sim_fail_payment)
        self.route("POST", "/_sim/settle_refund", self._sim_settle_refund)
        self.route("POST", "/_sim/config", self._sim_config)
        self.route("POST", "/_sim/release_webhooks", self._sim_release)
        self.route("POST", "/_sim/dispute", self._sim_dispute)
        self.route("POST", "/_sim/dashboard_refund", self._sim_dashboard_refund)
        self.route("POST", "/_sim/settlement", self.balance.control)

    def _booked_at(self) -> int:
        """``created`` for a new PaymentIntent, charge or refund (see ``books_offset_s``)."""
        return int(time.time()) + int(self.books_offset_s)

    def _clear_state(self) -> None:
        with self._state:
            self.payment_intents: dict[str, dict[str, Any]] = {}
            self.charges: dict[str, dict[str, Any]] = {}
            self.refunds: dict[str, dict[str, Any]] = {}
            self.events: list[dict[str, Any]] = []
            self._idempotency: dict[str, _Saved] = {}
            self._in_flight: set[str] = set()
            #: The latest ``/v1`` requests as (method, path, its ``Stripe-Version`` header or
            #: None), so that tests can see which version a client asked for; bounded, as a
            #: demo or benchmark run sends millions.
            self.api_requests: deque[tuple[str, str, str | None]] = deque(maxlen=10_000)

    def _on_reset(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._held = None
        self._clear_state()
        self.disputes.reset()
        self.balance.reset()

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self.notifier.stop()
        super().stop()

    def ledger(self) -> dict[str, Any]:
        """Everything the simulator holds, as plain JSON-able data (deep copies)."""
        with self._state:
            return copy.deepcopy(
                {
                    "payment_intents": list(self.payment_intents.values()),
                    "charges": list(self.charges.values()),
                    "refunds": list(self.refunds.values()),
                    "disputes": list(self.disputes.disputes.values()),
                    "events": self.events,
                    "idempotency_keys": sorted(self._idempotency),
                }
            )

    # -- request pipeline ---------------------------------------------------------------------
    def _handle(self, req: Request, injected: str | None = None) -> Response:
        """auth → parse → (POST: idempotency) → validate → execute, as Stripe orders them."""
        request_id = _new_id("req_")
        with self._state:
            self.api_requests.append((req.method, req.path, req.headers.get("stripe-version")))
        try:
            self._authenticate(req)
            self._version(req)  # an invalid Stripe-Version is refused before anything runs
            params = self._params(req)
            if req.method == "POST":
                resp = self._post(req, params, injected)
            else:
                resp = self._get(req, params, injected)
        except _StripeError as exc:
            resp = exc.response
        resp.headers.setdefault("Request-Id", request_id)
        return resp

    def _injected_error(self, req: Request) -> Response:
        # The harness calls this instead of the route when an injected 5xx fires; running the same
        # pipeline makes the 500 happen "once endpoint execution began", so it is saved per key.
        return self._handle(req, injected="error")

    def _authenticate(self, req: Request) -> None:
        auth = req.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token, self.secret_key):
            shown = f"{token[:8]}****{token[-4:]}" if len(token) > 12 else "****"
            raise _StripeError(401, f"Invalid API Key provided: {shown}")

    def _version(self, req: Request) -> str:
        """The API version a request is answered in: its ``Stripe-Version`` header, else the
        account's default (:attr:`api_version`)."""
        version = req.headers.get("stripe-version") or self.api_version
        if not _VERSION_FORMAT.fullmatch(version):
            raise _StripeError(400, f"Invalid Stripe API version: {version}")
        return version

    def _params(self, req: Request) -> dict[str, Any]:
        query = urlsplit(req.raw_path).query
        pairs = parse_qsl(query, keep_blank_values=True)
        if req.method == "POST":
            pairs += parse_qsl(req.body.decode("utf-8"), keep_blank_values=True)
        return parse_form(pairs)

    def _post(self, req: Request, params: dict[str, Any], injected: str | None) -> Response:
        validate = self._post_route(req.path)
        key = req.headers.get("idempotency-key")
        if key is None:
            action = validate(params)
            return self._execute(action, injected)
        if len(key) > 255:
            raise _StripeError(400, "Idempotency-Key must be at most 255 characters")
        fingerprint = json.dumps([req.path, params], sort_keys=True)
        self._claim(key, fingerprint)
        try:
            action = validate(params)
            resp = self._execute(action, injected)
            with self._state:
                self._idempotency[key] = _Saved(fingerprint, resp.status, resp.body, resp.headers)
            return resp
        finally:  # a validation error skips the save above: the key stays free, as at Stripe
            with self._state:
                self._in_flight.discard(key)

    def _claim(self, key: str, fingerprint: str) -> None:
        """Replay a saved response, refuse a mismatch or a concurrent duplicate, else claim."""
        with self._state:
            saved = self._idempotency.get(key)
            if saved is not None:
                if saved.fingerprint != fingerprint:
                    raise _StripeError(
                        400,
                        "Keys for idempotent requests can only be used with the same parameters "
                        f"they were first used with. Try using a key other than '{key}'.",
                        type_="idempotency_error",
                        code="idempotency_key_mismatch",
                    )
                replay = Response(saved.status, saved.body, dict(saved.headers))
                replay.headers["Idempotent-Replayed"] = "true"
                raise _Replay(replay)
            if key in self._in_flight:
                raise _StripeError(
                    409,
                    "There is currently another in-progress request using this Idempotent Key "
                    f"(that probably means you submitted twice, and the other request is still "
                    f"going through): {key}. Please try again later.",
                    type_="idempotency_error",
                    code="idempotency_key_in_use",
                )
            self._in_flight.add(key)

    def _execute(self, action: Action, injected: str | None) -> Response:
        if self.execution_delay_ms:
            time.sleep(self.execution_delay_ms / 1000)
        if injected == "error":
            return _error_response(500, "An unknown error occurred", "api_error")
        if self.faults.business_error:
            return _card_error(self.faults.business_error)
        with self._state:
            return action()

    def _get(self, req: Request, params: dict[str, Any], injected: str | None) -> Response:
        if injected == "error":
            return _error_response(500, "An unknown error occurred", "api_error")
        if self.faults.business_error:
            return _card_error(self.faults.business_error)
        path = req.path
        with self._state:
            if path == "/v1/refunds":
                return self._list_refunds(params)
            if path == "/v1/balance_transactions":  # simulators/stripe_settlement.py
                return self.balance.list(params)
            if m := re.fullmatch(r"/v1/refunds/([^/]+)", path):
                _only(params, {"expand"})
                return Response.json(self._refund_or_404(m.group(1)))
            if m := re.fullmatch(r"/v1/payment_intents/([^/]+)", path):
                return self._retrieve_pi(m.group(1), params, self._version(req))
        raise _unrecognized(req)

    def _post_route(self, path: str) -> Callable[[dict[str, Any]], Action]:
        if path == "/v1/payment_intents":
            return self._validate_create_pi
        if path == "/v1/refunds":
            return self._validate_refund
        if m := re.fullmatch(r"/v1/payment_intents/([^/]+)/cancel", path):
            pi_id = m.group(1)
            return lambda params: self._validate_cancel(pi_id, params)
        raise _StripeError(404, f"Unrecognized request URL (POST: {path}).")

    # -- payment intents ----------------------------------------------------------------------
    def _validate_create_pi(self, params: dict[str, Any]) -> Action:
        _only(params, _CREATE_PI_PARAMS)
        amount = _positive_int(params, "amount", self.minimum_amount)
        currency = params.get("currency")
        if not isinstance(currency, str) or currency.lower() not in _CURRENCIES:
            raise _StripeError(
                400,
                f"Invalid currency: {currency}.",
                code="parameter_invalid_string",
                param="currency",
            )
        apm = params.get("automatic_payment_methods")
        if apm is not None and (
            not isinstance(apm, dict) or apm.get("enabled") not in ("true", "false")
        ):
            raise _StripeError(
                400,
                "Invalid boolean",
                code="parameter_invalid_boolean",
                param="automatic_payment_methods[enabled]",
            )
        capture = params.get("capture_method", "automatic")
        if capture not in ("automatic", "automatic_async", "manual"):
            raise _StripeError(400, "Invalid capture_method", param="capture_method")
        metadata = _metadata(params)
        return lambda: self._create_pi(amount, currency.lower(), params, metadata, capture)

    def _create_pi(
        self,
        amount: int,
        currency: str,
        params: dict[str, Any],
        metadata: dict[str, str],
        capture: str,
    ) -> Response:
        pi_id = _new_id("pi_")
        apm = params.get("automatic_payment_methods")
        pi: dict[str, Any] = {
            "id": pi_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_received": 0,
            "automatic_payment_methods": {"enabled": apm["enabled"] == "true"} if apm else None,
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": capture,
            "client_secret": f"{pi_id}_secret_{secrets.token_urlsafe(18)}",
            "confirmation_method": "automatic",
            "created": self._booked_at(),
            "currency": currency,
            "customer": params.get("customer"),
            "description": params.get("description"),
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": metadata,
            "payment_method": None,
            "payment_method_types": params.get("payment_method_types") or ["card"],
            "receipt_email": params.get("receipt_email"),
            "status": "requires_payment_method",
        }
        self.payment_intents[pi_id] = pi
        self._emit("payment_intent.created", pi)
        if self.auto_pay_after_ms is not None:
            self._schedule(self.auto_pay_after_ms / 1000, pi_id)
        return Response.json(copy.deepcopy(pi))

    def _retrieve_pi(self, pi_id: str, params: dict[str, Any], version: str) -> Response:
        _only(params, {"expand", "client_secret"})
        pi = copy.deepcopy(self._pi_or_404(pi_id))
        if "latest_charge" in (params.get("expand") or []) and pi["latest_charge"]:
            pi["latest_charge"] = self._charge_view(pi["latest_charge"], version)
        return Response.json(pi)

    def _validate_cancel(self, pi_id: str, params: dict[str, Any]) -> Action:
        _only(params, {"cancellation_reason", "expand"})
        reason = params.get("cancellation_reason")
        if reason is not None and reason not in _CANCELLATION_REASONS:
            raise _StripeError(400, "Invalid cancellation_reason", param="cancellation_reason")
        with self._state:
            self._pi_or_404(pi_id, param="intent")
        return lambda: self._cancel(pi_id, reason)

    def _cancel(self, pi_id: str, reason: str | None) -> Response:
        pi = self.payment_intents[pi_id]
        if pi["status"] not in _CANCELABLE:
            return _error_response(
                400,
                "You cannot cancel this PaymentIntent because it has a status of "
                f"{pi['status']}. Only a PaymentIntent with one of the following statuses may be "
                f"canceled: {', '.join(sorted(_CANCELABLE))}.",
                code="payment_intent_unexpected_state",
                extra={"payment_intent": copy.deepcopy(pi)},
            )
        pi.update(status="canceled", canceled_at=int(time.time()), cancellation_reason=reason)
        self._emit("payment_intent.canceled", pi)
        return Response.json(copy.deepcopy(pi))

    def _pi_or_404(self, pi_id: str, param: str = "id") -> dict[str, Any]:
        pi = self.payment_intents.get(pi_id)
        if pi is None:
            raise _missing("payment_intent", pi_id, param)
        return pi

    # -- refunds ------------------------------------------------------------------------------
    def _validate_refund(self, params: dict[str, Any]) -> Action:
        _only(params, {"payment_intent", "charge", "amount", "metadata", "reason", "expand"})
        amount = _positive_int(params, "amount", 1) if "amount" in params else None
        reason = params.get("reason")
        if reason is not None and reason not in _REFUND_REASONS:
            raise _StripeError(400, f"Invalid reason: {reason}", param="reason")
        metadata = _metadata(params)
        with self._state:
            charge_id = self._charge_to_refund(params)
        return lambda: self._refund(charge_id, amount, reason, metadata)

    def _charge_to_refund(self, params: dict[str, Any]) -> str | None:
        pi_id, charge_id = params.get("payment_intent"), params.get("charge")
        if pi_id is None and charge_id is None:
            raise _StripeError(
                400, "One of `charge` or `payment_intent` is required.", code="parameter_missing"
            )
        if charge_id is not None:
            if charge_id not in self.charges:
                raise _missing("charge", str(charge_id), "charge")
            return str(charge_id)
        pi = self.payment_intents.get(str(pi_id))
        if pi is None:
            raise _missing("payment_intent", str(pi_id), "payment_intent")
        latest: str | None = pi["latest_charge"]  # None while unpaid: refused inside execution
        return latest

    def _refund(
        self,
        charge_id: str | None,
        amount: int | None,
        reason: str | None,
        metadata: dict[str, str],
    ) -> Response:
        charge = self.charges.get(charge_id or "")
        if charge is None:
            return _error_response(
                400,
                "This PaymentIntent does not have a successful charge to refund.",
                code="charge_not_refundable",
            )
        remaining = charge["amount"] - charge["amount_refunded"]
        if remaining <= 0:
            msg = f"Charge {charge['id']} has already been refunded."
            return _error_response(400, msg, code="charge_already_refunded", param="amount")
        if amount is not None and amount > remaining:
            msg = f"Refund amount ({amount}) is greater than unrefunded amount ({remaining})"
            return _error_response(400, msg, code="amount_too_large", param="amount")
        refund = self._new_refund(charge, remaining if amount is None else amount, reason, metadata)
        self._announce_refund(refund)
        return Response.json(copy.deepcopy(refund))

    def _announce_refund(self, refund: dict[str, Any]) -> None:
        """A new refund's events, as Stripe sends them: ``refund.created`` (the Refund object)
        and ``charge.refunded`` (the Charge, in the account's API version: with its refunds
        embedded only before 2022-11-15)."""
        self._emit("refund.created", refund)
        self._emit("charge.refunded", self._charge_view(refund["charge"], self.api_version))

    def _new_refund(
        self, charge: dict[str, Any], amount: int, reason: str | None, metadata: dict[str, str]
    ) -> dict[str, Any]:
        refund = {
            "id": _new_id("re_"),
            "object": "refund",
            "amount": amount,
            "charge": charge["id"],
            "created": self._booked_at(),
            "currency": charge["currency"],
            "metadata": metadata,
            "payment_intent": charge["payment_intent"],
            "reason": reason,
            "status": "pending" if self.refunds_start_pending else "succeeded",
        }
        self.refunds[refund["id"]] = refund
        # Stripe counts pending refunds against the charge, so they cannot be over-refunded.
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
        return refund

    def _list_refunds(self, params: dict[str, Any]) -> Response:
        _only(params, {"payment_intent", "charge", "limit", "starting_after", "ending_before"})
        limit = int(params.get("limit", 10)) if str(params.get("limit", "10")).isdigit() else -1
        if not 1 <= limit <= 100:
            raise _StripeError(400, "limit must be between 1 and 100", param="limit")
        # Newest first, like Stripe; insertion order breaks ties within one second.
        found = [
            r
            for r in reversed(self.refunds.values())
            if params.get("payment_intent") in (None, r["payment_intent"])
            and params.get("charge") in (None, r["charge"])
        ]
        start = _index_after(found, params.get("starting_after"))
        page = found[start : start + limit]
        return Response.json(
            {
                "object": "list",
                "data": copy.deepcopy(page),
                "has_more": start + limit < len(found),
                "url": "/v1/refunds",
            }
        )

    def _refund_or_404(self, refund_id: str) -> dict[str, Any]:
        refund = self.refunds.get(refund_id)
        if refund is None:
            raise _missing("refund", refund_id)
        return copy.deepcopy(refund)

    def _charge_view(self, charge_id: str, version: str) -> dict[str, Any]:
        """A charge as API ``version`` shows it: with its refunds embedded (newest first) before
        2022-11-15, without them since."""
        charge = copy.deepcopy(self.charges[charge_id])
        if version[:10] >= REFUNDS_UNEMBEDDED_SINCE:
            return charge
        mine = [r for r in reversed(self.refunds.values()) if r["charge"] == charge_id]
        charge["refunds"] = {
            "object": "list",
            "data": copy.deepcopy(mine),
            "has_more": False,
            "total_count": len(mine),
            "url": f"/v1/charges/{charge_id}/refunds",
        }
        return charge

    # -- control ------------------------------------------------------------------------------
    def pay(self, ref: str) -> dict[str, Any]:
        """The buyer pays: PI ``ref`` (a ``pi_`` id or ``metadata.out_trade_no``) → succeeded,
        with a charge and the ``charge.succeeded`` + ``payment_intent.succeeded`` events.
        Paying a succeeded PI again is a no-op; a canceled one raises ``ValueError``."""
        with self._state:
            pi = self._find_pi(ref)
            if pi["status"] == "succeeded":
                return copy.deepcopy(pi)
            if pi["status"] not in _PAYABLE:
                raise ValueError(f"payment intent {pi['id']} is {pi['status']}")
            charge = self._new_charge(pi)
            pi.update(
                status="succeeded",
                amount_received=pi["amount"],
                latest_charge=charge["id"],
                last_payment_error=None,
                payment_method=charge["payment_method"],
            )
            self._emit("charge.succeeded", charge)
            self._emit("payment_intent.succeeded", pi)
            return copy.deepcopy(pi)

    def fail_payment(self, ref: str, code: str = "card_declined") -> dict[str, Any]:
        """A payment attempt fails: the PI stays payable and ``payment_intent.payment_failed``
        is sent with ``last_payment_error``."""
        with self._state:
            pi = self._find_pi(ref)
            if pi["status"] not in _PAYABLE:
                raise ValueError(f"payment intent {pi['id']} is {pi['status']}")
            pi.update(
                status="requires_payment_method",
                last_payment_error={"type": "card_error", "code": code, "message": "declined"},
            )
            self._emit("payment_intent.payment_failed", pi)
            return copy.deepcopy(pi)

    def settle_refund(self, refund_id: str, status: str = "succeeded") -> dict[str, Any]:
        """Move a ``requires_action`` refund to ``pending``, or a pending (or requires_action)
        one to ``succeeded``, ``failed`` or ``canceled`` (then the amount is given back to the
        charge), and send ``refund.updated`` (plus ``refund.failed`` when it failed) and the
        older ``charge.refund.updated``. A refund in a final status is left as it is."""
        if status not in ("pending", "succeeded", "failed", "canceled"):
            raise ValueError(f"bad refund status {status!r}")
        with self._state:
            refund = self.refunds[refund_id]
            if refund["status"] not in ("requires_action", "pending") or status == refund["status"]:
                return copy.deepcopy(refund)
            if status == "pending" and refund["status"] != "requires_action":
                return copy.deepcopy(refund)
            previous = {"status": refund["status"]}
            refund["status"] = status
            if status in ("failed", "canceled"):
                charge = self.charges[refund["charge"]]
                charge["amount_refunded"] -= refund["amount"]
                charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
            self._emit("refund.updated", refund, previous)
            if status == "failed":
                self._emit("refund.failed", refund, previous)
            self._emit("charge.refund.updated", refund, previous)
            return copy.deepcopy(refund)

    def dashboard_refund(
        self, ref: str, amount: int | None = None, status: str = "succeeded"
    ) -> dict[str, Any]:
        """Someone refunds PI ``ref`` (a ``pi_`` id or ``metadata.out_trade_no``) in the Stripe
        dashboard: a Refund with no metadata of the merchant's (no ``refund_no``), ``amount``
        defaulting to what is left, created ``succeeded``, ``pending`` or ``requires_action``
        (then :meth:`settle_refund` moves it on), announced like any refund
        (:meth:`_announce_refund`). Raises ValueError when nothing is left to refund."""
        if status not in ("succeeded", "pending", "requires_action"):
            raise ValueError(f"bad refund status {status!r}")
        if amount is not None and (isinstance(amount, bool) or not isinstance(amount, int)):
            raise ValueError(f"amount must be an integer in minor units, not {amount!r}")
        with self._state:
            pi = self._find_pi(ref)
            charge = self.charges.get(pi["latest_charge"] or "")
            if charge is None:
                raise ValueError(f"payment intent {pi['id']} has no charge to refund")
            remaining = charge["amount"] - charge["amount_refunded"]
            amount = remaining if amount is None else amount
            if not 0 < amount <= remaining:
                raise ValueError(f"amount {amount} is not between 1 and the unrefunded {remaining}")
            refund = self._new_refund(charge, amount, "requested_by_customer", {})
            refund["status"] = status
            self._announce_refund(refund)
            return copy.deepcopy(refund)

    def _find_pi(self, ref: str) -> dict[str, Any]:
        if ref in self.payment_intents:
            return self.payment_intents[ref]
        matches = [
            p for p in self.payment_intents.values() if p["metadata"].get("out_trade_no") == ref
        ]
        if not matches:
            raise KeyError(f"no payment intent {ref!r}")
        return matches[-1]  # the newest: dicts keep insertion order

    def _new_charge(self, pi: dict[str, Any]) -> dict[str, Any]:
        charge = {
            "id": _new_id("ch_"),
            "object": "charge",
            "amount": pi["amount"],
            "amount_captured": pi["amount"],
            "amount_refunded": 0,
            "captured": True,
            "created": self._booked_at(),
            "currency": pi["currency"],
            "metadata": {},  # Stripe does not copy PaymentIntent metadata onto the charge
            "paid": True,
            "payment_intent": pi["id"],
            "payment_method": _new_id("pm_"),
            "refunded": False,
            "status": "succeeded",
        }
        self.charges[charge["id"]] = charge
        return charge

    def _schedule(self, delay: float, pi_id: str) -> None:
        timer = threading.Timer(delay, self._auto_pay, args=(pi_id,))
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _auto_pay(self, pi_id: str) -> None:
        with contextlib.suppress(KeyError, ValueError):  # canceled or reset in the meantime
            self.pay(pi_id)

    # -- webhooks -----------------------------------------------------------------------------
    def sign(self, body: bytes, timestamp: int | None = None) -> str:
        """The ``Stripe-Signature`` header value for ``body`` at ``timestamp`` (default now)."""
        t = int(time.time()) if timestamp is None else timestamp
        digest = hmac.new(self.webhook_secret.encode(), f"{t}.".encode() + body, hashlib.sha256)
        return f"t={t},v1={digest.hexdigest()}"

    def _emit(
        self, event_type: str, obj: dict[str, Any], previous: dict[str, Any] | None = None
    ) -> None:
        data: dict[str, Any] = {"object": copy.deepcopy(obj)}
        if previous is not None:
            data["previous_attributes"] = copy.deepcopy(previous)
        event = {
            "id": _new_id("evt_"),
            "object": "event",
            "api_version": self.api_version,
            "created": int(time.time()),
            "data": data,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": event_type,
        }
        self.events.append(event)
        if self.webhook_types is not None and event_type not in self.webhook_types:
            return
        body = json.dumps(event, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            "Stripe-Signature": self.sign(body, int(time.time()) - self.webhook_stale_by_s),
        }
        if self._held is not None:
            self._held.append((body, headers))
        else:
            self._deliver(body, headers)

    def _deliver(self, body: bytes, headers: dict[str, str]) -> None:
        if self.webhook_url is None:
            return
        self.notifier.send(
            self.webhook_url, body, headers, delay=self.webhook_delay_s, copies=self.webhook_copies
        )

    def hold_webhooks(self) -> None:
        """Queue events instead of sending them, until :meth:`release_webhooks`."""
        with self._state:
            self._held = []

    def release_webhooks(self, order: str = "fifo") -> int:
        """Send held events in ``order`` (``fifo``, ``reverse`` or ``shuffle``); stop holding."""
        with self._state:
            held, self._held = self._held or [], None
        if order == "reverse":
            held.reverse()
        elif order == "shuffle":
            random.shuffle(held)
        for i, (body, headers) in enumerate(held):
            self._deliver(body, headers)
            if i + 1 < len(held):
                time.sleep(0.05)  # the notifier delivers due items concurrently; keep the order
        return len(held)

    # -- HTTP control plane -------------------------------------------------------------------
    def _sim_pay(self, req: Request) -> Response:
        return self._control(req, lambda ref, _b: self.pay(ref))

    def _sim_fail_payment(self, req: Request) -> Response:
        return self._control(
            req, lambda ref, b: self.fail_payment(ref, b.get("code", "card_declined"))
        )

    def _sim_settle_refund(self, req: Request) -> Response:
        return self._control(
            req, lambda ref, b: self.settle_refund(ref, b.get("status", "succeeded"))
        )

    def _control(
        self, req: Request, op: Callable[[str, dict[str, Any]], dict[str, Any]]
    ) -> Response:
        body = req.json() or {}
        ref = body.get("payment_intent") or body.get("out_trade_no") or body.get("id")
        if not isinstance(ref, str):
            return Response.json({"error": "give payment_intent, out_trade_no or id"}, 400)
        try:
            return Response.json(op(ref, body))
        except KeyError as exc:
            return Response.json({"error": str(exc)}, 404)
        except ValueError as exc:
            return Response.json({"error": str(exc)}, 409)

    _CONFIG = (
        "webhook_url",
        "webhook_copies",
        "webhook_delay_s",
        "webhook_stale_by_s",
        "webhook_types",
        "auto_pay_after_ms",
        "refunds_start_pending",
        "api_version",
        "execution_delay_ms",
        "minimum_amount",
        "books_offset_s",
    )

    def _sim_config(self, req: Request) -> Response:
        changes = req.json() or {}
        if changes.pop("hold_webhooks", False):
            self.hold_webhooks()
        unknown = set(changes) - set(self._CONFIG)
        if unknown:
            return Response.json({"error": f"unknown settings: {sorted(unknown)}"}, 400)
        for key, value in changes.items():
            setattr(
                self, key, set(value) if key == "webhook_types" and value is not None else value
            )
        return Response.json({k: _jsonable(getattr(self, k)) for k in self._CONFIG})

    def _sim_dashboard_refund(self, req: Request) -> Response:
        return self._control(
            req,
            lambda ref, b: self.dashboard_refund(
                ref, b.get("amount"), b.get("status", "succeeded")
            ),
        )

    def _sim_dispute(self, req: Request) -> Response:
        return self._control(req, self.disputes.act)

    def _sim_release(self, req: Request) -> Response:
        order = (req.json() or {}).get("order", "fifo")
        return Response.json({"released": self.release_webhooks(order)})


class _Replay(_StripeError):
    """Carries a saved response out of :meth:`StripeSimulator._claim`."""

    def __init__(self, response: Response) -> None:
        Exception.__init__(self, "replay")
        self.response = response


# -- small helpers ----------------------------------------------------------------------------
def _only(params: dict[str, Any], allowed: frozenset[str] | set[str]) -> None:
    for name in params:
        if name not in allowed:
            raise _StripeError(
                400, f"Received unknown parameter: {name}", code="parameter_unknown", param=name
            )


def _positive_int(params: dict[str, Any], name: str, minimum: int) -> int:
    raw = params.get(name)
    if raw is None:
        raise _StripeError(
            400, f"Missing required param: {name}.", code="parameter_missing", param=name
        )
    if not isinstance(raw, str) or not raw.isdigit():
        raise _StripeError(
            400, "Invalid integer: " + str(raw), code="parameter_invalid_integer", param=name
        )
    if int(raw) < minimum:
        raise _StripeError(
            400, f"Amount must be at least {minimum}", code="amount_too_small", param=name
        )
    return int(raw)


def _metadata(params: dict[str, Any]) -> dict[str, str]:
    metadata = params.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _StripeError(400, "Invalid metadata", param="metadata")
    if len(metadata) > 50 or any(len(k) > 40 or len(v) > 500 for k, v in metadata.items()):
        raise _StripeError(
            400, "Metadata exceeds Stripe's limits (50 keys, 40/500 chars)", param="metadata"
        )
    return dict(metadata)


def _index_after(items: list[dict[str, Any]], cursor: Any) -> int:
    if cursor is None:
        return 0
    for i, item in enumerate(items):
        if item["id"] == cursor:
            return i + 1
    raise _missing("refund", str(cursor), "starting_after")


def _card_error(code: str) -> Response:
    return _error_response(
        402,
        "Your card was declined.",
        "card_error",
        code,
        extra={"decline_code": "generic_decline"},
    )


def _unrecognized(req: Request) -> _StripeError:
    return _StripeError(404, f"Unrecognized request URL ({req.method}: {req.path}).")


def _jsonable(value: Any) -> Any:
    return sorted(value) if isinstance(value, set) else value


# -- standalone ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Local Stripe simulator")
    parser.add_argument("--port", type=int, default=int(os.environ.get("STRIPE_SIM_PORT", "12111")))
    parser.add_argument("--secret-key", default=os.environ.get("STRIPE_SECRET_KEY"))
    parser.add_argument("--webhook-secret", default=os.environ.get("STRIPE_WEBHOOK_SECRET"))
    parser.add_argument("--webhook-url", default=os.environ.get("STRIPE_WEBHOOK_URL"))
    parser.add_argument("--auto-pay-after-ms", type=int, default=None)
    args = parser.parse_args(argv)
    if not args.secret_key or not args.webhook_secret:
        parser.error("set --secret-key/--webhook-secret or STRIPE_SECRET_KEY/STRIPE_WEBHOOK_SECRET")
    sim = StripeSimulator(args.secret_key, args.webhook_secret, args.webhook_url, port=args.port)
    sim.auto_pay_after_ms = args.auto_pay_after_ms
    serve_forever(sim)


if __name__ == "__main__":
    main()
