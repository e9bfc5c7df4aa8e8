"""Alipay Open Platform (RSA2) simulator: ``/gateway.do`` for QR-code trades, refunds and notifies.

An independent peer of ``adapters/payments/alipay.py``, written from the protocol notes and
importing nothing from ``adapters/``, ``services/`` or ``domain/``: signing and amount handling
are reimplemented here on purpose, so a misreading in the adapter cannot hide behind shared code.

What it emulates:

* request checks: ``app_id`` (``isv.invalid-app-id``), RSA2 signature over every parameter but
  ``sign`` — ``sign_type`` included (``isv.invalid-signature``), Beijing ``timestamp``; gateway
  failures are unsigned ``error_response`` envelopes;
* ``alipay.trade.precreate`` / ``query`` / ``close`` / ``refund`` / ``fastpay.refund.query``,
  with ``out_trade_no`` replay rules (same params → same ``qr_code``; different →
  ``ACQ.CONTEXT_INCONSISTENT``; after payment → ``ACQ.TRADE_HAS_SUCCESS``) and ``out_request_no``
  refund idempotency (replay → ``fund_change=N``);
* a precreated trade is invisible (``ACQ.TRADE_NOT_EXIST``) until the buyer scans, unless
  ``visible_before_scan`` (this behaviour is unconfirmed, hence the flag);
* every response signed over the exact ``…_response`` JSON text emitted (``response_sign`` can
  corrupt, drop or invalidate that signature for tests);
* ``trade_status_sync`` notifications, form-encoded, signed without ``sign``/``sign_type``,
  retried until the body is exactly ``success`` (duplicates, delays, jitter and hold/release for
  out-of-order delivery are configurable);
* ``alipay.data.dataservice.bill.downloadurl.query`` and the daily bills' ZIP download, built
  from these trades and refunds (:mod:`simulators.alipay_bills`, controlled by ``/_sim/bills``).

Control: :meth:`AlipaySimulator.pay`, :meth:`scan`, :meth:`dashboard_refund`, :meth:`configure`,
:meth:`release_notifications`, :meth:`ledger`, and over HTTP ``POST /_sim/pay``, ``/_sim/scan``,
``/_sim/dashboard_refund`` (``{"out_trade_no", "amount"?}``, yuan), ``/_sim/options``,
``/_sim/notifications/release``, ``GET /_sim/ledger``,
``/_sim/alipay_public_key``. Harness faults (5xx, timeouts, resets, ``business_error``) apply.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import copy
import json
import random
import re
import secrets
import threading
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from simulators.alipay_bills import BillDesk, BillError
from simulators.harness import Notifier, Request, Response, SimulatorServer, serve_forever

__all__ = ["AlipaySimulator", "SimulatorError"]

BEIJING = timezone(timedelta(hours=8))
TS_FORMAT = "%Y-%m-%d %H:%M:%S"
_AMOUNT_RE = re.compile(r"^(0|[1-9]\d{0,8})(\.\d{1,2})?$")
_MAX_FEN = 100_000_000_00  # Alipay's single-trade ceiling: 100,000,000.00 yuan
_UNAVAILABLE_SUB_CODES = ("isp.unknow-error", "aop.unknow-error")


class SimulatorError(Exception):
    """A control-plane request the simulated state cannot honour (e.g. paying a closed trade)."""


class _BizError(Exception):
    """A signed ``…_response`` failure (code 40004 business failure, or 20000)."""

    def __init__(self, sub_code: str, sub_msg: str, code: str = "40004") -> None:
        super().__init__(sub_code)
        self.body = {
            "code": code,
            "msg": "Business Failed" if code == "40004" else "Service Currently Unavailable",
            "sub_code": sub_code,
            "sub_msg": sub_msg,
        }


class _GatewayError(Exception):
    """An unsigned ``error_response`` (missing / invalid common arguments)."""

    def __init__(self, code: str, sub_code: str, sub_msg: str) -> None:
        super().__init__(sub_code)
        msg = "Missing Required Arguments" if code == "40001" else "Invalid Arguments"
        self.body = {"code": code, "msg": msg, "sub_code": sub_code, "sub_msg": sub_msg}


# -- helpers -------------------------------------------------------------------------------------
def _now() -> datetime:
    return datetime.now(BEIJING)


def _ts(moment: datetime | None = None) -> str:
    return (moment or _now()).astimezone(BEIJING).strftime(TS_FORMAT)


def _fen(text: object, field_name: str) -> int:
    """Parse a yuan string ("12.34") into fen, refusing floats-in-disguise and junk."""
    if not isinstance(text, str) or not _AMOUNT_RE.match(text):
        raise _BizError("ACQ.INVALID_PARAMETER", f"{field_name} 格式错误: {text!r}")
    fen = int(Decimal(text) * 100)
    if not 1 <= fen <= _MAX_FEN:
        raise _BizError("ACQ.INVALID_PARAMETER", f"{field_name} 超出范围: {text}")
    return fen


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def _content(params: dict[str, str], exclude: tuple[str, ...], drop_empty: bool) -> str:
    """Alipay's string-to-sign: sorted ``k=v`` joined by ``&``, raw (un-encoded) values."""
    keys = sorted(k for k, v in params.items() if k not in exclude and (v or not drop_empty))
    return "&".join(f"{k}={params[k]}" for k in keys)


