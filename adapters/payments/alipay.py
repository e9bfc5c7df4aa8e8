"""Alipay Open Platform (RSA2) payment adapter: QR-code payments via ``alipay.trade.precreate``.

Wire style is the official SDK's: common parameters and ``sign`` in the URL query string,
``biz_content`` as the form body, ``POST``. Every request is signed with the app private key
(SHA256withRSA); every response is verified with the Alipay public key over the *exact raw
substring* of its ``…_response`` value; every notification is verified before it is read.

Decisions (see also the method docstrings):

* ``create`` sends ``time_expire`` (absolute, Beijing time) rather than the relative
  ``timeout_express``: a replay of the same request must carry identical parameters, otherwise
  Alipay answers ``ACQ.CONTEXT_INCONSISTENT``. A replay after payment (``ACQ.TRADE_HAS_SUCCESS``)
  or close (``ACQ.TRADE_HAS_CLOSE``) raises :class:`ProviderRejected` with that code; the caller
  should then ``query``.
* ``TRADE_CLOSED`` maps to ``REFUNDED`` when the trade had been paid (a ``send_pay_date`` /
  ``gmt_payment`` is present, or a non-zero ``buyer_pay_amount``), to ``CLOSED`` otherwise.
* Refund notifications (``trade_status_sync`` carrying ``out_biz_no``) are reported as
  ``NotificationKind.PAYMENT`` status updates (``PAID`` after a partial refund, ``REFUNDED`` after
  a full one) and additionally carry ``refund`` with ``refund_no = out_biz_no``; its ``amount`` is
  ``None`` because Alipay's ``refund_fee`` is the cumulative total, not this refund.
* An error reply is only trusted as an *outcome* (``ACQ.TRADE_NOT_EXIST`` → ``NOT_FOUND`` or
  ``closed=True``) when it is signed; an unsigned error is only ever raised as an error.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, cast
from urllib.parse import parse_qsl

import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from adapters.payments.base import (
    ClosePayment,
    CloseResult,
    CreatePayment,
    Notification,
    NotificationKind,
    NotificationReply,
    PaymentCreated,
    PaymentRef,
    PaymentState,
    ProviderRejected,
    ProviderUnavailable,
    RefundRequest,
    RefundResult,
    RefundState,
    SignatureInvalid,
    TradeStatus,
)
from domain.errors import ValidationError
from domain.money import Money, MoneyError

__all__ = ["AlipayConfig", "AlipayProvider"]

#: Alipay timestamps are Beijing time; China has had no DST since 1991, so a fixed offset is exact.
BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")
_TS_FORMAT = "%Y-%m-%d %H:%M:%S"
_CURRENCY = "CNY"  # alipay.trade.precreate settles in CNY only
_NAME = "alipay"

_TRADE_STATES: dict[str, PaymentState] = {
    "WAIT_BUYER_PAY": PaymentState.PENDING,
    "TRADE_SUCCESS": PaymentState.PAID,
    "TRADE_FINISHED": PaymentState.PAID,
    "TRADE_CLOSED": PaymentState.CLOSED,  # or REFUNDED, see _trade_state
}
_NOT_EXIST = "ACQ.TRADE_NOT_EXIST"
_UNAVAILABLE_SUB_CODES = frozenset({"ACQ.SYSTEM_ERROR"})


@dataclass(frozen=True)
class AlipayConfig:
    """Credentials and endpoint. Keys are PEM: the app private key (PKCS#8 or PKCS#1) signs our
    requests; the Alipay public key verifies responses and notifications."""

    gateway_url: str
    app_id: str
    app_private_key_pem: bytes
    alipay_public_key_pem: bytes
    seller_id: str | None = None
    connect_timeout: float = 3.05
    read_timeout: float = 10


# -- signing -------------------------------------------------------------------------------------
def sign_content(params: Mapping[str, str], exclude: frozenset[str]) -> str:
    """The string Alipay signs: ``k=v`` pairs sorted by key, joined with ``&``, raw values.

    Keys in ``exclude`` are left out. Empty values are kept: requests never contain any (we drop
    them before signing), and notification verification must cover every field received.
    """
    return "&".join(f"{k}={params[k]}" for k in sorted(params) if k not in exclude)


def _rsa2_sign(key: rsa.RSAPrivateKey, content: str) -> str:
    signature = key.sign(content.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode("ascii")


def _rsa2_verify(key: rsa.RSAPublicKey, content: str, sign: str) -> bool:
    try:
        signature = base64.b64decode(sign, validate=True)
        key.verify(signature, content.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def _load_keys(config: AlipayConfig) -> tuple[rsa.RSAPrivateKey, rsa.RSAPublicKey]:
    """Load both keys once, so a bad key fails at start-up rather than on the first payment."""
    private = serialization.load_pem_private_key(config.app_private_key_pem, password=None)
    public = serialization.load_pem_public_key(config.alipay_public_key_pem)
    if not isinstance(private, rsa.RSAPrivateKey) or not isinstance(public, rsa.RSAPublicKey):
        raise ValueError("Alipay RSA2 needs RSA keys")
    return private, public


# -- raw response scanning -----------------------------------------------------------------------
_DECODER = json.JSONDecoder()
_WS = " \t\r\n"


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def top_level_spans(text: str) -> dict[str, tuple[int, int]]:
    """Map each top-level key of the JSON object ``text`` to the (start, end) of its raw value.

    Values are delimited by the JSON decoder itself, so the span is exactly what Alipay signed,
    whitespace and escapes included. A duplicated top-level key is refused: two candidate bodies
    would let an attacker choose which one we verify and which one we read.
    """
    spans: dict[str, tuple[int, int]] = {}
    i = _skip_ws(text, 0)
    if text[i : i + 1] != "{":
        raise ValueError("not a JSON object")
    i = _skip_ws(text, i + 1)
    if text[i : i + 1] == "}":
        return spans
    while True:
        key, i = _DECODER.raw_decode(text, i)
        i = _skip_ws(text, i)
        if not isinstance(key, str) or text[i : i + 1] != ":":
            raise ValueError("malformed object member")
        start = _skip_ws(text, i + 1)
        _value, end = _DECODER.raw_decode(text, start)
        if key in spans:
            raise ValueError(f"duplicate key {key!r}")
        spans[key] = (start, end)
        i = _skip_ws(text, end)
        if text[i : i + 1] == "}":
            return spans
        if text[i : i + 1] != ",":
            raise ValueError("malformed object")
        i = _skip_ws(text, i + 1)


# -- value conversion ----------------------------------------------------------------------------
def _money(text: str | None) -> Money | None:
    """Parse an Alipay yuan string ("12.34"); absent or empty → None."""
    if not text:
        return None
    try:
        return Money.from_major_str(text, _CURRENCY)
    except MoneyError as exc:
        raise ProviderRejected(_NAME, f"bad amount {text!r}", code="INVALID_RESPONSE") from exc


def _wire_amount(amount: Money) -> str:
    if amount.currency != _CURRENCY:
        raise ValidationError("amount", f"Alipay only takes {_CURRENCY}, got {amount.currency}")
    return amount.to_major_str()


def _beijing(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValidationError("expires_at", "must be timezone-aware")
    return moment.astimezone(BEIJING).strftime(_TS_FORMAT)


def _parse_time(text: str | None) -> datetime | None:
    """Alipay's ``yyyy-MM-dd HH:mm:ss`` (Beijing time) as an aware datetime; junk → None."""
    if not text:
        return None
    try:
        return datetime.strptime(text, _TS_FORMAT).replace(tzinfo=BEIJING)
    except ValueError:
        return None


def _was_paid(fields: Mapping[str, Any]) -> bool:
    """Whether a trade took money at some point (so TRADE_CLOSED means refunded, not unpaid)."""
    if fields.get("send_pay_date") or fields.get("gmt_payment"):
        return True
    try:
        return Decimal(str(fields.get("buyer_pay_amount") or "0")) > 0
    except InvalidOperation:
        return False


def _trade_state(raw_status: str, fields: Mapping[str, Any]) -> PaymentState | None:
    state = _TRADE_STATES.get(raw_status)
    if state is PaymentState.CLOSED and _was_paid(fields):
        return PaymentState.REFUNDED
    return state


def _status(fields: Mapping[str, Any]) -> TradeStatus:
    """A TradeStatus from query-response or notification fields (same names in both)."""
    raw = str(fields.get("trade_status") or "")
    state = _trade_state(raw, fields)
    if state is None:
        raise ProviderRejected(_NAME, f"unknown trade_status {raw!r}", code="INVALID_RESPONSE")
    paid_at = _parse_time(fields.get("send_pay_date")) or _parse_time(fields.get("gmt_payment"))
    return TradeStatus(
        state=state,
        raw_status=raw,
        provider_ref=fields.get("trade_no") or None,
        amount=_money(fields.get("total_amount")),
        paid_at=paid_at,
    )


def _trade_ref(ref: PaymentRef) -> dict[str, str]:
    """Biz params that identify a trade: always our key, plus Alipay's trade_no once known."""
    biz = {"out_trade_no": ref.out_trade_no}
    if ref.provider_ref:
        biz["trade_no"] = ref.provider_ref
    return biz


# -- the provider --------------------------------------------------------------------------------
class AlipayProvider:
    """:class:`adapters.payments.base.PaymentProvider` for Alipay (RSA2, QR-code precreate)."""

    name = _NAME

    def __init__(self, config: AlipayConfig, session: requests.Session | None = None) -> None:
        self._config = config
        self._session = session or requests.Session()
        self._private_key, self._alipay_key = _load_keys(config)

    # -- PaymentProvider ---------------------------------------------------------------------
    def create(self, request: CreatePayment) -> PaymentCreated:
        """Precreate a QR-code trade. Replaying the same request returns the same ``qr_code``.

        ``provider_ref`` is None: precreate returns no ``trade_no`` (it exists once scanned).
        """
        biz = {
            "out_trade_no": request.out_trade_no,
            "total_amount": _wire_amount(request.amount),
            "subject": request.description,
            "time_expire": _beijing(request.expires_at),
        }
        if self._config.seller_id:
            biz["seller_id"] = self._config.seller_id
        body = self._call("alipay.trade.precreate", biz, notify_url=request.notify_url)
        qr_code = body.get("qr_code")
        if not qr_code:
            raise ProviderRejected(_NAME, "precreate returned no qr_code", code="INVALID_RESPONSE")
        return PaymentCreated(provider_ref=None, instructions={"qr_code": str(qr_code)})

    def query(self, ref: PaymentRef) -> TradeStatus:
        """The trade's state; ``NOT_FOUND`` while Alipay does not know it (e.g. not scanned)."""
        body = self._call("alipay.trade.query", _trade_ref(ref), outcomes={_NOT_EXIST})
        if body.get("sub_code") == _NOT_EXIST:
            return TradeStatus(PaymentState.NOT_FOUND, raw_status=_NOT_EXIST)
        return _status(body)

    def close(self, request: ClosePayment) -> CloseResult:
        """Close an unpaid trade.

        ``ACQ.TRADE_NOT_EXIST`` means the QR code was never scanned: reported as closed. Any other
        business refusal (closing a paid trade answers ``ACQ.TRADE_STATUS_ERROR``, an already
        closed one may answer ``ACQ.TRADE_HAS_CLOSE``) is settled by querying: paid or refunded →
        ``closed=False``; closed → ``closed=True``; still pending → the refusal is re-raised.
        """
        try:
            body = self._call("alipay.trade.close", _trade_ref(request.ref), outcomes={_NOT_EXIST})
        except ProviderRejected as refusal:
            return self._settle_failed_close(request.ref, refusal)
        if body.get("sub_code") == _NOT_EXIST:
            return CloseResult(True, TradeStatus(PaymentState.CLOSED, raw_status=_NOT_EXIST))
        status = TradeStatus(
            PaymentState.CLOSED,
            raw_status="TRADE_CLOSED",
            provider_ref=body.get("trade_no") or request.ref.provider_ref,
        )
        return CloseResult(True, status)

    def refund(self, request: RefundRequest) -> RefundResult:
        """Refund ``amount``; ``refund_no`` is sent as ``out_request_no`` so a replay is a no-op.

        ``fund_change`` Y (money moved now) and N (this ``out_request_no`` was already refunded)
        both mean the refund exists, so both report SUCCEEDED; ``raw_status`` keeps which one.
        """
        biz = {
            **_trade_ref(request.ref),
            "refund_amount": _wire_amount(request.amount),
            "out_request_no": request.refund_no,
            "refund_reason": request.reason,
        }
        body = self._call("alipay.trade.refund", biz)
        return RefundResult(
            refund_no=request.refund_no,
            state=RefundState.SUCCEEDED,
            raw_status=f"fund_change={body.get('fund_change', '')}",
            amount=request.amount,
            # No refund id at Alipay: its trade_no is the trade's, so the refund is named
            # by our refund_no (out_request_no) alone.
            provider_refund_ref=None,
        )

    def query_refund(self, ref: PaymentRef, refund_no: str) -> RefundResult:
        """One refund's state via ``alipay.trade.fastpay.refund.query``.

        Alipay answers success with no refund fields when it has no such refund: that is reported
        as FAILED with ``raw_status="NOT_FOUND"`` — re-sending the refund with the same
        ``refund_no`` is safe either way.
        """
        biz = {**_trade_ref(ref), "out_request_no": refund_no}
        body = self._call("alipay.trade.fastpay.refund.query", biz)
        amount = _money(body.get("refund_amount"))
        raw = str(body.get("refund_status") or "")
        if amount is None and not raw:
            return RefundResult(refund_no, RefundState.FAILED, raw_status="NOT_FOUND")
        # Older responses omit refund_status; refund_amount alone then means the refund succeeded.
        state = RefundState.SUCCEEDED if raw in ("", "REFUND_SUCCESS") else RefundState.PENDING
        return RefundResult(
            refund_no=refund_no,
            state=state,
            raw_status=raw or "REFUND_SUCCESS",
            amount=amount,
            # No refund id at Alipay: its trade_no is the trade's, so the refund is named
            # by our refund_no (out_request_no) alone.
            provider_refund_ref=None,
        )

    def parse_notification(self, headers: Mapping[str, str], body: bytes) -> Notification:
        """Verify, then parse, a ``trade_status_sync`` notification (form-urlencoded body).

        Verification: drop ``sign`` and ``sign_type``, sort the rest, join raw values, RSA2-verify
        with the Alipay public key; then ``app_id`` (and ``seller_id`` when configured) must be
        ours. Any failure raises :class:`SignatureInvalid` before a field is interpreted.
        """
        params = self._verified_notification(body)
        notify_id = params.get("notify_id")
        if not notify_id:
            raise ProviderRejected(_NAME, "notification without notify_id", code="INVALID_NOTIFY")
        raw_type = params.get("notify_type", "")
        state = _trade_state(params.get("trade_status", ""), params)
        if state is None:
            return Notification(
                NotificationKind.OTHER, notify_id, params.get("out_trade_no"), raw_type=raw_type
            )
        return Notification(
            kind=NotificationKind.PAYMENT,
            event_id=notify_id,
            out_trade_no=params.get("out_trade_no"),
            status=_status(params),
            refund=self._refund_in_notification(params),
            raw_type=raw_type,
        )

    def notification_reply(self, ok: bool) -> NotificationReply:
        """Alipay stops retrying only on the exact body ``success``; anything else is retried."""
        if ok:
            return NotificationReply(200, b"success", "text/plain; charset=utf-8")
        return NotificationReply(400, b"fail", "text/plain; charset=utf-8")

    # -- notifications -----------------------------------------------------------------------
    def _verified_notification(self, body: bytes) -> dict[str, str]:
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError) as exc:
            raise SignatureInvalid(_NAME, "notification body is not a form") from exc
        params = dict(pairs)
        if len(params) != len(pairs):
            # A repeated field could be verified in one copy and read in the other.
            raise SignatureInvalid(_NAME, "notification repeats a field")
        sign = params.get("sign", "")
        if params.get("sign_type", "RSA2") != "RSA2" or not sign:
            raise SignatureInvalid(_NAME, "notification is not RSA2-signed")
        content = sign_content(params, frozenset({"sign", "sign_type"}))
        if not _rsa2_verify(self._alipay_key, content, sign):
            raise SignatureInvalid(_NAME, "notification signature does not verify")
        if params.get("app_id") != self._config.app_id:
            raise SignatureInvalid(_NAME, f"notification for app_id {params.get('app_id')!r}")
        seller = self._config.seller_id
        if seller and params.get("seller_id") not in (None, seller):
            raise SignatureInvalid(_NAME, f"notification for seller {params.get('seller_id')!r}")
        return params

    @staticmethod
    def _refund_in_notification(params: Mapping[str, str]) -> RefundResult | None:
        refund_no = params.get("out_biz_no")
        if not refund_no or not params.get("refund_fee"):
            return None
        return RefundResult(
            refund_no=refund_no,
            state=RefundState.SUCCEEDED,
            raw_status=f"refund_fee={params['refund_fee']}",  # cumulative, hence amount=None
            provider_refund_ref=None,  # the trade's trade_no, not the refund's (see refund)
        )

    # -- close helper ------------------------------------------------------------------------
    def _settle_failed_close(self, ref: PaymentRef, refusal: ProviderRejected) -> CloseResult:
        status = self.query(ref)
        if status.state in (PaymentState.PAID, PaymentState.REFUNDED):
            return CloseResult(False, status)
        if status.state is PaymentState.CLOSED:
            return CloseResult(True, status)
        raise refusal

    # -- transport ---------------------------------------------------------------------------
    def _call(
        self,
        method: str,
        biz: Mapping[str, str],
        *,
        notify_url: str | None = None,
        outcomes: frozenset[str] | set[str] = frozenset(),
    ) -> dict[str, Any]:
        """Send one signed gateway call; return the verified ``…_response`` object.

        Returns only code-10000 bodies, or business errors whose ``sub_code`` is in ``outcomes``
        (the caller treats those as results, so they must be signed). Everything else raises,
        classified by :meth:`_classify`.
        """
        query, form = self._signed_params(method, biz, notify_url)
        try:
            resp = self._session.post(
                self._config.gateway_url,
                params=query,
                data=form,
                headers={"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"},
                timeout=(self._config.connect_timeout, self._config.read_timeout),
            )
        except requests.RequestException as exc:
            raise ProviderUnavailable(_NAME, f"{method}: {type(exc).__name__}") from exc
        body, signed = self._read_response(method, resp)
        if body.get("code") == "10000":
            return body
        if signed and body.get("sub_code") in outcomes:
            return body
        raise self._classify(method, body)

    def _signed_params(
        self, method: str, biz: Mapping[str, str], notify_url: str | None
    ) -> tuple[dict[str, str], dict[str, str]]:
        """(query, form): common params plus ``sign`` for the URL, ``biz_content`` for the body."""
        params = {
            "app_id": self._config.app_id,
            "method": method,
            "format": "JSON",
            "charset": "utf-8",
            "sign_type": "RSA2",
            "timestamp": datetime.now(BEIJING).strftime(_TS_FORMAT),
            "version": "1.0",
            "biz_content": json.dumps(biz, ensure_ascii=False, separators=(",", ":")),
        }
        if notify_url:
            params["notify_url"] = notify_url
        # Requests sign everything but ``sign`` itself — sign_type included (unlike notifies).
        params["sign"] = _rsa2_sign(self._private_key, sign_content(params, frozenset({"sign"})))
        form = {"biz_content": params.pop("biz_content")}
        return params, form

    def _read_response(self, method: str, resp: requests.Response) -> tuple[dict[str, Any], bool]:
        """The ``…_response`` (or ``error_response``) object and whether it carried a signature.

        A present signature must verify; a success without one is refused by the caller's check
        below, an unsigned error can only ever become an exception.
        """
        if resp.status_code >= 500 or resp.status_code == 429:
            raise ProviderUnavailable(_NAME, f"{method}: HTTP {resp.status_code}")
        if resp.status_code != 200:
            raise ProviderRejected(
                _NAME, f"{method}: HTTP {resp.status_code}", code=f"HTTP_{resp.status_code}"
            )
        try:
            text = resp.content.decode("utf-8")
            spans = top_level_spans(text)
            document = json.loads(text)
        except (UnicodeDecodeError, ValueError) as exc:
            # A garbled body (proxy page, truncation) proves nothing happened or didn't: retry.
            raise ProviderUnavailable(_NAME, f"{method}: unreadable response") from exc
        key = method.replace(".", "_") + "_response"
        if key not in spans:
            key = "error_response"
        if key not in spans or not isinstance(document.get(key), dict):
            raise ProviderUnavailable(_NAME, f"{method}: response without {key}")
        body = cast(dict[str, Any], document[key])
        sign = document.get("sign")
        if sign is None:
            if body.get("code") == "10000":
                raise SignatureInvalid(_NAME, f"{method}: success response is not signed")
            return body, False
        start, end = spans[key]
        if not isinstance(sign, str) or not _rsa2_verify(self._alipay_key, text[start:end], sign):
            raise SignatureInvalid(_NAME, f"{method}: response signature does not verify")
        return body, True

    @staticmethod
    def _classify(method: str, body: Mapping[str, Any]) -> ProviderUnavailable | ProviderRejected:
        """The one place Alipay errors are classified: retryable or a business refusal."""
        code = str(body.get("code") or "")
        sub_code = str(body.get("sub_code") or "") or code or "UNKNOWN"
        message = f"{method}: {body.get('sub_msg') or body.get('msg') or 'error'}"
        if code == "20000" or sub_code in _UNAVAILABLE_SUB_CODES:
            return ProviderUnavailable(_NAME, message, code=sub_code)
        return ProviderRejected(_NAME, message, code=sub_code)
