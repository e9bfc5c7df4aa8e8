"""Helpers shared by the Stripe adapter tests: stopping simulators in the background, provider
construction, a merchant webhook endpoint that verifies with the adapter, request builders, and
a probe of the simulator's in-flight idempotency keys."""

from __future__ import annotations

import secrets
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from adapters.payments.base import (
    CreatePayment,
    Notification,
    PaymentRef,
    RefundRequest,
    SignatureInvalid,
)
from adapters.payments.stripe import StripeConfig, StripeProvider
from domain.money import Money
from simulators.harness import Request, Response, SimulatorServer
from simulators.stripe import StripeSimulator

#: Threads stopping simulators in the background; the conftest joins them when a module ends.
stopping: list[threading.Thread] = []


def stop_later(server: SimulatorServer) -> None:
    """``stop()`` waits up to 0.5 s for ``serve_forever`` to notice; overlap that with the next
    test instead of paying it per test. All stops are joined when the module ends."""
    thread = threading.Thread(target=server.stop, name=f"stop-{server.name}")
    thread.start()
    stopping.append(thread)


def make_provider(sim: StripeSimulator, keys: dict[str, str], **overrides: Any) -> StripeProvider:
    settings: dict[str, Any] = {"connect_timeout": 1.0, "read_timeout": 2.0, **overrides}
    return StripeProvider(StripeConfig(api_base=sim.url, **{**keys, **settings}))


class Merchant:
    """A webhook endpoint that verifies with the adapter and records what it accepted."""

    def __init__(self, provider: StripeProvider) -> None:
        self.provider = provider
        self.accepted: list[Notification] = []
        self.refused: list[str] = []
        self.server = SimulatorServer("merchant")
        self.server.route("POST", "/stripe/webhook", self._handle)
        self.url = f"{self.server.url}/stripe/webhook"

    def _handle(self, req: Request) -> Response:
        try:
            notification = self.provider.parse_notification(req.headers, req.body)
        except SignatureInvalid as exc:
            self.refused.append(str(exc))
            reply = self.provider.notification_reply(False)
        else:
            self.accepted.append(notification)
            reply = self.provider.notification_reply(True)
        return Response(reply.status_code, reply.body, {"Content-Type": reply.content_type})

    def of_type(self, raw_type: str) -> list[Notification]:
        return [n for n in self.accepted if n.raw_type == raw_type]


def create_request(
    out_trade_no: str | None = None, amount: Money | None = None, key: str | None = None
) -> CreatePayment:
    out_trade_no = out_trade_no or "T" + secrets.token_hex(6)
    return CreatePayment(
        out_trade_no=out_trade_no,
        idempotency_key=key or f"create-{out_trade_no}",
        amount=amount or Money(1234, "USD"),
        description="order " + out_trade_no,
        notify_url="http://127.0.0.1:1/unused",
        expires_at=datetime.now(UTC) + timedelta(minutes=15),
        metadata={"order_id": "42"},
    )


def paid_payment(
    provider: StripeProvider, sim: StripeSimulator, amount: int = 1000
) -> tuple[PaymentRef, CreatePayment]:
    req = create_request(amount=Money(amount, "USD"))
    created = provider.create(req)
    sim.pay(req.out_trade_no)
    return PaymentRef(req.out_trade_no, created.provider_ref), req


def refund_request(
    ref: PaymentRef, refund_no: str, amount: int, total: int = 1000
) -> RefundRequest:
    return RefundRequest(
        ref=ref,
        refund_no=refund_no,
        amount=Money(amount, "USD"),
        total=Money(total, "USD"),
        reason="customer asked",
    )


def key_in_flight(sim: StripeSimulator, key: str) -> bool:
    """True while a request carrying Idempotency-Key ``key`` is executing at the simulator (it
    holds the key: a concurrent request with the same key gets the 409 ``key_in_use``)."""
    with sim._state:
        return key in sim._in_flight