def _sign(key: rsa.RSAPrivateKey, content: str) -> str:
    raw = key.sign(content.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(raw).decode("ascii")


def _verify(key: rsa.RSAPublicKey, content: str, sign: str) -> bool:
    try:
        key.verify(
            base64.b64decode(sign, validate=True),
            content.encode("utf-8"),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def _parse_expiry(biz: dict[str, Any], now: datetime) -> datetime | None:
    """``time_expire`` (absolute, Beijing) or ``timeout_express`` (``90m``/``2h``/``1d``)."""
    if biz.get("time_expire"):
        try:
            return datetime.strptime(str(biz["time_expire"]), TS_FORMAT).replace(tzinfo=BEIJING)
        except ValueError as exc:
            raise _BizError("ACQ.INVALID_PARAMETER", "time_expire 格式错误") from exc
    express = str(biz.get("timeout_express") or "")
    match = re.fullmatch(r"(\d+)([mhd])", express)
    if not express:
        return None
    if not match:
        raise _BizError("ACQ.INVALID_PARAMETER", "timeout_express 格式错误")
    unit = {"m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return now + timedelta(seconds=int(match.group(1)) * unit)


# -- state ---------------------------------------------------------------------------------------
@dataclass
class Trade:
    out_trade_no: str
    trade_no: str
    total_fen: int
    subject: str
    notify_url: str | None
    qr_code: str
    seller_id: str
    gmt_create: str
    time_expire: datetime | None
    status: str = "WAIT_BUYER_PAY"
    scanned: bool = False
    qr_dead: bool = False  # closed before any scan: the code can no longer be paid
    paid_fen: int = 0
    refunded_fen: int = 0
    paid_at: str | None = None
    closed_at: str | None = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "out_trade_no": self.out_trade_no,
            "trade_no": self.trade_no,
            "status": self.status,
            "total_amount": _yuan(self.total_fen),
            "paid_amount": _yuan(self.paid_fen),
            "refunded_amount": _yuan(self.refunded_fen),
            "subject": self.subject,
            "scanned": self.scanned,
            "paid_at": self.paid_at,
            "closed_at": self.closed_at,
            "notify_url": self.notify_url,
            "qr_code": self.qr_code,
        }


@dataclass
class Refund:
    out_trade_no: str
    trade_no: str
    out_request_no: str
    amount: str
    reason: str
    gmt_refund_pay: str


@dataclass
class Options:
    """Behaviour switches; every field can be set with :meth:`AlipaySimulator.configure`."""

    visible_before_scan: bool = False  # query/close/refund see a trade before the buyer scans
    auto_pay_after_ms: int | None = None  # buyer pays N ms after precreate; None = never
    response_sign: str = "valid"  # valid | corrupt | missing | tamper (content changed after)
    close_paid_sub_code: str = "ACQ.TRADE_STATUS_ERROR"  # unconfirmed in the docs, so a knob
    qr_survives_close: bool = False  # a close before scan leaves the QR payable (race testing)
    honour_time_expire: bool = True  # False: a trade stays payable past time_expire (clock skew)
    timestamp_tolerance_s: float | None = 900.0  # None disables the request timestamp check
    notify_copies: int = 1  # duplicates of each notification (same notify_id)
    notify_delay: float = 0.0  # seconds before the first delivery
    notify_jitter: float = 0.0  # each copy gets a random extra delay up to this: reordering
    notify_hold: bool = False  # queue notifications until release_notifications()


# -- the simulator -------------------------------------------------------------------------------
class AlipaySimulator(SimulatorServer):
    """An Alipay gateway on 127.0.0.1. ``alipay_public_key_pem`` verifies what it signs."""

    def __init__(
        self,
        app_id: str,
        app_public_key_pem: bytes,
        *,
        port: int = 0,
        seller_id: str = "2088000000000001",
        notify_retry_delays: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0),
        **options: Any,
    ) -> None:
        super().__init__("alipay", port=port, error_response=self._bad_gateway)
        self.app_id = app_id
        self.seller_id = seller_id
        app_key = serialization.load_pem_public_key(app_public_key_pem)
        if not isinstance(app_key, rsa.RSAPublicKey):
            raise ValueError("the app public key must be RSA")
        self._app_key = app_key
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.alipay_public_key_pem = self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self._initial_options = Options(**options)
        self.options = copy.copy(self._initial_options)
        self._state = threading.RLock()
        self._jitter_rng = random.Random()  # notify jitter; the harness's _rng draws faults
        self._timers: list[threading.Timer] = []
        self._clear_state()
        self.bills = BillDesk(self._state, self._bill_ledger, seller_id, lambda: self.url)
        self.notifier = Notifier(
            is_ack=lambda resp: resp.content == b"success", retry_delays=notify_retry_delays
        )
        self._register_routes()

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def gateway_url(self) -> str:
        return f"{self.url}/gateway.do"

    def start(self) -> AlipaySimulator:
        super().start()
        return self

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self.notifier.stop()
        super().stop()

    def __enter__(self) -> AlipaySimulator:
        return self.start()

    def configure(self, **changes: Any) -> None:
        """Change :class:`Options` fields at run time."""
        unknown = set(changes) - set(asdict(self.options))
        if unknown:
            raise ValueError(f"unknown options: {sorted(unknown)}")
        with self._state:
            for key, value in changes.items():
                setattr(self.options, key, value)

    def reset_state(self) -> None:
        """Forget trades, refunds, notifications and option changes (``POST /_sim/reset``)."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self.notifier.deliveries.clear()
        self._clear_state()

    def _clear_state(self) -> None:
        with self._state:
            self.trades: dict[str, Trade] = {}
            self.charges: list[dict[str, Any]] = []
            self.refunds: dict[tuple[str, str], Refund] = {}
            self.notifications: list[dict[str, Any]] = []
            self._held: list[tuple[str, bytes]] = []
            self.options = copy.copy(self._initial_options)

    # -- control -----------------------------------------------------------------------------
    def ledger(self) -> dict[str, Any]:
        """Trades (by out_trade_no), charges, refunds and notifications, as plain JSON data."""
        with self._state:
            return {
                "trades": {k: t.snapshot() for k, t in self.trades.items()},
                "charges": [dict(c) for c in self.charges],
                "refunds": [asdict(r) for r in self.refunds.values()],
                "notifications": [dict(n) for n in self.notifications],
                "deliveries": [list(d) for d in self.notifier.deliveries],
            }

    def scan(self, out_trade_no: str) -> dict[str, Any]:
        """The buyer scans the QR code: the trade becomes visible (WAIT_BUYER_PAY)."""
        with self._state:
            trade = self._payable(out_trade_no)
            trade.scanned = True
            return trade.snapshot()

    def pay(self, out_trade_no: str, amount: str | None = None) -> dict[str, Any]:
        """The buyer pays: TRADE_SUCCESS, a charge, and an async notify to the trade's notify_url.

        ``amount`` (yuan string) makes Alipay report a different paid ``total_amount`` — for
        testing that the merchant checks it. Paying a paid trade again changes nothing.
        """
        with self._state:
            trade = self.trades.get(out_trade_no)
            if trade is not None and trade.paid_at is not None:
                return trade.snapshot()
            trade = self._payable(out_trade_no)
            try:
                paid_fen = _fen(amount, "amount") if amount is not None else trade.total_fen
            except _BizError as exc:
                raise SimulatorError(f"bad amount {amount!r}") from exc
            trade.scanned, trade.status, trade.paid_fen = True, "TRADE_SUCCESS", paid_fen
            trade.paid_at, trade.closed_at = _ts(), None
            charge = {"out_trade_no": out_trade_no, "trade_no": trade.trade_no}
            self.charges.append({**charge, "amount": _yuan(paid_fen), "paid_at": trade.paid_at})
            self._notify(trade, {})
            return trade.snapshot()

    def dashboard_refund(self, out_trade_no: str, amount: str | None = None) -> dict[str, Any]:
        """Someone refunds the trade in the merchant console (商家平台), not through the API:
        ``amount`` yuan (default: what is left) goes back under an ``out_request_no`` Alipay makes
        up, and the trade's notify_url gets the ``trade_status_sync`` notify with that number in
        ``out_biz_no`` and the cumulative ``refund_fee``, as for an API refund. Returns the refund.
        """
        with self._state:
            trade = self.trades.get(out_trade_no)
            if trade is None or trade.paid_at is None or trade.status != "TRADE_SUCCESS":
                raise SimulatorError(f"trade {out_trade_no!r} cannot be refunded")
            left = trade.paid_fen - trade.refunded_fen
            try:
                fen = _fen(amount, "amount") if amount is not None else left
            except _BizError as exc:
                raise SimulatorError(f"bad amount {amount!r}") from exc
            if not 0 < fen <= left:
                raise SimulatorError(
                    f"amount {_yuan(fen)} is not within the refundable {_yuan(left)}"
                )
            refund = Refund(
                out_trade_no=trade.out_trade_no,
                trade_no=trade.trade_no,
                out_request_no="HZ" + uuid.uuid4().hex[:22].upper(),
                amount=_yuan(fen),
                reason="商家平台退款",
                gmt_refund_pay=_ts(),
            )
            self._record_refund(trade, refund, fen)
            return asdict(refund)

    def _record_refund(self, trade: Trade, refund: Refund, fen: int) -> None:
        """Book ``refund`` on ``trade`` (closing it when fully refunded) and notify."""
        self.refunds[(trade.out_trade_no, refund.out_request_no)] = refund
        trade.refunded_fen += fen
        if trade.refunded_fen == trade.paid_fen:
            trade.status, trade.closed_at = "TRADE_CLOSED", refund.gmt_refund_pay
        self._notify(trade, self._refund_notify_fields(trade, refund))

    def _payable(self, out_trade_no: str) -> Trade:
        trade = self.trades.get(out_trade_no)
        if trade is None:
            raise SimulatorError(f"no trade {out_trade_no!r}")
        self._expire(trade)
        if trade.qr_dead or trade.status != "WAIT_BUYER_PAY":
            raise SimulatorError(f"trade {out_trade_no!r} is {trade.status}, cannot be paid")
        return trade

    def release_notifications(self, reverse: bool = True, spacing: float = 0.05) -> int:
        """Send notifications held by ``notify_hold``, newest first by default, ``spacing``
        seconds apart (the notifier delivers due items concurrently, so order needs a gap).
        Returns how many were released."""
        with self._state:
            held, self._held = self._held, []
        for i, (url, body) in enumerate(reversed(held) if reverse else held):
            self._dispatch(url, body, extra_delay=i * spacing)
        return len(held)

    def sign_notification(self, params: dict[str, str]) -> bytes:
        """A form body for ``params`` signed the way Alipay signs notifies (tests forge with it)."""
        signed = {k: v for k, v in params.items() if k not in ("sign", "sign_type")}
        signed["sign"] = _sign(self._key, _content(signed, ("sign", "sign_type"), False))
        signed["sign_type"] = "RSA2"
        return urlencode(signed).encode("utf-8")

    # -- notifications -----------------------------------------------------------------------
    def _notify(self, trade: Trade, extra: dict[str, str]) -> None:
        """Build and send one trade_status_sync notify (caller holds the lock)."""
        if not trade.notify_url:
            return
        params = {
            "notify_time": _ts(),
            "notify_type": "trade_status_sync",
            "notify_id": uuid.uuid4().hex,
            "app_id": self.app_id,
            "charset": "utf-8",
            "version": "1.0",
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
            "buyer_id": "2088102122524333",
            "buyer_logon_id": "159****5620",
            "seller_id": trade.seller_id,
            "seller_email": "merchant@example.com",
            "trade_status": trade.status,
            "total_amount": _yuan(trade.paid_fen),
            "receipt_amount": _yuan(trade.paid_fen),
            "invoice_amount": _yuan(trade.paid_fen),
            "buyer_pay_amount": _yuan(trade.paid_fen),
            "point_amount": "0.00",
            "subject": trade.subject,
            "gmt_create": trade.gmt_create,
            "gmt_payment": trade.paid_at or "",
            "fund_bill_list": json.dumps(
                [{"amount": _yuan(trade.paid_fen), "fundChannel": "ALIPAYACCOUNT"}],
                separators=(",", ":"),
            ),
            **extra,
        }
        body = self.sign_notification({k: v for k, v in params.items() if v})
        record = {"notify_id": params["notify_id"], "out_trade_no": trade.out_trade_no}
        self.notifications.append(
            {**record, "trade_status": trade.status, "url": trade.notify_url, "body": body.decode()}
        )
        if self.options.notify_hold:
            self._held.append((trade.notify_url, body))
        else:
            self._dispatch(trade.notify_url, body)

    def _dispatch(self, url: str, body: bytes, extra_delay: float = 0.0) -> None:
        headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
        opts = self.options
        for _ in range(max(1, opts.notify_copies)):
            delay = (
                extra_delay + opts.notify_delay + self._jitter_rng.uniform(0, opts.notify_jitter)
            )
            self.notifier.send(url, body, headers, delay=delay)

    # -- HTTP --------------------------------------------------------------------------------
    def _register_routes(self) -> None:
        self.route("POST", "/gateway.do", self._gateway)
        self.route("GET", "/gateway.do", self._gateway)
        self.ledger_provider = self.ledger
        self.reset_hooks.append(self.reset_state)
        self.route("POST", "/_sim/pay", self._http_control(self.pay, "out_trade_no", "amount"))
        self.route("POST", "/_sim/scan", self._http_control(self.scan, "out_trade_no"))
        self.route(
            "POST",
            "/_sim/dashboard_refund",
            self._http_control(self.dashboard_refund, "out_trade_no", "amount"),
        )
        self.route("POST", "/_sim/options", self._http_options)
        self.route("POST", "/_sim/notifications/release", self._http_release)
        self.route("GET", "/_sim/alipay_public_key", self._http_public_key)
        self.route("GET", "/downloadBillFile.resource", self.bills.download)
        self.route("POST", "/_sim/bills", self.bills.control)
        self.reset_hooks.append(self.bills.reset)

    def _http_control(self, action: Any, *names: str) -> Any:
        def handler(req: Request) -> Response:
            args = req.json() or {}
            try:
                return Response.json(action(**{n: args[n] for n in names if n in args}))
            except SimulatorError as exc:
                return Response.json({"error": str(exc)}, 409)
            except TypeError as exc:
                return Response.json({"error": str(exc)}, 400)

        return handler

    def _http_options(self, req: Request) -> Response:
        try:
            self.configure(**(req.json() or {}))
        except ValueError as exc:
            return Response.json({"error": str(exc)}, 400)
        return Response.json(asdict(self.options))

    def _http_release(self, req: Request) -> Response:
        args = req.json() or {}
        released = self.release_notifications(
            bool(args.get("reverse", True)), float(args.get("spacing", 0.05))
        )
        return Response.json({"released": released})

    def _http_public_key(self, _req: Request) -> Response:
        return Response(200, self.alipay_public_key_pem, {"Content-Type": "application/x-pem-file"})

    @staticmethod
    def _bad_gateway(_req: Request) -> Response:
        return Response(
            502, b"<html><body>502 Bad Gateway</body></html>", {"Content-Type": "text/html"}
        )

    def _gateway(self, req: Request) -> Response:
        params = req.form()
        method = params.get("method", "")
        try:
            handler = self._check_request(params)
            self._raise_business_fault()
            biz = self._biz(params)
            with self._state:
                body = handler(biz, params)
        except _GatewayError as exc:
            return Response.json({"error_response": exc.body})
        except _BizError as exc:
            return self._signed(method, exc.body)
        return self._signed(method, {"code": "10000", "msg": "Success", **body})

    def _check_request(self, params: dict[str, str]) -> Any:
        """Gateway checks, in Alipay's order; returns the method handler."""
        handlers = {
            "alipay.trade.precreate": self._precreate,
            "alipay.trade.query": self._query,
            "alipay.trade.close": self._close,
            "alipay.trade.refund": self._refund,
            "alipay.trade.fastpay.refund.query": self._refund_query,
            "alipay.data.dataservice.bill.downloadurl.query": self._bill_query,
        }
        method = params.get("method")
        if not method:
            raise _GatewayError("40001", "isv.missing-method", "缺少方法名参数")
        if method not in handlers:
            raise _GatewayError("40002", "isv.invalid-method", f"不存在的方法名: {method}")
        if not params.get("app_id"):
            raise _GatewayError("40001", "isv.missing-app-id", "缺少AppID参数")
        if params["app_id"] != self.app_id:
            raise _GatewayError("40002", "isv.invalid-app-id", "无效的AppID参数")
        if not params.get("sign"):
            raise _GatewayError("40001", "isv.missing-signature", "缺少签名参数")
        if params.get("sign_type") != "RSA2":
            raise _GatewayError("40002", "isv.invalid-signature-type", "无效的签名类型")
        self._check_timestamp(params.get("timestamp", ""))
        # Requests are signed over everything but ``sign``: sign_type is part of the content.
        content = _content(params, ("sign",), drop_empty=True)
        if not _verify(self._app_key, content, params["sign"]):
            raise _GatewayError("40002", "isv.invalid-signature", "验签出错")
        return handlers[method]

    def _check_timestamp(self, text: str) -> None:
        tolerance = self.options.timestamp_tolerance_s
        try:
            sent = datetime.strptime(text, TS_FORMAT).replace(tzinfo=BEIJING)
        except ValueError as exc:
            raise _GatewayError("40002", "isv.invalid-timestamp", "非法的时间戳参数") from exc
        if tolerance is not None and abs((_now() - sent).total_seconds()) > tolerance:
            raise _GatewayError("40002", "isv.invalid-timestamp", "时间戳超出允许范围")

    def _raise_business_fault(self) -> None:
        sub_code = self.faults.business_error
        if not sub_code:
            return
        if sub_code in _UNAVAILABLE_SUB_CODES:
            raise _BizError(sub_code, "服务暂不可用", code="20000")
        raise _BizError(sub_code, "模拟业务错误")

    @staticmethod
    def _biz(params: dict[str, str]) -> dict[str, Any]:
        try:
            biz = json.loads(params.get("biz_content") or "{}")
        except ValueError as exc:
            raise _BizError("ACQ.INVALID_PARAMETER", "biz_content 不是合法的JSON") from exc
        if not isinstance(biz, dict):
            raise _BizError("ACQ.INVALID_PARAMETER", "biz_content 必须是JSON对象")
        return biz

    def _signed(self, method: str, body: dict[str, Any]) -> Response:
        """Emit ``{"<method>_response":{…},"sign":"…"}`` signed over the exact inner text."""
        key = method.replace(".", "_") + "_response"
        inner = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        sign = _sign(self._key, inner)
        mode = self.options.response_sign
        if mode == "corrupt":
            raw = bytearray(base64.b64decode(sign))
            raw[len(raw) // 2] ^= 0x01
            sign = base64.b64encode(bytes(raw)).decode("ascii")
        elif mode == "tamper":
            # Change the content after signing: the amount if there is one, else the message.
            field_name = "total_amount" if "total_amount" in body else "msg"
            tampered = {**body, field_name: "0.01" if field_name == "total_amount" else "Tampered"}
            inner = json.dumps(tampered, ensure_ascii=False, separators=(",", ":"))
        text = f'{{"{key}":{inner}' + ("" if mode == "missing" else f',"sign":"{sign}"') + "}"
        return Response(200, text.encode("utf-8"), {"Content-Type": "text/html;charset=utf-8"})

    # -- trade lookup ------------------------------------------------------------------------
    def _expire(self, trade: Trade) -> None:
        """Unpaid trades past ``time_expire`` close themselves, as Alipay's timeout does."""
        if not self.options.honour_time_expire:
            return
        if trade.status == "WAIT_BUYER_PAY" and trade.time_expire and _now() > trade.time_expire:
            trade.status, trade.closed_at = "TRADE_CLOSED", _ts()

    def _find_trade(self, biz: dict[str, Any]) -> Trade | None:
        out_trade_no, trade_no = biz.get("out_trade_no"), biz.get("trade_no")
        if not out_trade_no and not trade_no:
            raise _BizError("ACQ.INVALID_PARAMETER", "out_trade_no 和 trade_no 不能同时为空")
        trade = self.trades.get(str(out_trade_no)) if out_trade_no else None
        if trade is None and trade_no:
            trade = next((t for t in self.trades.values() if t.trade_no == trade_no), None)
        if trade is None or (trade_no and trade.trade_no != trade_no):
            return None
        self._expire(trade)
        return trade

    def _visible(self, biz: dict[str, Any]) -> Trade:
        """The trade as Alipay shows it: not there until scanned (unless visible_before_scan)."""
        trade = self._find_trade(biz)
        if trade is None or not (trade.scanned or self.options.visible_before_scan):
            raise _BizError("ACQ.TRADE_NOT_EXIST", "交易不存在")
        return trade

    # -- methods -----------------------------------------------------------------------------
    def _precreate(self, biz: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
        out_trade_no = str(biz.get("out_trade_no") or "")
        if not out_trade_no or len(out_trade_no) > 64:
            raise _BizError("ACQ.INVALID_PARAMETER", "out_trade_no 不合法")
        total_fen = _fen(biz.get("total_amount"), "total_amount")
        subject = str(biz.get("subject") or "")
        if not subject:
            raise _BizError("ACQ.INVALID_PARAMETER", "subject 不能为空")
        existing = self.trades.get(out_trade_no)
        if existing is not None:
            return self._precreate_replay(existing, total_fen, subject)
        now = _now()
        trade = Trade(
            out_trade_no=out_trade_no,
            trade_no=now.strftime("%Y%m%d")
            + "".join(secrets.choice("0123456789") for _ in range(20)),
            total_fen=total_fen,
            subject=subject,
            notify_url=params.get("notify_url") or None,
            qr_code=f"https://qr.alipay.com/bax{secrets.token_hex(10)}",
            seller_id=str(biz.get("seller_id") or self.seller_id),
            gmt_create=_ts(now),
            time_expire=_parse_expiry(biz, now),
        )
        self.trades[out_trade_no] = trade
        self._schedule_auto_pay(out_trade_no)
        return {"out_trade_no": out_trade_no, "qr_code": trade.qr_code}

    def _precreate_replay(self, trade: Trade, total_fen: int, subject: str) -> dict[str, Any]:
        if trade.paid_at is not None:
            raise _BizError("ACQ.TRADE_HAS_SUCCESS", "交易已被支付")
        if trade.status == "TRADE_CLOSED":
            raise _BizError("ACQ.TRADE_HAS_CLOSE", "交易已经关闭")
        if (trade.total_fen, trade.subject) != (total_fen, subject):
            raise _BizError("ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改")
        return {"out_trade_no": trade.out_trade_no, "qr_code": trade.qr_code}

    def _schedule_auto_pay(self, out_trade_no: str) -> None:
        delay_ms = self.options.auto_pay_after_ms
        if delay_ms is None:
            return

        def fire() -> None:
            # Closed or expired meanwhile: the buyer was simply too late.
            with contextlib.suppress(SimulatorError):
                self.pay(out_trade_no)

        timer = threading.Timer(delay_ms / 1000, fire)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _query(self, biz: dict[str, Any], _params: dict[str, str]) -> dict[str, Any]:
        trade = self._visible(biz)
        body: dict[str, Any] = {
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
            "buyer_logon_id": "159****5620" if trade.scanned else "",
            "trade_status": trade.status,
            "total_amount": _yuan(trade.paid_fen if trade.paid_at else trade.total_fen),
            "buyer_pay_amount": _yuan(trade.paid_fen),
            "receipt_amount": _yuan(trade.paid_fen),
            "buyer_user_id": "2088102122524333" if trade.scanned else "",
        }
        if trade.paid_at:
            body["send_pay_date"] = trade.paid_at
        return {k: v for k, v in body.items() if v != ""}

    def _close(self, biz: dict[str, Any], _params: dict[str, str]) -> dict[str, Any]:
        trade = self._find_trade(biz)
        if trade is None:
            raise _BizError("ACQ.TRADE_NOT_EXIST", "交易不存在")
        if not trade.scanned and not self.options.visible_before_scan:
            # Alipay has no trade yet; we remember the close so the QR cannot be paid later.
            if not self.options.qr_survives_close and trade.status == "WAIT_BUYER_PAY":
                trade.qr_dead, trade.status, trade.closed_at = True, "TRADE_CLOSED", _ts()
            raise _BizError("ACQ.TRADE_NOT_EXIST", "交易不存在")
        if trade.paid_at is not None:
            raise _BizError(self.options.close_paid_sub_code, "交易状态不合法")
        if trade.status == "WAIT_BUYER_PAY":
            trade.status, trade.closed_at = "TRADE_CLOSED", _ts()
        return {"trade_no": trade.trade_no, "out_trade_no": trade.out_trade_no}

    def _refund(self, biz: dict[str, Any], _params: dict[str, str]) -> dict[str, Any]:
        trade = self._visible(biz)
        if trade.paid_at is None:
            raise _BizError("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
        request_no = str(biz.get("out_request_no") or trade.out_trade_no)
        amount_fen = _fen(biz.get("refund_amount"), "refund_amount")
        replay = self.refunds.get((trade.out_trade_no, request_no))
        if replay is not None:
            return self._refund_body(trade, "N", replay.gmt_refund_pay)
        if trade.status == "TRADE_CLOSED":
            raise _BizError("ACQ.TRADE_HAS_CLOSE", "交易已经关闭")
        if amount_fen > trade.paid_fen - trade.refunded_fen:
            raise _BizError("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限")
        refund = Refund(
            out_trade_no=trade.out_trade_no,
            trade_no=trade.trade_no,
            out_request_no=request_no,
            amount=_yuan(amount_fen),
            reason=str(biz.get("refund_reason") or ""),
            gmt_refund_pay=_ts(),
        )
        self._record_refund(trade, refund, amount_fen)
        return self._refund_body(trade, "Y", refund.gmt_refund_pay, send_back=refund.amount)

    @staticmethod
    def _refund_notify_fields(trade: Trade, refund: Refund) -> dict[str, str]:
        fields = {
            "out_biz_no": refund.out_request_no,
            "refund_fee": _yuan(trade.refunded_fen),  # cumulative, as Alipay reports it
            "gmt_refund": refund.gmt_refund_pay + ".000",
        }
        if trade.closed_at:
            fields["gmt_close"] = trade.closed_at
        return fields

    @staticmethod
    def _refund_body(
        trade: Trade, fund_change: str, gmt: str, send_back: str | None = None
    ) -> dict[str, Any]:
        body = {
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
            "buyer_logon_id": "159****5620",
            "fund_change": fund_change,
            "refund_fee": _yuan(trade.refunded_fen),
            "gmt_refund_pay": gmt,
            "buyer_user_id": "2088102122524333",
        }
        if send_back is not None:
            body["send_back_fee"] = send_back
        return body

    def _refund_query(self, biz: dict[str, Any], _params: dict[str, str]) -> dict[str, Any]:
        trade = self._visible(biz)
        request_no = str(biz.get("out_request_no") or "")
        if not request_no:
            raise _BizError("ACQ.INVALID_PARAMETER", "out_request_no 不能为空")
        refund = self.refunds.get((trade.out_trade_no, request_no))
        if refund is None:
            return {}  # Alipay answers success with no refund fields for an unknown refund
        return {
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
            "out_request_no": request_no,
            "total_amount": _yuan(trade.paid_fen),
            "refund_amount": refund.amount,
            "refund_status": "REFUND_SUCCESS",
            "gmt_refund_pay": refund.gmt_refund_pay,
        }

    def _bill_query(self, biz: dict[str, Any], _params: dict[str, str]) -> dict[str, Any]:
        try:
            return self.bills.query(biz)
        except BillError as exc:
            raise _BizError(exc.sub_code, exc.sub_msg) from exc

    def _bill_ledger(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Trades and refunds as plain data, for the bills (caller holds the lock)."""
        return [asdict(t) for t in self.trades.values()], [asdict(r) for r in self.refunds.values()]


# -- standalone ----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Alipay Open Platform simulator")
    parser.add_argument("--port", type=int, default=8601)
    parser.add_argument("--app-id", default="2021000000000000")
    parser.add_argument("--app-public-key-file", type=Path, required=True)
    parser.add_argument(
        "--alipay-public-key-out", type=Path, help="write the simulator's public key PEM here"
    )
    parser.add_argument("--visible-before-scan", action="store_true")
    parser.add_argument("--auto-pay-after-ms", type=int, default=None)
    args = parser.parse_args(argv)
    sim = AlipaySimulator(
        args.app_id,
        args.app_public_key_file.read_bytes(),
        port=args.port,
        visible_before_scan=args.visible_before_scan,
        auto_pay_after_ms=args.auto_pay_after_ms,
    )
    if args.alipay_public_key_out:
        args.alipay_public_key_out.write_bytes(sim.alipay_public_key_pem)
    print(f"alipay public key: {sim.url}/_sim/alipay_public_key", flush=True)
    serve_forever(sim)  # stop() cancels timers and stops the notifier too


if __name__ == "__main__":
    main()
