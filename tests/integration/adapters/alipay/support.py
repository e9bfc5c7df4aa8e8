"""Helpers shared by the Alipay adapter tests: generated RSA keys, provider construction, a
merchant notify endpoint and request builders."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters.payments.alipay import AlipayConfig, AlipayProvider
from adapters.payments.base import (
    CreatePayment,
    Notification,
    PaymentRef,
    RefundRequest,
    SignatureInvalid,
)
from domain.money import Money
from simulators.alipay import AlipaySimulator

APP_ID = "2021000123456789"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def make_provider(
    sim: AlipaySimulator, app_key: rsa.RSAPrivateKey, *, app_id: str = APP_ID
) -> AlipayProvider:
    config = AlipayConfig(
        gateway_url=sim.gateway_url,
        app_id=app_id,
        app_private_key_pem=private_pem(app_key),
        alipay_public_key_pem=sim.alipay_public_key_pem,
        connect_timeout=1.0,
        read_timeout=0.5,  # short, so the timeout fault costs half a second
    )
    session = requests.Session()
    session.trust_env = False  # never route 127.0.0.1 through an environment proxy
    return AlipayProvider(config, session=session)


class Receiver:
    """A merchant notify endpoint: verifies with the provider and answers as it prescribes."""

    def __init__(self, provider: AlipayProvider, fail_first: int = 0) -> None:
        self.parsed: list[Notification] = []
        self.rejected: list[Exception] = []
        self.fail_first = fail_first
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                reply = receiver.handle(dict(self.headers.items()), body)
                self.send_response(reply.status_code)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

        self.provider = provider
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/notify/alipay"

    def handle(self, headers: dict[str, str], body: bytes) -> Any:
        try:
            note = self.provider.parse_notification(headers, body)
        except SignatureInvalid as exc:
            with self._lock:
                self.rejected.append(exc)
            return self.provider.notification_reply(False)
        with self._lock:
            self.parsed.append(note)
            if self.fail_first > 0:  # e.g. our database was down: ask Alipay to retry
                self.fail_first -= 1
                return self.provider.notification_reply(False)
        return self.provider.notification_reply(True)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def cny(text: str) -> Money:
    return Money.from_major_str(text, "CNY")


def create_request(out_trade_no: str, amount: str = "12.34", notify_url: str = "") -> CreatePayment:
    return CreatePayment(
        out_trade_no=out_trade_no,
        idempotency_key=out_trade_no,
        amount=cny(amount),
        description="测试订单 #1 & co",  # non-ASCII and '&' exercise raw-value signing
        notify_url=notify_url,
        expires_at=datetime(2099, 1, 1, tzinfo=UTC),
    )


def paid_trade(
    provider: AlipayProvider, sim: AlipaySimulator, otn: str, amount: str = "100.00"
) -> None:
    provider.create(create_request(otn, amount))
    sim.pay(otn)


def refund(otn: str, refund_no: str, amount: str, total: str = "100.00") -> RefundRequest:
    return RefundRequest(PaymentRef(otn), refund_no, cny(amount), cny(total), "customer return")
