"""WeChat Pay API v3 simulator (direct merchant, Native payments), written from the protocol
description alone: it imports nothing from ``adapters/``, ``services/`` or ``domain/`` and does
its own signing and encryption.

Provider routes (every answer is signed with the simulator's platform key and carries
``Request-ID``; every request must carry a valid merchant ``Authorization`` header):

* ``POST /v3/pay/transactions/native``                       → 200 ``{"code_url"}``
* ``GET  /v3/pay/transactions/out-trade-no/{no}?mchid=``     → 200 order / 404 ORDER_NOT_EXIST
* ``GET  /v3/pay/transactions/id/{transaction_id}?mchid=``   → 200 order / 404 ORDER_NOT_EXIST
* ``POST /v3/pay/transactions/out-trade-no/{no}/close``      → 204 / 400 ORDERPAID
* ``POST /v3/refund/domestic/refunds``                       → 200 refund / 403 NOTENOUGH …
* ``GET  /v3/refund/domestic/refunds/{out_refund_no}``       → 200 refund / 404 RESOURCE_NOT_EXISTS
* ``GET  /v3/bill/tradebill``, ``GET /v3/bill/fundflowbill`` → 200 ``{"hash_type",
  "hash_value", "download_url"}`` / 400 NO_STATEMENT_EXIST, STATEMENT_CREATING; ``GET
  /v3/billdownload/file?token=`` → the file, unsigned (:mod:`simulators.wechatpay_bills`)
* ``GET  /v3/certificates``  → 200 ``{"data": [{"serial_no", "effective_time", "expire_time",
  "encrypt_certificate"}]}`` (each certificate AES-256-GCM encrypted with the APIv3 key,
  ``associated_data="certificate"``) in ``platform_certificate`` mode; 500 SYSTEM_ERROR in
  ``public_key`` mode, as WeChat answers merchants that use a WeChat Pay public key.

Key modes (``key_mode``): ``public_key`` (default) signs with one ``PUB_KEY_ID_…`` key;
``platform_certificate`` generates X.509 platform certificates at run time and can rotate them
(publish a new one while the old stays valid, switch signing to it, retire the old one).
Responses and notifications are signed with the key whose serial ``Wechatpay-Serial`` names.
A request's ``Wechatpay-Serial`` header, when present (WeChat requires it only on requests with
encrypted fields), must name a key the simulator publishes, else 400 PARAM_ERROR
"平台证书序列号Wechatpay-Serial错误" (the answer merchants report from the real API).

Control plane (besides the harness's ``/_sim/ledger``, ``/_sim/faults``, ``/_sim/reset``):

* ``POST /_sim/pay`` ``{"out_trade_no", "amount"?}`` — the buyer pays (see :meth:`pay`)
* ``GET|POST /_sim/options`` — read / change :class:`SimOptions`
* ``POST /_sim/refunds/settle`` ``{"out_refund_no", "status"?}`` — finish a PROCESSING refund
* ``POST /_sim/refunds/dashboard`` ``{"out_trade_no", "amount"?, "status"?, "notify_url"?}`` — a
  refund made in the merchant platform, not through the API (see :meth:`dashboard_refund`)
* ``POST /_sim/notifications/release`` ``{"reverse"?}`` — send held notifications
* ``GET  /_sim/notifications`` — every notification built so far (headers and body)
* ``POST /_sim/bills`` ``{"action": …}`` — the bills' clock and faults
  (:class:`simulators.wechatpay_bills.BillDesk`)
* ``GET  /_sim/platform`` — ``{"serial", "public_key_pem"}`` to configure the merchant side
* ``GET|POST /_sim/certificates`` ``{"action": "publish"|"switch"|"retire", "serial"?}`` — the
  key set (mode, signing serial, published serials, downloads so far); rotate (see
  :meth:`WeChatPaySimulator.publish_certificate`)

Error codes whose HTTP status the protocol notes mark unconfirmed (``OUT_TRADE_NO_USED``,
``ORDERPAID``, ``ORDER_CLOSED`` → 400; ``NOTENOUGH`` → 403) are kept in :data:`ERROR_STATUS`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import secrets
import string
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import unquote

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

from simulators.harness import Notifier, Request, Response, SimulatorServer, serve_forever
from simulators.wechatpay_bills import BillDesk

SCHEMA = "WECHATPAY2-SHA256-RSA2048"
CST = timezone(timedelta(hours=8))
OUT_TRADE_NO_RE = re.compile(r"^[0-9A-Za-z_\-*]{6,32}$")
AUTH_PARAM_RE = re.compile(r'(\w+)="([^"]*)"')
PAID_STATES = ("SUCCESS", "REFUND")
KEY_MODES = ("public_key", "platform_certificate")
CERTIFICATE_VALIDITY = timedelta(days=5 * 365)  # WeChat platform certificates last five years
BAD_SERIAL_MESSAGE = "平台证书序列号Wechatpay-Serial错误"
MAX_REFUNDS_PER_ORDER = 50

#: HTTP status per error code (used for injected ``business_error`` faults too).
ERROR_STATUS: dict[str, int] = {
    "PARAM_ERROR": 400,
    "INVALID_REQUEST": 400,
    "APPID_MCHID_NOT_MATCH": 400,
    "OUT_TRADE_NO_USED": 400,
    "ORDERPAID": 400,
    "ORDER_CLOSED": 400,
    "TRADE_OVERDUE": 400,
    "SIGN_ERROR": 401,
    "NO_AUTH": 403,
    "NOTENOUGH": 403,
    "ORDER_NOT_EXIST": 404,
    "ORDERNOTEXIST": 404,
    "RESOURCE_NOT_EXISTS": 404,
    "FREQUENCY_LIMITED": 429,
    "RATELIMIT_EXCEEDED": 429,
    "SYSTEM_ERROR": 500,
    "SERVICE_UNAVAILABLE": 503,
}


class SimError(Exception):
    """A WeChat-style error answer: ``{"code", "message", "detail"?}`` with an HTTP status."""

    def __init__(
        self, code: str, message: str, *, status: int | None = None, detail: Any = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status or ERROR_STATUS.get(code, 400)
        self.detail = detail

    def response(self) -> Response:
        payload: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail:
            payload["detail"] = self.detail
        return Response.json(payload, self.status)


def param_error(field: str, issue: str, value: Any = None, location: str = "body") -> SimError:
    detail = {"field": field, "value": value, "issue": issue, "location": location}
    return SimError("PARAM_ERROR", f"参数错误: {field} {issue}", detail=detail)


@dataclass
class SimOptions:
    """Behaviour switches, changed with :meth:`WeChatPaySimulator.set_options` or
    ``POST /_sim/options``; ``reset`` restores the constructor's values."""

    auto_pay_after_ms: int | None = None  # pay every new order after this delay (None: never)
    refund_settle_after_ms: int | None = 0  # 0: SUCCESS at once; N: PROCESSING for N ms; None: hold
    notify_copies: int = 1  # deliver each notification this many times (duplicates)
    notify_delay_s: float = 0.0  # deliver notifications late
    hold_notifications: bool = False  # queue them until release_notifications() (reordering)
    corrupt_response_signatures: bool = False  # flip a byte of every Wechatpay-Signature
    corrupt_notification_signatures: bool = False
    require_https_notify_url: bool = False  # the real API insists on HTTPS
    not_found_code: str = "ORDER_NOT_EXIST"  # spelling varies between doc pages
    tamper_certificates: bool = False  # list certificates that do not decrypt with the APIv3 key
    timestamp_tolerance_s: int = 300  # accepted clock skew on request timestamps

    def update(self, changes: dict[str, Any]) -> None:
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown options: {sorted(unknown)}")
        for key, value in changes.items():
            setattr(self, key, value)


