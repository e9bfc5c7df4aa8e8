"""WeChat Pay API v3 adapter: Native (QR code) payments for a direct merchant.

Wire protocol: ``provider-protocols.md`` §2. Every request carries a
``WECHATPAY2-SHA256-RSA2048`` Authorization header signed with the merchant API key over
``METHOD\\nURL\\nTIMESTAMP\\nNONCE\\nBODY\\n``; the body sent is exactly the bytes signed.
Every response and notification is verified against the WeChat Pay key chosen by
``Wechatpay-Serial`` before anything is read from it, and every request names, in its own
``Wechatpay-Serial`` header, the WeChat Pay key we trust now.

Two ways to know WeChat Pay's keys (``WeChatPayConfig.key_mode``):

* ``public_key`` (the default; merchants created since about September 2024): the
  "WeChat Pay public key" ``PUB_KEY_ID_…`` and its PEM are configured; nothing is downloaded.
* ``platform_certificate``: platform certificates are downloaded from ``GET /v3/certificates``,
  decrypted with the APIv3 key and kept while valid, by
  :class:`~adapters.payments.wechatpay_certificates.CertificateStore` (its docstring has the
  rules: bootstrap trust, rotation, at most one download per short interval for an unknown
  serial, periodic refresh). A serial still unknown after that download → SignatureInvalid.

Decisions worth knowing (each also commented where it is made):

* **Errors are classified in one place** (:meth:`WeChatPayProvider._reply`): network errors,
  timeouts, HTTP 429 and 5xx → :class:`ProviderUnavailable` (retry with the same key); other
  4xx → :class:`ProviderRejected` with WeChat's ``code`` (``SIGN_ERROR`` included); a response
  that does not verify → :class:`SignatureInvalid`. 429/5xx are classified *before* signature
  verification: gateways answer those unsigned, and a forged one can only cause a retry.
  A verified but malformed body (missing fields, not JSON) → :class:`ProviderUnavailable`.
  The certificate download follows the same rules; a certificate that does not decrypt with
  the APIv3 key, or is listed under another serial, → :class:`SignatureInvalid`. When no
  certificate could be obtained at all, a request is not sent: :class:`ProviderUnavailable`.
* **close** calls close first and queries only when WeChat answers ``ORDERPAID``: the close
  answer is authoritative and the common case costs one round trip. ``ORDER_CLOSED`` and
  ``ORDER_NOT_EXIST`` count as closed (nothing can be paid on them).
* **A verified notification whose decrypted ``mchid`` (or, for a payment, ``appid``) is not
  ours** raises
  :class:`SignatureInvalid`: it is a misrouted or replayed message, a security event, and the
  webhook must answer it with an error rather than act on it.
* ``trade_state`` ``REFUND`` maps to ``REFUNDED`` although WeChat sets it on the first,
  possibly partial, refund; refund amounts are tracked per refund.
* ``TradeStatus.amount`` is the order total (``amount.total``), not ``payer_total``, which
  is lower when a coupon paid part of it.
* ``base_url`` must be scheme and host only: the signed URL is the path WeChat sees.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import requests
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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
from adapters.payments.wechatpay_certificates import (
    CertificateStore,
    PlatformCertificate,
    certificate_from_pem,
    decrypt_certificates,
)
from domain.money import Money, MoneyError

__all__ = ["WeChatPayConfig", "WeChatPayProvider"]

_SCHEMA = "WECHATPAY2-SHA256-RSA2048"
_AEAD = "AEAD_AES_256_GCM"
_USER_AGENT = "orderflow-wechatpay/1.0"
_CHINA_TZ = timezone(timedelta(hours=8))  # WeChat's own zone; any RFC 3339 offset is accepted
_DESCRIPTION_MAX = 127  # characters, per the Native order spec
_REASON_MAX = 80  # refund reason limit
_NOT_FOUND_CODES = frozenset({"ORDER_NOT_EXIST", "ORDERNOTEXIST", "RESOURCE_NOT_EXISTS"})
KEY_MODES = ("public_key", "platform_certificate")
_CERTIFICATES_PATH = "/v3/certificates"
_PUBLIC_KEY_PREFIX = "PUB_KEY_ID_"

_TRADE_STATES: Mapping[str, PaymentState] = {
    "SUCCESS": PaymentState.PAID,
    "NOTPAY": PaymentState.PENDING,
    "USERPAYING": PaymentState.PENDING,
    "CLOSED": PaymentState.CLOSED,
    "REVOKED": PaymentState.CLOSED,
    "PAYERROR": PaymentState.CLOSED,
    "REFUND": PaymentState.REFUNDED,
}

_REFUND_STATES: Mapping[str, RefundState] = {
    "SUCCESS": RefundState.SUCCEEDED,
    "PROCESSING": RefundState.PENDING,
    "CLOSED": RefundState.FAILED,
    "ABNORMAL": RefundState.FAILED,  # money did not reach the payer; needs manual handling
}


@dataclass(frozen=True, slots=True)
class WeChatPayConfig:
    """Merchant credentials and the WeChat Pay keys that sign responses and notifications.

    ``platform_public_keys`` maps a ``Wechatpay-Serial`` value (platform certificate serial or
    ``PUB_KEY_ID_…``) to a PEM public key or PEM certificate: required in ``public_key``
    ``key_mode``; in ``platform_certificate`` mode optional, trusted until the first download
    (which they then verify). ``api_v3_key`` is the 32-byte APIv3 key that encrypts
    notification resources and platform certificates. ``certificate_refresh_s`` is the
    periodic download interval, ``certificate_min_refresh_gap_s`` the shortest time between
    two downloads (an unknown serial cannot make us download more often).
    """

    base_url: str
    mchid: str
    appid: str
    merchant_serial_no: str
    merchant_private_key_pem: bytes = field(repr=False)
    api_v3_key: bytes = field(repr=False)
    platform_public_keys: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    key_mode: str = "public_key"
    certificate_refresh_s: float = 3600.0
    certificate_min_refresh_gap_s: float = 60.0
    timestamp_tolerance_s: int = 300
    connect_timeout: float = 3.05
    read_timeout: float = 10.0

    def __post_init__(self) -> None:
        if len(self.api_v3_key) != 32:
            raise ValueError("api_v3_key must be exactly 32 bytes")
        if self.key_mode not in KEY_MODES:
            raise ValueError(f"key_mode must be one of {KEY_MODES}, not {self.key_mode!r}")
        if self.key_mode == "public_key" and not self.platform_public_keys:
            raise ValueError("platform_public_keys must name at least one WeChat Pay key")
        if self.certificate_refresh_s <= 0 or self.certificate_min_refresh_gap_s < 0:
            raise ValueError("certificate_refresh_s must be > 0 and the refresh gap >= 0")


@dataclass(frozen=True, slots=True)
class _Reply:
    """A verified 2xx answer: its status and JSON object body (``{}`` for 204)."""

    status: int
    data: dict[str, Any]


class WeChatPayProvider:
    """:class:`~adapters.payments.base.PaymentProvider` for WeChat Pay API v3 (Native).

    Thread-safe as far as ``session`` is. ``clock`` returns Unix seconds; it is used for request
    timestamps and for the freshness check on responses and notifications.
    """

    name = "wechatpay"

    def __init__(
        self,
        config: WeChatPayConfig,
        session: requests.Session | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._session = session if session is not None else requests.Session()
        self._clock = clock
        self._base_url = config.base_url.rstrip("/")
        self._private_key = _load_private_key(config.merchant_private_key_pem)
        # Keys are parsed once here, never per request.
        configured = [
            certificate_from_pem(serial, pem) for serial, pem in config.platform_public_keys.items()
        ]
        self._platform_keys = {c.serial: c.key for c in configured}
        self._certificates: CertificateStore | None = None
        if config.key_mode == "platform_certificate":
            self._certificates = CertificateStore(
                self._download_certificates,
                clock=clock,
                initial=configured,
                refresh_interval_s=config.certificate_refresh_s,
                min_refresh_gap_s=config.certificate_min_refresh_gap_s,
            )

    # -- PaymentProvider -----------------------------------------------------------------------
    def create(self, request: CreatePayment) -> PaymentCreated:
        """Place a Native order. The body is deterministic, so a replay is recognised by WeChat
        as the same order (same ``code_url``); a changed body is refused (``OUT_TRADE_NO_USED``)."""
        reply = self._call("POST", "/v3/pay/transactions/native", body=self._native_body(request))
        return PaymentCreated(
            provider_ref=None,  # transaction_id exists only once the buyer has paid
            instructions={"code_url": _require_str(reply.data, "code_url")},
        )

    def query(self, ref: PaymentRef) -> TradeStatus:
        """The order's state, always looked up by ``out_trade_no`` (unpaid orders cannot be
        found by transaction id). An unknown order is ``NOT_FOUND``, not an error."""
        try:
            reply = self._call("GET", _order_path(ref.out_trade_no), query=self._mchid_query())
        except ProviderRejected as exc:
            if exc.code in _NOT_FOUND_CODES:
                return TradeStatus(PaymentState.NOT_FOUND, str(exc.code), ref.provider_ref)
            raise
        return _payment_status(reply.data)

    def close(self, request: ClosePayment) -> CloseResult:
        """Close an unpaid order (WeChat answers 204). Paid already → ``closed=False`` with the
        queried status. Closing twice, or closing an order WeChat never saw, counts as closed."""
        ref = request.ref
        path = _order_path(ref.out_trade_no) + "/close"
        try:
            self._call("POST", path, body={"mchid": self._config.mchid})
        except ProviderRejected as exc:
            if exc.code == "ORDERPAID":
                status = self.query(ref)
                return CloseResult(closed=status.state is PaymentState.CLOSED, status=status)
            if exc.code == "ORDER_CLOSED":
                return _closed(ref, PaymentState.CLOSED, "CLOSED")
            if exc.code in _NOT_FOUND_CODES:
                return _closed(ref, PaymentState.NOT_FOUND, str(exc.code))
            raise
        return _closed(ref, PaymentState.CLOSED, "CLOSED")

    def refund(self, request: RefundRequest) -> RefundResult:
        """Request a refund. ``refund_no`` is sent as ``out_refund_no``: WeChat refunds a given
        number at most once, so retrying with the same request is safe."""
        reply = self._call("POST", "/v3/refund/domestic/refunds", body=_refund_body(request))
        return _refund_result(reply.data, request.refund_no, status_key="status")

    def query_refund(self, ref: PaymentRef, refund_no: str) -> RefundResult:
        """One refund's state, by ``out_refund_no`` (WeChat needs nothing else to find it)."""
        path = "/v3/refund/domestic/refunds/" + quote(refund_no, safe="")
        reply = self._call("GET", path)
        return _refund_result(reply.data, refund_no, status_key="status")

    def parse_notification(self, headers: Mapping[str, str], body: bytes) -> Notification:
        """Verify the Wechatpay-* signature and timestamp, decrypt the resource (AES-256-GCM),
        check it is for our ``mchid`` (and a payment for our ``appid``), then map it. Any
        failure of those → SignatureInvalid."""
        self._verify(headers, body)
        event = _json_object(body)
        event_type = _opt_str(event, "event_type") or ""
        event_id = _require_str(event, "id")
        plain = self._decrypt(event.get("resource"))
        kind = _notification_kind(event_type)
        mchid = plain.get("mchid")
        # Payment and refund resources always name the merchant; other events may not.
        named = mchid is not None or kind is not NotificationKind.OTHER
        if named and mchid != self._config.mchid:
            raise self._forged(f"notification is for mchid {mchid!r}")
        # A transaction names the app it was paid through; refund resources carry no appid.
        appid = plain.get("appid")
        if kind is NotificationKind.PAYMENT and appid != self._config.appid:
            raise self._forged(f"notification is for appid {appid!r}")
        return _notification(kind, event_id, event_type, plain)

    def notification_reply(self, ok: bool) -> NotificationReply:
        """204 with no body acknowledges; 500 with ``{"code":"FAIL"}`` makes WeChat retry."""
        if ok:
            return NotificationReply(204, b"", "application/json")
        body = _json_bytes({"code": "FAIL", "message": "notification not accepted"})
        return NotificationReply(500, body, "application/json")

    # -- signed calls for other WeChat Pay APIs (bills) ---------------------------------------
    def get_json(self, path: str, query: Mapping[str, str]) -> dict[str, Any]:
        """A signed ``GET path?query`` whose answer is verified like every other one: the JSON
        object of a 2xx, else the classified error (:meth:`_reply`)."""
        return self._call("GET", path, query=query).data

    def download(self, url: str) -> bytes:
        """A signed ``GET`` of ``url`` (a WeChat-issued link such as a bill's
        ``download_url``) whose answer is NOT verified: WeChat signs no file download (its
        bill FAQ: "下载账单微信不返回签名头信息"), so the caller checks the content, e.g. by a
        hash from a verified answer. ``url`` must be on ``base_url``'s host: our signed
        Authorization is never sent anywhere else. Sends ``Wechatpay-Serial`` like every
        request. 429/5xx → ProviderUnavailable, other non-2xx → ProviderRejected."""
        split = urlsplit(url)
        if f"{split.scheme}://{split.netloc}" != self._base_url:
            raise ProviderRejected(self.name, f"download URL not on {self._base_url}: {url!r}")
        url_path = split.path + (f"?{split.query}" if split.query else "")
        if self._certificates is not None:
            self._certificates.refresh_due()
        status, _headers, content = self._send_signed(
            "GET", url_path, None, serial=self._request_serial()
        )
        if 200 <= status < 300:
            return content
        data = _lenient_json(content)
        code = _opt_str(data, "code") or f"HTTP_{status}"
        where = f"GET {split.path}: HTTP {status}"
        if status == 429 or status >= 500:
            raise ProviderUnavailable(self.name, where, code=code)
        raise ProviderRejected(self.name, f"{where}: {_error_text(data)}", code=code)

    # -- request building ----------------------------------------------------------------------
    def _native_body(self, request: CreatePayment) -> dict[str, Any]:
        body: dict[str, Any] = {
            "appid": self._config.appid,
            "mchid": self._config.mchid,
            # Truncation is deterministic, so a replay still sends identical bytes.
            "description": request.description[:_DESCRIPTION_MAX],
            "out_trade_no": request.out_trade_no,
            "time_expire": _rfc3339(request.expires_at),
            "notify_url": request.notify_url,
            "amount": _wire_amount(request.amount),
        }
        if request.metadata:
            # Sorted so the same metadata always yields the same bytes (WeChat caps attach at
            # 128 characters and answers PARAM_ERROR beyond that).
            body["attach"] = _json_bytes(dict(sorted(request.metadata.items()))).decode("utf-8")
        return body

    def _mchid_query(self) -> dict[str, str]:
        return {"mchid": self._config.mchid}

    # -- transport -----------------------------------------------------------------------------
    def _call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> _Reply:
        """Sign and send one request; return the verified 2xx reply or raise a ProviderError."""
        if self._certificates is not None:
            self._certificates.refresh_due()  # the first download happens here, then periodic
        status, headers, content = self._send(
            method, path, query=query, body=body, serial=self._request_serial()
        )
        return self._reply(method, path, status, headers, content)

    def _send(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        serial: str | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """Sign and send; the raw status, headers and body. Transport errors → unavailable."""
        url_path = path + ("?" + urlencode(query) if query else "")
        payload = None if body is None else _json_bytes(body)
        return self._send_signed(method, url_path, payload, serial=serial)

    def _send_signed(
        self, method: str, url_path: str, payload: bytes | None, *, serial: str | None
    ) -> tuple[int, Mapping[str, str], bytes]:
        """Sign ``METHOD url_path payload`` (``url_path`` is path plus query exactly as sent)
        and send it to ``base_url``; the raw status, headers and body."""
        path = url_path.partition("?")[0]
        headers = {
            "Authorization": self._authorization(method, url_path, payload or b""),
            "Accept": "application/json",
            "User-Agent": _USER_AGENT,
        }
        if serial is not None:
            # WeChat requires it on requests with encrypted fields; we send it on every one.
            headers["Wechatpay-Serial"] = serial
        if payload is not None:
            headers["Content-Type"] = "application/json"
        try:
            resp = self._session.request(
                method,
                self._base_url + url_path,
                data=payload,
                headers=headers,
                timeout=(self._config.connect_timeout, self._config.read_timeout),
                allow_redirects=False,
            )
            content = resp.content  # read inside the try: a reset can hit the body too
        except requests.RequestException as exc:
            raise ProviderUnavailable(
                self.name, f"{method} {path}: {type(exc).__name__}: {exc}"
            ) from exc
        return resp.status_code, resp.headers, content

    def _reply(
        self,
        method: str,
        path: str,
        status: int,
        headers: Mapping[str, str],
        content: bytes,
        *,
        lookup: Callable[[str], rsa.RSAPublicKey | None] | None = None,
    ) -> _Reply:
        """The one place HTTP outcomes become results or errors (see the module docstring)."""
        where = f"{method} {path}: HTTP {status}"
        if status == 429 or status >= 500:
            code = _opt_str(_lenient_json(content), "code")
            raise ProviderUnavailable(self.name, where, code=code)
        self._verify(headers, content, lookup=lookup)
        if 200 <= status < 300:
            return _Reply(status, _json_object(content) if content else {})
        data = _lenient_json(content)
        code = _opt_str(data, "code") or f"HTTP_{status}"
        raise ProviderRejected(self.name, f"{where}: {_error_text(data)}", code=code)

    def _authorization(self, method: str, url_path: str, body: bytes) -> str:
        timestamp = str(int(self._clock()))
        nonce = secrets.token_hex(16).upper()
        message = f"{method}\n{url_path}\n{timestamp}\n{nonce}\n".encode() + body + b"\n"
        signature = self._private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        return (
            f'{_SCHEMA} mchid="{self._config.mchid}",nonce_str="{nonce}",'
            f'signature="{base64.b64encode(signature).decode("ascii")}",'
            f'timestamp="{timestamp}",serial_no="{self._config.merchant_serial_no}"'
        )

    # -- WeChat Pay keys ------------------------------------------------------------------------
    def _request_serial(self) -> str | None:
        """The ``Wechatpay-Serial`` to send: the newest valid platform certificate, or the
        configured ``PUB_KEY_ID_…`` (else the first configured key) in public-key mode."""
        if self._certificates is not None:
            return self._certificates.request_serial()
        serials = list(self._platform_keys)
        return next((s for s in serials if s.startswith(_PUBLIC_KEY_PREFIX)), serials[0])

    def _key_for(self, serial: str) -> rsa.RSAPublicKey | None:
        """The key a response or notification names; certificate mode may download (once per
        short interval) to learn a new serial."""
        if self._certificates is not None:
            return self._certificates.key_for(serial)
        return self._platform_keys.get(serial)

    def _download_certificates(self) -> list[PlatformCertificate]:
        """``GET /v3/certificates``: decrypted, then the answer verified with a certificate we
        already trust or, failing that, one it carries (the bootstrap, CertificateStore rule 1).
        Sent without ``Wechatpay-Serial``: it is how a stale serial gets replaced."""
        method, path = "GET", _CERTIFICATES_PATH
        status, headers, content = self._send(method, path)
        certs: list[PlatformCertificate] = []
        if 200 <= status < 300:
            certs = decrypt_certificates(_json_object(content), self._config.api_v3_key)
        offered = {c.serial: c.key for c in certs}
        store = self._certificates
        assert store is not None  # only certificate mode downloads

        def lookup(serial: str) -> rsa.RSAPublicKey | None:
            return store.trusted(serial) or offered.get(serial)

        self._reply(method, path, status, headers, content, lookup=lookup)
        return certs

    # -- verification --------------------------------------------------------------------------
    def _verify(
        self,
        headers: Mapping[str, str],
        body: bytes,
        *,
        lookup: Callable[[str], rsa.RSAPublicKey | None] | None = None,
    ) -> None:
        """Check the Wechatpay-* signature over ``TIMESTAMP\\nNONCE\\nBODY\\n`` (raw body bytes)
        and the timestamp's freshness, with the key ``lookup`` (default :meth:`_key_for`)
        finds for ``Wechatpay-Serial``. Raises SignatureInvalid."""
        lower = {k.lower(): v for k, v in headers.items()}
        timestamp, nonce, signature, serial = (
            lower.get(f"wechatpay-{name}") for name in ("timestamp", "nonce", "signature", "serial")
        )
        if not (timestamp and nonce and signature and serial):
            raise self._forged("missing Wechatpay-* signature headers")
        sig_type = lower.get("wechatpay-signature-type")
        if sig_type is not None and sig_type != _SCHEMA:
            raise self._forged(f"unsupported Wechatpay-Signature-Type {sig_type!r}")
        self._check_fresh(timestamp)
        key = (lookup or self._key_for)(serial)
        if key is None:
            raise self._forged(f"unknown Wechatpay-Serial {serial!r}")
        message = f"{timestamp}\n{nonce}\n".encode() + body + b"\n"
        try:
            raw = base64.b64decode(signature, validate=True)
            key.verify(raw, message, padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, binascii.Error, ValueError) as exc:
            raise self._forged("signature does not verify") from exc

    def _check_fresh(self, timestamp: str) -> None:
        # Both directions: a far-future timestamp is as suspicious as a stale (replayed) one.
        try:
            skew = abs(self._clock() - int(timestamp))
        except ValueError as exc:
            raise self._forged(f"bad Wechatpay-Timestamp {timestamp!r}") from exc
        if skew > self._config.timestamp_tolerance_s:
            raise self._forged(f"Wechatpay-Timestamp {timestamp} is {int(skew)} s off")

    def _decrypt(self, resource: object) -> dict[str, Any]:
        """Decrypt an ``encrypt-resource`` with the APIv3 key; a bad tag → SignatureInvalid."""
        if not isinstance(resource, dict) or resource.get("algorithm") != _AEAD:
            raise _malformed(self.name, "resource is not AEAD_AES_256_GCM")
        ciphertext = _require_str(resource, "ciphertext")
        nonce = _require_str(resource, "nonce")
        aad = _opt_str(resource, "associated_data") or ""
        try:
            plain = AESGCM(self._config.api_v3_key).decrypt(
                nonce.encode("utf-8"), base64.b64decode(ciphertext), aad.encode("utf-8")
            )
        except (InvalidTag, binascii.Error, ValueError) as exc:
            raise self._forged("resource does not decrypt (bad GCM tag or nonce)") from exc
        return _json_object(plain)

    def _forged(self, reason: str) -> SignatureInvalid:
        return SignatureInvalid(self.name, reason)


# -- pure helpers ------------------------------------------------------------------------------
def _load_private_key(pem: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("merchant_private_key_pem must be an RSA private key")
    return key


def _order_path(out_trade_no: str) -> str:
    return "/v3/pay/transactions/out-trade-no/" + quote(out_trade_no, safe="")


def _json_bytes(value: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON: these are the exact bytes signed and sent."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _json_object(content: bytes) -> dict[str, Any]:
    try:
        value = json.loads(content)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _malformed("wechatpay", "body is not JSON") from exc
    if not isinstance(value, dict):
        raise _malformed("wechatpay", "body is not a JSON object")
    return value


def _lenient_json(content: bytes) -> dict[str, Any]:
    """Error bodies are read for their code only; garbage there must not hide the status."""
    try:
        value = json.loads(content) if content else {}
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _error_text(data: Mapping[str, Any]) -> str:
    text = str(data.get("message") or "no message")
    detail = data.get("detail")
    if isinstance(detail, dict) and detail.get("field"):
        text += f" (field {detail['field']}: {detail.get('issue', '')})"
    return text


def _malformed(provider: str, reason: str) -> ProviderUnavailable:
    # A verified but unusable answer: retrying (same idempotency key) or querying is safe.
    return ProviderUnavailable(provider, f"malformed response: {reason}")


def _require_str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise _malformed("wechatpay", f"missing {key!r}")
    return value


def _opt_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and value else None


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("expires_at must be timezone-aware")
    return moment.astimezone(_CHINA_TZ).isoformat(timespec="seconds")


def _parse_time(value: object) -> datetime | None:
    # Lenient on purpose: an odd success_time must not stop a payment from being recorded.
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _wire_amount(money: Money) -> dict[str, Any]:
    """WeChat takes integer minor units (fen) — exactly ``Money.amount``."""
    return {"total": money.amount, "currency": money.currency}


def _money(amount: object, key: str) -> Money | None:
    """``amount[key]`` as Money; WeChat omits the currency in refund notifications (CNY)."""
    if not isinstance(amount, dict):
        return None
    value = amount.get(key)
    if value is None:
        return None
    try:
        return Money(value, str(amount.get("currency") or "CNY"))
    except MoneyError as exc:
        raise _malformed("wechatpay", f"bad amount {key}={value!r}") from exc


def _payment_status(data: Mapping[str, Any]) -> TradeStatus:
    """Map an order object (query answer or decrypted TRANSACTION.* resource)."""
    raw = _require_str(data, "trade_state")
    return TradeStatus(
        # An unknown state is treated as not final: polling continues, nothing is concluded.
        state=_TRADE_STATES.get(raw, PaymentState.PENDING),
        raw_status=raw,
        provider_ref=_opt_str(data, "transaction_id"),
        amount=_money(data.get("amount"), "total"),
        paid_at=_parse_time(data.get("success_time")),
    )


def _refund_body(request: RefundRequest) -> dict[str, Any]:
    if request.amount.currency != request.total.currency:
        raise ValueError("refund and total must share a currency")
    body: dict[str, Any] = {
        "out_trade_no": request.ref.out_trade_no,
        "out_refund_no": request.refund_no,
        "amount": {
            "refund": request.amount.amount,
            "total": request.total.amount,
            "currency": request.amount.currency,
        },
    }
    if request.reason:
        body["reason"] = request.reason[:_REASON_MAX]
    if request.notify_url:
        body["notify_url"] = request.notify_url
    return body


def _refund_result(data: Mapping[str, Any], refund_no: str, *, status_key: str) -> RefundResult:
    """Map a refund object (``status``) or a decrypted REFUND.* resource (``refund_status``)."""
    raw = _require_str(data, status_key)
    return RefundResult(
        refund_no=_opt_str(data, "out_refund_no") or refund_no,
        state=_REFUND_STATES.get(raw, RefundState.PENDING),
        raw_status=raw,
        amount=_money(data.get("amount"), "refund"),
        provider_refund_ref=_opt_str(data, "refund_id"),
    )


def _closed(ref: PaymentRef, state: PaymentState, raw: str) -> CloseResult:
    return CloseResult(closed=True, status=TradeStatus(state, raw, ref.provider_ref))


def _notification_kind(event_type: str) -> NotificationKind:
    if event_type.startswith("TRANSACTION."):
        return NotificationKind.PAYMENT
    if event_type.startswith("REFUND."):
        return NotificationKind.REFUND
    return NotificationKind.OTHER


def _notification(
    kind: NotificationKind, event_id: str, event_type: str, plain: Mapping[str, Any]
) -> Notification:
    out_trade_no = _opt_str(plain, "out_trade_no")
    if kind is NotificationKind.PAYMENT:
        status = _payment_status(plain)
        return Notification(kind, event_id, out_trade_no, status=status, raw_type=event_type)
    if kind is NotificationKind.REFUND:
        refund_no = _require_str(plain, "out_refund_no")
        refund = _refund_result(plain, refund_no, status_key="refund_status")
        return Notification(kind, event_id, out_trade_no, refund=refund, raw_type=event_type)
    return Notification(kind, event_id, out_trade_no, raw_type=event_type)
