"""Helpers shared by the WeChat Pay adapter tests: merchant identity, generated keys, a merchant
webhook receiver, provider construction and request builders."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters.payments.base import CreatePayment, PaymentRef, RefundRequest
from adapters.payments.wechatpay import WeChatPayConfig, WeChatPayProvider
from domain.money import Money
from simulators.harness import Request, Response, SimulatorServer
from simulators.wechatpay import WeChatPaySimulator
from tests.conftest import wait_until

MCHID = "1900000001"
APPID = "wxd678efh567hg6787"
MERCHANT_SERIAL = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"

Headers = dict[str, str]


@dataclass(frozen=True)
class Keys:
    merchant_private_pem: bytes
    merchant_public_pem: bytes
    api_v3_key: bytes


def rsa_pems() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


class Receiver:
    """A merchant webhook endpoint: records every delivery, answers from ``replies`` (else 204)."""

    def __init__(self) -> None:
        self.server = SimulatorServer("merchant-webhook").start()
        self.server.route("POST", "/notify", self._handle)
        self.received: list[tuple[Headers, bytes]] = []
        self.replies: list[int] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self.server.url + "/notify"

    def _handle(self, req: Request) -> Response:
        with self._lock:
            self.received.append((req.headers, req.body))
            return Response(self.replies.pop(0) if self.replies else 204)

    def wait_for(self, count: int, timeout_s: float = 60.0) -> list[tuple[Headers, bytes]]:
        def arrived() -> list[tuple[Headers, bytes]] | None:
            with self._lock:
                return list(self.received) if len(self.received) >= count else None

        def shown() -> str:
            return f"expected {count} deliveries, got {len(self.received)}"

        received: list[tuple[Headers, bytes]] = wait_until(arrived, timeout_s, 0.02, show=shown)
        return received

    def clear(self) -> None:
        with self._lock:
            self.received.clear()
            self.replies.clear()


def make_provider(sim: WeChatPaySimulator, keys: Keys, **overrides: Any) -> WeChatPayProvider:
    settings: dict[str, Any] = {
        "base_url": sim.url,
        "mchid": MCHID,
        "appid": APPID,
        "merchant_serial_no": MERCHANT_SERIAL,
        "merchant_private_key_pem": keys.merchant_private_pem,
        "api_v3_key": keys.api_v3_key,
        "platform_public_keys": {sim.platform_serial: sim.platform_public_key_pem},
        "connect_timeout": 1.0,
        "read_timeout": 2.0,
    }
    settings.update(overrides)
    return WeChatPayProvider(WeChatPayConfig(**settings))


def new_trade_no() -> str:
    return "T" + uuid.uuid4().hex[:24]


def create_request(
    amount: int = 1234,
    *,
    out_trade_no: str | None = None,
    notify_url: str = "https://merchant.example/wechat/notify",
    currency: str = "CNY",
) -> CreatePayment:
    no = out_trade_no or new_trade_no()
    return CreatePayment(
        out_trade_no=no,
        idempotency_key=no,
        amount=Money(amount, currency),
        description="orderflow test order",
        notify_url=notify_url,
        expires_at=datetime(2099, 1, 1, tzinfo=UTC),
        metadata={"order_id": "42"},
    )


def paid_order(
    provider: WeChatPayProvider, sim: WeChatPaySimulator, amount: int, notify_url: str | None = None
) -> PaymentRef:
    request = create_request(amount, **({"notify_url": notify_url} if notify_url else {}))
    provider.create(request)
    sim.pay(request.out_trade_no)
    return PaymentRef(request.out_trade_no)


def refund_request(ref: PaymentRef, refund_no: str, amount: int, total: int) -> RefundRequest:
    return RefundRequest(
        ref=ref,
        refund_no=refund_no,
        amount=Money(amount, "CNY"),
        total=Money(total, "CNY"),
        reason="customer cancelled",
    )