def _now_rfc3339() -> str:
    return datetime.now(CST).isoformat(timespec="seconds")


def _digits(n: int) -> str:
    return "".join(secrets.choice(string.digits) for _ in range(n))


def _alnum(n: int) -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(n))


def _compact(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_public_key(pem: bytes) -> rsa.RSAPublicKey:
    """A PEM public key or certificate (merchants may hand over either)."""
    if b"BEGIN CERTIFICATE" in pem:
        key: Any = x509.load_pem_x509_certificate(pem).public_key()
    else:
        key = serialization.load_pem_public_key(pem)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("merchant key must be RSA")
    return key


@dataclass(frozen=True)
class PlatformKey:
    """One WeChat Pay signing key: a ``PUB_KEY_ID_…`` public key, or a platform certificate."""

    serial: str
    private_key: rsa.RSAPrivateKey
    certificate: x509.Certificate | None = None

    @property
    def public_pem(self) -> bytes:
        """The certificate's PEM (certificate mode) or the bare public key's PEM."""
        if self.certificate is not None:
            return self.certificate.public_bytes(serialization.Encoding.PEM)
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _certificate(
    key: rsa.RSAPrivateKey,
    issuer_key: rsa.RSAPrivateKey,
    mchid: str,
    outlive: datetime | None = None,
) -> PlatformKey:
    """A platform certificate like WeChat's: issued by "Tenpay.com Root CA", five years valid
    (and at least a day longer than ``outlive``, the certificate it replaces: X.509 dates are
    in whole seconds, and a rotation in a test can happen within one), a 40-hex-digit serial
    number (which is the ``serial_no`` merchants see)."""
    number = secrets.randbits(158) | (1 << 156)  # 40 hex digits, below X.509's 2**159 limit
    now = datetime.now(UTC)
    expires = now + CERTIFICATE_VALIDITY
    if outlive is not None:
        expires = max(expires, outlive + timedelta(days=1))
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com sign"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tenpay.com"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, mchid),
        ]
    )
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com Root CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(number)
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(expires)
        .sign(issuer_key, hashes.SHA256())
    )
    return PlatformKey(f"{number:040X}", key, cert)


class WeChatPaySimulator(SimulatorServer):
    """A WeChat Pay v3 server for one merchant (``mchid``/``appid``) on 127.0.0.1.

    It generates its own platform key pair (``key_mode="public_key"``) or platform certificate
    (``"platform_certificate"``); give ``platform_serial`` and ``platform_public_key_pem`` to
    the merchant side, or let it download the certificates. ``options`` are :class:`SimOptions`
    fields. Use as a context manager or call :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        *,
        mchid: str,
        appid: str,
        merchant_serial_no: str,
        merchant_public_key_pem: bytes,
        api_v3_key: bytes,
        port: int = 0,
        platform_serial: str | None = None,
        key_mode: str = "public_key",
        notify_retry_delays: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0),
        **options: Any,
    ) -> None:
        if len(api_v3_key) != 32:
            raise ValueError("api_v3_key must be 32 bytes")
        if key_mode not in KEY_MODES:
            raise ValueError(f"key_mode must be one of {KEY_MODES}")
        super().__init__("wechatpay", port=port, error_response=self._system_error)
        self.mchid = mchid
        self.appid = appid
        self.merchant_serial_no = merchant_serial_no
        self._merchant_key = load_public_key(merchant_public_key_pem)
        self._aes = AESGCM(api_v3_key)
        self.key_mode = key_mode
        self._root_key = _new_key() if key_mode == "platform_certificate" else None
        self._keys: dict[str, PlatformKey] = {}
        first = self._new_platform_key()
        if platform_serial:
            if key_mode != "public_key":
                raise ValueError("platform_serial names a public key; certificates carry theirs")
            first = PlatformKey(platform_serial, first.private_key)
        # Published keys, oldest first, and the one signing now (reset() restores these).
        self._keys = {first.serial: first}
        self._signing = first.serial
        self._initial_keys = (dict(self._keys), self._signing)
        self.certificate_downloads = 0
        self.request_serials: Counter[str] = Counter()  # Wechatpay-Serial of requests ("" none)
        self.options = SimOptions()
        self.options.update(options)
        self._initial_options = asdict(self.options)
        self._state = threading.RLock()
        self._clear_state()
        self.bills = BillDesk(
            self._state, mchid=mchid, appid=appid, base_url=lambda: self.url,
            orders=lambda: list(self._orders.values()),
            refunds=lambda: list(self._refunds.values()),
        )  # fmt: skip
        self.notifier = Notifier(lambda r: r.status_code in (200, 204), notify_retry_delays)
        self.ledger_provider = self.ledger
        self.reset_hooks.append(self._on_reset)  # reset(): faults, state and options
        self._register_routes()

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> WeChatPaySimulator:
        super().start()
        return self

    def stop(self) -> None:
        for timer in list(self._timers):
            timer.cancel()
        self.notifier.stop()
        super().stop()

    def __enter__(self) -> WeChatPaySimulator:
        return self.start()

    def set_options(self, **changes: Any) -> None:
        with self._state:
            self.options.update(changes)

    def _clear_state(self) -> None:
        self._orders: dict[str, dict[str, Any]] = {}
        self._charges: list[dict[str, Any]] = []
        self._refunds: dict[str, dict[str, Any]] = {}
        self._held: list[tuple[str, dict[str, str], bytes]] = []
        self._timers: list[threading.Timer] = []
        self.notifications: list[dict[str, Any]] = []

    def _on_reset(self) -> None:
        with self._state:
            for timer in self._timers:
                timer.cancel()
            self._clear_state()
            self.options = SimOptions(**self._initial_options)
            keys, self._signing = self._initial_keys
            self._keys = dict(keys)
            self.certificate_downloads = 0
            self.request_serials.clear()
        self.bills.reset()

    # -- platform keys and their rotation --------------------------------------------------------
    @property
    def platform_serial(self) -> str:
        """The serial of the key signing now."""
        return self._signing

    @property
    def platform_public_key_pem(self) -> bytes:
        """The PEM (certificate in certificate mode) of the key signing now."""
        return self._keys[self._signing].public_pem

    def _new_platform_key(self) -> PlatformKey:
        if self._root_key is None:
            return PlatformKey("PUB_KEY_ID_01" + _digits(30), _new_key())
        published = [k.certificate for k in self._keys.values() if k.certificate]
        latest = max((c.not_valid_after_utc for c in published), default=None)
        return _certificate(_new_key(), self._root_key, self.mchid, latest)

    def _require_certificates(self) -> None:
        if self.key_mode != "platform_certificate":
            raise ValueError("rotation needs key_mode platform_certificate")

    def publish_certificate(self) -> str:
        """Step 1 of a rotation: a new certificate is listed by ``/v3/certificates`` and
        accepted in requests; signing stays with the old one. Returns the new serial."""
        self._require_certificates()
        key = self._new_platform_key()
        with self._state:
            self._keys[key.serial] = key
        return key.serial

    def switch_signing(self, serial: str | None = None) -> str:
        """Step 2: sign responses and notifications with ``serial`` (default: the newest)."""
        self._require_certificates()
        with self._state:
            serial = serial or list(self._keys)[-1]
            if serial not in self._keys:
                raise LookupError(f"no published certificate {serial!r}")
            self._signing = serial
            return serial

    def retire_certificate(self, serial: str | None = None) -> str:
        """Step 3: the old certificate expires — no longer listed, a request naming it is
        refused. Default: the oldest one not signing. The signing key cannot be retired."""
        self._require_certificates()
        with self._state:
            serial = serial or next((s for s in self._keys if s != self._signing), None)
            if serial is None or serial not in self._keys:
                raise LookupError(f"no certificate to retire ({serial!r})")
            if serial == self._signing:
                raise ValueError(f"certificate {serial} signs now; switch first")
            del self._keys[serial]
            return serial

    def certificate_info(self) -> dict[str, Any]:
        with self._state:
            return {
                "mode": self.key_mode,
                "signing": self._signing,
                "serials": list(self._keys),
                "downloads": self.certificate_downloads,
            }

    # -- routes ----------------------------------------------------------------------------------
    def _register_routes(self) -> None:
        api = self._api
        self.route("POST", "/v3/pay/transactions/native", api(self._native))
        self.route("GET", "/v3/pay/transactions/out-trade-no/", api(self._query), prefix=True)
        self.route("POST", "/v3/pay/transactions/out-trade-no/", api(self._close), prefix=True)
        self.route("GET", "/v3/pay/transactions/id/", api(self._query_by_id), prefix=True)
        self.route("POST", "/v3/refund/domestic/refunds", api(self._refund))
        self.route("GET", "/v3/refund/domestic/refunds/", api(self._refund_query), prefix=True)
        self.route("POST", "/_sim/pay", self._control(self._sim_pay))
        self.route("GET", "/_sim/options", lambda _r: Response.json(asdict(self.options)))
        self.route("POST", "/_sim/options", self._control(self._sim_options))
        self.route("POST", "/_sim/refunds/settle", self._control(self._sim_settle))
        self.route("POST", "/_sim/refunds/dashboard", self._control(self._sim_dashboard_refund))
        self.route("POST", "/_sim/notifications/release", self._control(self._sim_release))
        self.route("GET", "/_sim/notifications", lambda _r: Response.json(self._notification_log()))
        self.route("GET", "/_sim/platform", lambda _r: Response.json(self._platform_info()))
        self.route("GET", "/v3/certificates", api(self._certificates))
        self.route("GET", "/_sim/certificates", lambda _r: Response.json(self.certificate_info()))
        self.route("POST", "/_sim/certificates", self._control(self._sim_certificates))
        self.route("GET", "/v3/bill/tradebill", api(self.bills.tradebill))
        self.route("GET", "/v3/bill/fundflowbill", api(self.bills.fundflowbill))
        self.route("GET", "/v3/billdownload/file", self._bill_download)
        self.route("POST", "/_sim/bills", self._control(self.bills.control))

    def _api(self, handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
        """Wrap a provider route: authenticate, inject business errors, sign the answer."""

        def wrapped(req: Request) -> Response:
            try:
                self._authenticate(req)
                self._check_request_serial(req)
                code = self.faults.business_error
                if code:
                    raise SimError(code, "simulated business error")
                resp = handler(req)
            except SimError as exc:
                resp = exc.response()
            return self._signed(resp)

        return wrapped

    def _bill_download(self, req: Request) -> Response:
        """``GET download_url``: a signed request like any other, but the file that answers
        it is not signed (WeChat's bill FAQ); an error answer is signed as usual."""
        try:
            self._authenticate(req)
            self._check_request_serial(req)
        except SimError as exc:
            return self._signed(exc.response())
        resp = self.bills.download(req)
        return resp if resp.status == 200 else self._signed(resp)

    def _control(self, handler: Callable[[dict[str, Any]], Any]) -> Callable[[Request], Response]:
        def wrapped(req: Request) -> Response:
            try:
                return Response.json(handler(req.json() or {}))
            except LookupError as exc:
                return Response.json({"error": str(exc)}, 404)
            except (ValueError, TypeError) as exc:
                return Response.json({"error": str(exc)}, 409)

        return wrapped

    # -- request authentication ------------------------------------------------------------------
    def _authenticate(self, req: Request) -> None:
        """Check the merchant's Authorization header over METHOD, path+query, body."""
        schema, _, params = req.headers.get("authorization", "").partition(" ")
        if schema != SCHEMA:
            raise SimError("SIGN_ERROR", "Authorization 缺失或认证类型错误")
        auth = dict(AUTH_PARAM_RE.findall(params))
        missing = {"mchid", "nonce_str", "signature", "timestamp", "serial_no"} - auth.keys()
        if missing:
            raise SimError("SIGN_ERROR", f"Authorization 缺少 {sorted(missing)}")
        if auth["serial_no"] != self.merchant_serial_no:
            raise SimError("SIGN_ERROR", "商户证书序列号有误")
        if not auth["timestamp"].isdigit() or (
            abs(time.time() - int(auth["timestamp"])) > self.options.timestamp_tolerance_s
        ):
            raise SimError("SIGN_ERROR", "时间戳过期或无效")
        message = (
            f"{req.method}\n{req.raw_path}\n{auth['timestamp']}\n{auth['nonce_str']}\n".encode()
            + req.body
            + b"\n"
        )
        try:
            signature = base64.b64decode(auth["signature"], validate=True)
            self._merchant_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError) as exc:
            raise SimError("SIGN_ERROR", "签名错误") from exc
        if auth["mchid"] != self.mchid:
            raise SimError("NO_AUTH", "商户号无权限")

    def _check_request_serial(self, req: Request) -> None:
        """A request's ``Wechatpay-Serial`` must name a key we publish (it says which key the
        merchant encrypted sensitive fields with); absent is allowed on requests without any."""
        serial = req.headers.get("wechatpay-serial", "")
        with self._state:
            self.request_serials[serial] += 1
            known = serial in self._keys
        if serial and not known:
            raise SimError("PARAM_ERROR", BAD_SERIAL_MESSAGE)

    def _certificates(self, _req: Request) -> Response:
        """``GET /v3/certificates``: every published certificate, encrypted with the APIv3 key."""
        if self.key_mode != "platform_certificate":
            # Merchants on WeChat Pay public keys have no platform certificates to download.
            raise SimError("SYSTEM_ERROR", "系统错误")
        with self._state:
            self.certificate_downloads += 1
            keys = list(self._keys.values())
        return Response.json({"data": [self._certificate_entry(k) for k in keys]})

    def _certificate_entry(self, key: PlatformKey) -> dict[str, Any]:
        assert key.certificate is not None
        nonce = _alnum(12)
        ciphertext = self._aes.encrypt(nonce.encode(), key.public_pem, b"certificate")
        if self.options.tamper_certificates:
            ciphertext = ciphertext[:-1] + bytes([ciphertext[-1] ^ 0x01])
        cert = key.certificate
        return {
            "serial_no": key.serial,
            "effective_time": cert.not_valid_before_utc.astimezone(CST).isoformat(),
            "expire_time": cert.not_valid_after_utc.astimezone(CST).isoformat(),
            "encrypt_certificate": {
                "algorithm": "AEAD_AES_256_GCM",
                "nonce": nonce,
                "associated_data": "certificate",
                "ciphertext": base64.b64encode(ciphertext).decode("ascii"),
            },
        }

    # -- response / notification signing ---------------------------------------------------------
    def sign(
        self,
        body: bytes,
        *,
        timestamp: int | None = None,
        nonce: str | None = None,
        serial: str | None = None,
        corrupt: bool = False,
    ) -> dict[str, str]:
        """Wechatpay-* headers over ``TIMESTAMP\\nNONCE\\nBODY\\n``, signed with the key
        ``serial`` names (default: the signing key). A serial we do not hold is sent as given
        over the signing key's signature: that is how tests build forgeries."""
        ts = str(int(time.time()) if timestamp is None else timestamp)
        nonce = nonce or _alnum(32)
        message = f"{ts}\n{nonce}\n".encode() + body + b"\n"
        with self._state:
            serial = serial or self._signing
            key = self._keys.get(serial) or self._keys[self._signing]
        signature = key.private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        if corrupt:
            signature = bytes([signature[0] ^ 0x01]) + signature[1:]
        return {
            "Wechatpay-Timestamp": ts,
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Signature": base64.b64encode(signature).decode("ascii"),
            "Wechatpay-Serial": serial,
            "Wechatpay-Signature-Type": SCHEMA,
        }

    def _signed(self, resp: Response) -> Response:
        corrupt = self.options.corrupt_response_signatures
        resp.headers.update(self.sign(resp.body, corrupt=corrupt))
        resp.headers["Request-ID"] = str(uuid.uuid4())
        return resp

    def _system_error(self, _req: Request) -> Response:
        return self._signed(SimError("SYSTEM_ERROR", "系统错误").response())

    def build_notification(
        self,
        event_type: str,
        resource: dict[str, Any],
        *,
        summary: str = "",
        event_id: str | None = None,
        associated_data: str | None = None,
        corrupt_tag: bool = False,
        timestamp: int | None = None,
        serial: str | None = None,
        corrupt_signature: bool = False,
    ) -> tuple[dict[str, str], bytes]:
        """A signed notification with ``resource`` AES-256-GCM encrypted (tests use the
        keyword options to build well-signed forgeries)."""
        original_type = "transaction" if event_type.startswith("TRANSACTION.") else "refund"
        aad = original_type if associated_data is None else associated_data
        nonce = _alnum(12)
        ciphertext = self._aes.encrypt(nonce.encode(), _compact(resource), aad.encode())
        if corrupt_tag:
            ciphertext = ciphertext[:-1] + bytes([ciphertext[-1] ^ 0x01])
        envelope = {
            "id": event_id or f"EV-{uuid.uuid4()}",
            "create_time": _now_rfc3339(),
            "resource_type": "encrypt-resource",
            "event_type": event_type,
            "summary": summary,
            "resource": {
                "original_type": original_type,
                "algorithm": "AEAD_AES_256_GCM",
                "ciphertext": base64.b64encode(ciphertext).decode("ascii"),
                "associated_data": aad,
                "nonce": nonce,
            },
        }
        body = _compact(envelope)
        headers = self.sign(body, timestamp=timestamp, serial=serial, corrupt=corrupt_signature)
        headers["Content-Type"] = "application/json"
        return headers, body

    def _notify(
        self, url: str | None, event_type: str, summary: str, resource: dict[str, Any]
    ) -> None:
        if not url:
            return
        corrupt = self.options.corrupt_notification_signatures
        headers, body = self.build_notification(
            event_type, resource, summary=summary, corrupt_signature=corrupt
        )
        with self._state:
            self.notifications.append(
                {"url": url, "event_type": event_type, "headers": headers, "body": body}
            )
            if self.options.hold_notifications:
                self._held.append((url, headers, body))
                return
            delay, copies = self.options.notify_delay_s, self.options.notify_copies
        self.notifier.send(url, body, headers, delay=delay, copies=copies)

    def release_notifications(self, *, reverse: bool = False) -> int:
        """Send held notifications, oldest first (or newest first), 50 ms apart so the order
        of arrival is the order chosen. Returns how many were released."""
        with self._state:
            held, self._held = self._held, []
        if reverse:
            held.reverse()
        for i, (url, headers, body) in enumerate(held):
            self.notifier.send(
                url, body, headers, delay=0.05 * i, copies=self.options.notify_copies
            )
        return len(held)

    # -- provider handlers -----------------------------------------------------------------------
    def _json_body(self, req: Request) -> dict[str, Any]:
        try:
            body = json.loads(req.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SimError("PARAM_ERROR", "请求体不是合法的 JSON") from exc
        if not isinstance(body, dict):
            raise SimError("PARAM_ERROR", "请求体必须是 JSON 对象")
        return body

    def _check_mchid(self, value: Any, location: str = "body") -> None:
        if value != self.mchid:
            raise param_error(
                "/mchid" if location == "body" else "mchid",
                "与 Authorization 中的商户号不一致",
                value,
                location,
            )

    def _native(self, req: Request) -> Response:
        body = self._json_body(req)
        self._validate_native(body)
        no = body["out_trade_no"]
        with self._state:
            order = self._orders.get(no)
            if order is None:
                order = self._new_order(body)
            elif order["request"] != body:
                raise SimError("OUT_TRADE_NO_USED", "商户订单号重复(参数不一致)")
            elif order["trade_state"] in PAID_STATES:
                raise SimError("ORDERPAID", "该订单已支付")
            elif order["trade_state"] == "CLOSED":
                raise SimError("ORDER_CLOSED", "订单已关闭")
            return Response.json({"code_url": order["code_url"]})

    def _validate_native(self, body: dict[str, Any]) -> None:
        if body.get("appid") != self.appid:
            raise SimError("APPID_MCHID_NOT_MATCH", "appid 和 mchid 不匹配")
        self._check_mchid(body.get("mchid"))
        desc = body.get("description")
        if not isinstance(desc, str) or not 1 <= len(desc) <= 127:
            raise param_error("/description", "长度须为 1-127", desc)
        no = body.get("out_trade_no")
        if not isinstance(no, str) or not OUT_TRADE_NO_RE.match(no):
            raise param_error("/out_trade_no", "须为 6-32 位字母、数字、_-*", no)
        self._validate_notify_url(body.get("notify_url"), "/notify_url", required=True)
        self._validate_time_expire(body.get("time_expire"))
        attach = body.get("attach")
        if attach is not None and (not isinstance(attach, str) or len(attach) > 128):
            raise param_error("/attach", "长度不能超过 128", attach)
        self._validate_amount(body.get("amount"), ("total",))

    def _validate_notify_url(self, url: Any, field: str, *, required: bool) -> None:
        if url is None and not required:
            return
        schemes = (
            ("https://",) if self.options.require_https_notify_url else ("https://", "http://")
        )
        if not isinstance(url, str) or not url.startswith(schemes) or "?" in url:
            raise param_error(field, "须为不带参数的 HTTPS 地址", url)

    def _validate_time_expire(self, value: Any) -> None:
        if value is None:
            return
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except (AttributeError, ValueError) as exc:
            raise param_error("/time_expire", "须为 RFC3339 格式", value) from exc
        if moment.tzinfo is None:
            raise param_error("/time_expire", "须带时区", value)

    def _validate_amount(self, amount: Any, keys: tuple[str, ...]) -> None:
        if not isinstance(amount, dict):
            raise param_error("/amount", "缺少 amount", amount)
        for key in keys:
            if not _is_int(amount.get(key)) or amount[key] <= 0:
                raise param_error(f"/amount/{key}", "须为正整数(分)", amount.get(key))
        if amount.get("currency", "CNY") != "CNY":
            raise param_error("/amount/currency", "仅支持 CNY", amount.get("currency"))

    def _new_order(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("time_expire"):
            expires = datetime.fromisoformat(body["time_expire"].replace("Z", "+00:00"))
            if expires <= datetime.now(CST):
                raise param_error("/time_expire", "已早于当前时间", body["time_expire"])
        order = {
            "request": body,
            "out_trade_no": body["out_trade_no"],
            "description": body["description"],
            "notify_url": body["notify_url"],
            "attach": body.get("attach", ""),
            "time_expire": body.get("time_expire"),
            "total": body["amount"]["total"],
            "currency": body["amount"].get("currency", "CNY"),
            "code_url": f"weixin://wxpay/bizpayurl?pr={_alnum(7)}",
            "trade_state": "NOTPAY",
            "transaction_id": None,
            "success_time": None,
            "paid_total": None,
            "refunded": 0,
            "openid": None,
        }
        self._orders[order["out_trade_no"]] = order
        delay = self.options.auto_pay_after_ms
        if delay is not None:
            self._schedule(delay / 1000, self._auto_pay, order["out_trade_no"])
        return order

    def _schedule(self, seconds: float, fn: Callable[..., Any], *args: Any) -> None:
        timer = threading.Timer(seconds, fn, args)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _order_path_no(self, req: Request, prefix: str) -> str:
        return unquote(req.path[len(prefix) :])

    def _query(self, req: Request) -> Response:
        no = self._order_path_no(req, "/v3/pay/transactions/out-trade-no/")
        self._check_mchid(req.query.get("mchid"), "query")
        with self._state:
            order = self._orders.get(no)
            if order is None:
                raise SimError(self.options.not_found_code, "订单不存在")
            return Response.json(self._order_object(order))

    def _query_by_id(self, req: Request) -> Response:
        tid = self._order_path_no(req, "/v3/pay/transactions/id/")
        self._check_mchid(req.query.get("mchid"), "query")
        with self._state:
            for order in self._orders.values():
                if order["transaction_id"] == tid:
                    return Response.json(self._order_object(order))
        raise SimError(self.options.not_found_code, "订单不存在")

    def _close(self, req: Request) -> Response:
        rest = self._order_path_no(req, "/v3/pay/transactions/out-trade-no/")
        if not rest.endswith("/close"):
            raise SimError("INVALID_REQUEST", f"no route POST {req.path}", status=404)
        self._check_mchid(self._json_body(req).get("mchid"))
        with self._state:
            order = self._orders.get(rest[: -len("/close")])
            if order is None:
                raise SimError(self.options.not_found_code, "订单不存在")
            if order["trade_state"] in PAID_STATES:
                raise SimError("ORDERPAID", "订单已支付, 不能关闭")
            order["trade_state"] = "CLOSED"
        return Response(204)

    def _order_object(self, order: dict[str, Any]) -> dict[str, Any]:
        """The order as the query API shows it (payer fields only once paid)."""
        obj: dict[str, Any] = {
            "appid": self.appid,
            "mchid": self.mchid,
            "out_trade_no": order["out_trade_no"],
            "trade_type": "NATIVE",
            "trade_state": order["trade_state"],
            "trade_state_desc": TRADE_STATE_DESC[order["trade_state"]],
            "attach": order["attach"],
            "amount": {"total": order["total"], "currency": order["currency"]},
        }
        if order["transaction_id"]:
            obj.update(
                transaction_id=order["transaction_id"],
                bank_type="OTHERS",
                success_time=order["success_time"],
                payer={"openid": order["openid"]},
            )
            obj["amount"] = {
                "total": order["paid_total"],
                "payer_total": order["paid_total"],
                "currency": order["currency"],
                "payer_currency": order["currency"],
            }
        return obj

    # -- refunds ---------------------------------------------------------------------------------
    def _refund(self, req: Request) -> Response:
        body = self._json_body(req)
        self._validate_refund(body)
        with self._state:
            existing = self._refunds.get(body["out_refund_no"])
            if existing is not None:
                return self._refund_replay(existing, body)
            order = self._refund_order(body)
            refund = self._new_refund(order, body)
        self._after_refund_created(refund)
        return Response.json(self._refund_object(refund))

    def _validate_refund(self, body: dict[str, Any]) -> None:
        if not isinstance(body.get("out_trade_no"), str) and not isinstance(
            body.get("transaction_id"), str
        ):
            raise param_error("/out_trade_no", "out_trade_no 与 transaction_id 须二选一", None)
        no = body.get("out_refund_no")
        if not isinstance(no, str) or not 1 <= len(no) <= 64:
            raise param_error("/out_refund_no", "长度须为 1-64", no)
        reason = body.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 80):
            raise param_error("/reason", "长度不能超过 80", reason)
        self._validate_notify_url(body.get("notify_url"), "/notify_url", required=False)
        self._validate_amount(body.get("amount"), ("refund", "total"))

    def _refund_replay(self, refund: dict[str, Any], body: dict[str, Any]) -> Response:
        """Same out_refund_no: the same refund again (no new money moves), unless the
        parameters differ, which WeChat refuses."""
        if refund["request_key"] != _refund_key(body):
            raise SimError("INVALID_REQUEST", "同一退款单号的请求参数不一致")
        return Response.json(self._refund_object(refund))

    def _refund_order(self, body: dict[str, Any]) -> dict[str, Any]:
        order = self._orders.get(body.get("out_trade_no") or "")
        if order is None and body.get("transaction_id"):
            order = next(
                (o for o in self._orders.values() if o["transaction_id"] == body["transaction_id"]),
                None,
            )
        if order is None:
            raise SimError("RESOURCE_NOT_EXISTS", "订单不存在")
        if order["trade_state"] not in PAID_STATES:
            raise SimError("INVALID_REQUEST", "订单未支付, 不能退款")
        if body["amount"]["total"] != order["paid_total"]:
            raise param_error("/amount/total", "与订单金额不一致", body["amount"]["total"])
        if body["amount"]["refund"] > order["paid_total"] - order["refunded"]:
            raise SimError("NOTENOUGH", "可退款金额不足")
        count = sum(1 for r in self._refunds.values() if r["out_trade_no"] == order["out_trade_no"])
        if count >= MAX_REFUNDS_PER_ORDER:
            raise SimError("INVALID_REQUEST", "部分退款次数已达上限")
        return order

    def _new_refund(self, order: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        instant = self.options.refund_settle_after_ms == 0
        refund = {
            "request_key": _refund_key(body),
            "refund_id": "50" + _digits(27),
            "out_refund_no": body["out_refund_no"],
            "out_trade_no": order["out_trade_no"],
            "transaction_id": order["transaction_id"],
            "amount": body["amount"]["refund"],
            "total": order["paid_total"],
            "currency": order["currency"],
            "notify_url": body.get("notify_url"),
            "create_time": _now_rfc3339(),
            "success_time": _now_rfc3339() if instant else None,
            "status": "SUCCESS" if instant else "PROCESSING",
        }
        order["refunded"] += refund["amount"]
        order["trade_state"] = "REFUND"
        self._refunds[refund["out_refund_no"]] = refund
        return refund

    def _after_refund_created(self, refund: dict[str, Any]) -> None:
        delay = self.options.refund_settle_after_ms
        if delay == 0:
            self._notify_refund(refund)
        elif delay is not None:
            self._schedule(delay / 1000, self.settle_refund, refund["out_refund_no"])

    def _refund_query(self, req: Request) -> Response:
        no = unquote(req.path[len("/v3/refund/domestic/refunds/") :])
        with self._state:
            refund = self._refunds.get(no)
            if refund is None:
                raise SimError("RESOURCE_NOT_EXISTS", "退款单不存在")
            return Response.json(self._refund_object(refund))

    def _refund_amount(self, refund: dict[str, Any]) -> dict[str, Any]:
        return {
            "total": refund["total"],
            "refund": refund["amount"],
            "payer_total": refund["total"],
            "payer_refund": refund["amount"],
        }

    def _refund_object(self, refund: dict[str, Any]) -> dict[str, Any]:
        obj = {
            key: refund[key]
            for key in (
                "refund_id",
                "out_refund_no",
                "transaction_id",
                "out_trade_no",
                "create_time",
                "status",
            )
        }
        obj.update(
            channel="ORIGINAL",
            user_received_account="支付用户零钱",
            funds_account="AVAILABLE",
            amount={
                **self._refund_amount(refund),
                "discount_refund": 0,
                "currency": refund["currency"],
            },
        )
        if refund["success_time"]:
            obj["success_time"] = refund["success_time"]
        return obj

    def _notify_refund(self, refund: dict[str, Any]) -> None:
        resource = {
            "mchid": self.mchid,
            "out_trade_no": refund["out_trade_no"],
            "transaction_id": refund["transaction_id"],
            "out_refund_no": refund["out_refund_no"],
            "refund_id": refund["refund_id"],
            "refund_status": refund["status"],
            "user_received_account": "支付用户零钱",
            "amount": self._refund_amount(refund),
        }
        if refund["success_time"]:
            resource["success_time"] = refund["success_time"]
        summary = {"SUCCESS": "退款成功", "CLOSED": "退款关闭"}.get(refund["status"], "退款异常")
        self._notify(refund["notify_url"], f"REFUND.{refund['status']}", summary, resource)

    # -- control -------------------------------------------------------------------------------
    def pay(self, out_trade_no: str, amount: int | None = None) -> dict[str, Any]:
        """The buyer pays: NOTPAY → SUCCESS, a charge in the ledger, then a TRANSACTION.SUCCESS
        notification to the order's notify_url. ``amount`` (fen) overrides what is recorded as
        paid, to simulate a mismatch. Paying a paid order again changes nothing.
        Raises LookupError (unknown order) or ValueError (closed or expired)."""
        with self._state:
            order = self._orders.get(out_trade_no)
            if order is None:
                raise LookupError(f"no order {out_trade_no!r}")
            if order["trade_state"] in PAID_STATES:
                return self._order_object(order)
            self._check_payable(order)
            self._record_payment(order, order["total"] if amount is None else amount)
            obj = self._order_object(order)
        self._notify(order["notify_url"], "TRANSACTION.SUCCESS", "支付成功", obj)
        return obj

    def _check_payable(self, order: dict[str, Any]) -> None:
        if order["trade_state"] != "NOTPAY":
            raise ValueError(f"order {order['out_trade_no']} is {order['trade_state']}")
        expires = order["time_expire"]
        if expires and datetime.fromisoformat(expires.replace("Z", "+00:00")) < datetime.now(CST):
            raise ValueError(f"order {order['out_trade_no']} expired at {expires}")

    def _record_payment(self, order: dict[str, Any], amount: int) -> None:
        order.update(
            trade_state="SUCCESS",
            transaction_id="4200" + _digits(24),
            success_time=_now_rfc3339(),
            paid_total=amount,
            openid="o" + _alnum(27),
        )
        self._charges.append(
            {
                "out_trade_no": order["out_trade_no"],
                "transaction_id": order["transaction_id"],
                "amount": amount,
                "currency": order["currency"],
                "success_time": order["success_time"],
            }
        )

    def _auto_pay(self, out_trade_no: str) -> None:
        # Closed, expired or reset in the meantime: nothing to pay.
        with contextlib.suppress(LookupError, ValueError):
            self.pay(out_trade_no)

    def settle_refund(self, out_refund_no: str, status: str = "SUCCESS") -> dict[str, Any]:
        """Finish a PROCESSING refund as SUCCESS, CLOSED (money back to the merchant) or
        ABNORMAL, and send the REFUND.* notification. A final refund is left as it is."""
        if status not in ("SUCCESS", "CLOSED", "ABNORMAL"):
            raise ValueError(f"bad refund status {status!r}")
        with self._state:
            refund = self._refunds.get(out_refund_no)
            if refund is None:
                raise LookupError(f"no refund {out_refund_no!r}")
            if refund["status"] != "PROCESSING":
                return self._refund_object(refund)
            refund["status"] = status
            if status == "SUCCESS":
                refund["success_time"] = _now_rfc3339()
            if status == "CLOSED":
                self._orders[refund["out_trade_no"]]["refunded"] -= refund["amount"]
            obj = self._refund_object(refund)
        self._notify_refund(refund)
        return obj

    def dashboard_refund(
        self,
        out_trade_no: str,
        amount: int | None = None,
        *,
        status: str = "SUCCESS",
        notify_url: str | None = None,
    ) -> dict[str, Any]:
        """Someone refunds order ``out_trade_no`` in the merchant platform (商户平台), not
        through the API: a refund whose ``out_refund_no`` WeChat Pay makes up, of ``amount`` fen
        (default: what is left), ``SUCCESS`` at once or ``PROCESSING`` (then
        :meth:`settle_refund`), with the REFUND.* notification sent to ``notify_url`` — by
        default the order's (where a platform refund's notification goes is unconfirmed: the
        documented ``notify_url`` is the refund request's). Raises LookupError (no such order)
        or ValueError (not paid, bad amount or status)."""
        if status not in ("SUCCESS", "PROCESSING"):
            raise ValueError(f"bad refund status {status!r}")
        if amount is not None and (isinstance(amount, bool) or not isinstance(amount, int)):
            raise ValueError(f"amount must be an integer number of fen, not {amount!r}")
        with self._state:
            order = self._orders.get(out_trade_no)
            if order is None:
                raise LookupError(f"no order {out_trade_no!r}")
            if order["trade_state"] not in PAID_STATES:
                raise ValueError(f"order {out_trade_no} is {order['trade_state']}")
            left = order["paid_total"] - order["refunded"]
            amount = left if amount is None else amount
            if not 0 < amount <= left:
                raise ValueError(f"amount {amount} is not between 1 and the refundable {left}")
            body = {
                "out_trade_no": out_trade_no,
                "out_refund_no": "PF" + _digits(26),
                "notify_url": notify_url or order["notify_url"],
                "amount": {"refund": amount, "total": order["paid_total"]},
            }
            refund = self._new_refund(order, body)
            refund["status"] = status
            refund["success_time"] = _now_rfc3339() if status == "SUCCESS" else None
            obj = self._refund_object(refund)
        if status == "SUCCESS":
            self._notify_refund(refund)
        return obj

    def ledger(self) -> dict[str, Any]:
        """Orders (amount and state), charges and refunds, as JSON-ready data."""
        with self._state:
            orders = {
                no: {
                    k: o[k]
                    for k in (
                        "total",
                        "currency",
                        "trade_state",
                        "transaction_id",
                        "paid_total",
                        "refunded",
                        "code_url",
                        "notify_url",
                    )
                }
                for no, o in self._orders.items()
            }
            refunds = [
                {
                    k: r[k]
                    for k in (
                        "out_refund_no",
                        "refund_id",
                        "out_trade_no",
                        "amount",
                        "currency",
                        "status",
                    )
                }
                for r in self._refunds.values()
            ]
            return {"orders": orders, "charges": list(self._charges), "refunds": refunds}

    def _notification_log(self) -> list[dict[str, Any]]:
        with self._state:
            return [{**n, "body": n["body"].decode("utf-8")} for n in self.notifications]

    def _platform_info(self) -> dict[str, str]:
        return {
            "serial": self.platform_serial,
            "public_key_pem": self.platform_public_key_pem.decode("ascii"),
        }

    def _sim_pay(self, payload: dict[str, Any]) -> dict[str, Any]:
        return self.pay(str(payload["out_trade_no"]), payload.get("amount"))

    def _sim_options(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.set_options(**payload)
        return asdict(self.options)

    def _sim_settle(self, payload: dict[str, Any]) -> dict[str, Any]:
        return self.settle_refund(str(payload["out_refund_no"]), payload.get("status", "SUCCESS"))

    def _sim_dashboard_refund(self, payload: dict[str, Any]) -> dict[str, Any]:
        return self.dashboard_refund(
            str(payload["out_trade_no"]), payload.get("amount"),
            status=payload.get("status", "SUCCESS"), notify_url=payload.get("notify_url"),
        )  # fmt: skip

    def _sim_certificates(self, payload: dict[str, Any]) -> dict[str, Any]:
        action, serial = payload.get("action"), payload.get("serial")
        steps = {
            "publish": lambda: self.publish_certificate(),
            "switch": lambda: self.switch_signing(serial),
            "retire": lambda: self.retire_certificate(serial),
        }
        if action not in steps:
            raise ValueError(f"action must be one of {sorted(steps)}, not {action!r}")
        steps[action]()
        return self.certificate_info()

    def _sim_release(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"released": self.release_notifications(reverse=bool(payload.get("reverse")))}


TRADE_STATE_DESC = {
    "NOTPAY": "订单未支付",
    "SUCCESS": "支付成功",
    "REFUND": "转入退款",
    "CLOSED": "订单已关闭",
    "USERPAYING": "用户支付中",
    "REVOKED": "已撤销",
    "PAYERROR": "支付失败",
}


def _refund_key(body: dict[str, Any]) -> tuple[Any, ...]:
    amount = body["amount"]
    return (
        body.get("out_trade_no") or body.get("transaction_id"),
        amount["refund"],
        amount["total"],
        amount.get("currency", "CNY"),
    )


# -- standalone -----------------------------------------------------------------------------------
def _read_secret(path: str | None, env: str) -> bytes | None:
    """A file's bytes, else the environment variable ``env`` (value or ``env_FILE`` path)."""
    if path:
        with open(path, "rb") as fh:
            return fh.read().strip()
    if os.environ.get(env):
        return os.environ[env].encode("utf-8")
    if os.environ.get(env + "_FILE"):
        return _read_secret(os.environ[env + "_FILE"], "")
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="WeChat Pay API v3 simulator")
    parser.add_argument("--port", type=int, default=int(os.environ.get("WECHATPAY_SIM_PORT", 8092)))
    parser.add_argument("--mchid", default=os.environ.get("WECHATPAY_SIM_MCHID", "1900000001"))
    parser.add_argument(
        "--appid", default=os.environ.get("WECHATPAY_SIM_APPID", "wxd678efh567hg6787")
    )
    parser.add_argument(
        "--merchant-serial-no",
        default=os.environ.get("WECHATPAY_SIM_MERCHANT_SERIAL_NO", "SIMMERCHANT01"),
    )
    parser.add_argument(
        "--merchant-public-key",
        metavar="PEM_FILE",
        help="merchant API public key or certificate "
        "(else env WECHATPAY_SIM_MERCHANT_PUBLIC_KEY[_FILE])",
    )
    parser.add_argument(
        "--api-v3-key-file",
        metavar="FILE",
        help="32-byte APIv3 key (else env WECHATPAY_SIM_API_V3_KEY[_FILE])",
    )
    parser.add_argument(
        "--platform-serial", default=os.environ.get("WECHATPAY_SIM_PLATFORM_SERIAL")
    )
    parser.add_argument(
        "--platform-key-out",
        metavar="PEM_FILE",
        help="write the generated platform public key here",
    )
    parser.add_argument(
        "--key-mode",
        choices=KEY_MODES,
        default=os.environ.get("WECHATPAY_SIM_KEY_MODE", "public_key"),
        help="public_key: one PUB_KEY_ID_ key; platform_certificate: /v3/certificates",
    )
    parser.add_argument("--auto-pay-after-ms", type=int, default=None)
    args = parser.parse_args(argv)
    merchant_pem = _read_secret(args.merchant_public_key, "WECHATPAY_SIM_MERCHANT_PUBLIC_KEY")
    api_key = _read_secret(args.api_v3_key_file, "WECHATPAY_SIM_API_V3_KEY")
    if merchant_pem is None or api_key is None:
        parser.error("merchant public key and APIv3 key are required (files or environment)")
    sim = WeChatPaySimulator(
        mchid=args.mchid,
        appid=args.appid,
        merchant_serial_no=args.merchant_serial_no,
        merchant_public_key_pem=merchant_pem,
        api_v3_key=api_key,
        port=args.port,
        platform_serial=args.platform_serial,
        key_mode=args.key_mode,
        auto_pay_after_ms=args.auto_pay_after_ms,
    )
    if args.platform_key_out:
        with open(args.platform_key_out, "wb") as fh:
            fh.write(sim.platform_public_key_pem)
    print(f"platform serial {sim.platform_serial}", flush=True)
    serve_forever(sim)  # stop() cancels timers and stops the notifier too


if __name__ == "__main__":
    main()
