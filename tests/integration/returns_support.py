"""Orders delivered through the real services (reserve, pay at the fake, book, track), for the
after-sale tests, the shop they buy from (the ``shop`` fixture: import it into a test module),
and small readers of what the returns wrote."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from adapters.logistics.base import TrackingResult
from domain.tracking import ShipmentStatus
from models import Order, Payment, Refund, Shipment, StockMovement
from producers.intake import accept_message
from services import payments, shipping, tracking
from services.payments import PaymentConfig
from services.ports import Ports
from services.reservation import reserve_order
from services.shipping import ShippingConfig
from services.unit_of_work import unit_of_work
from tests.conftest import order_message
from tests.fakes import FakeGate, FakePaymentProvider
from tests.fakes.logistics import FakeBookingService

CONFIG = PaymentConfig(notify_base_url="http://127.0.0.1:9", create_redrive_s=30, first_query_s=5)
THREE = [("A", 2), ("B", 1), ("C", 3)]  # 2 x 1000 + 1 x 3000 + 3 x 500 = 6500


@pytest.fixture
def shop(catalog):
    """Products A (1000), B (3000) and C (500), ten of each; the fake provider they are paid
    at."""
    catalog({"A": 10}, price=1000)
    catalog({"B": 10}, price=3000)
    catalog({"C": 10}, price=500)
    return FakePaymentProvider()


def now() -> datetime:
    return datetime.now(UTC)


def ports() -> Ports:
    return Ports(gate=FakeGate(), clock=now)


def paid_order(
    fake: FakePaymentProvider, lines: list[tuple[str, int]], *, discount: int = 0
) -> str:
    """An order of ``lines`` (with an order-level ``discount``) reserved and paid at ``fake``,
    nothing booked yet: its id."""
    oid = accept_message({**order_message(lines), "discount": discount}, channel="test").order_id
    with unit_of_work() as s:
        assert reserve_order(s, oid, now=now(), payment_window_s=600).status == "RESERVED"
    assert payments.create(oid, lambda _: fake, ports(), CONFIG).result == "created"
    with unit_of_work() as s:
        trade_no = s.scalar(select(Payment.out_trade_no).where(Payment.order_id == oid))
    fake.pay(trade_no)
    note = fake.parse_notification({}, fake.outbox[-1])
    with unit_of_work() as s:
        payments.apply_notification(s, "alipay", note, now=now())
        assert s.get_one(Order, oid).status == "PAID"
    return oid


def delivered_order(
    fake: FakePaymentProvider, lines: list[tuple[str, int]], *, discount: int = 0
) -> str:
    """An order of ``lines`` (with an order-level ``discount``) reserved, paid at ``fake``,
    booked and delivered: its id."""
    oid = paid_order(fake, lines, discount=discount)
    shipping.book(oid, FakeBookingService(), ports(), ShippingConfig(first_poll_s=3600))
    with unit_of_work() as s:
        for shipment in s.scalars(select(Shipment).where(Shipment.order_id == oid)):
            result = TrackingResult(shipment.carrier or "", shipment.waybill or "",
                                    ShipmentStatus.DELIVERED, "3", [], signed=True)  # fmt: skip
            tracking.apply_result(s, shipment.id, result, now=now(), source="poll")
    with unit_of_work() as s:
        assert s.get_one(Order, oid).status == "DELIVERED"
    return oid


def refunds_of(oid: str) -> list[tuple[str, int, str]]:
    """(refund number, amount, status) of the order's refunds, oldest first."""
    with unit_of_work() as s:
        rows = s.execute(
            select(Refund.refund_no, Refund.amount, Refund.status)
            .where(Refund.order_id == oid)
            .order_by(Refund.id)
        ).all()
        return [(no, amount, status) for no, amount, status in rows]


def ledger_of(oid: str) -> list[tuple[str, str, int]]:
    """(kind, sku, change to on hand) of the order's after-sale ledger rows."""
    with unit_of_work() as s:
        rows = s.execute(
            select(StockMovement.kind, StockMovement.sku, StockMovement.delta_on_hand)
            .where(StockMovement.order_id == oid,
                   StockMovement.kind.in_(["return_restock", "write_off"]))
            .order_by(StockMovement.id)
        ).all()  # fmt: skip
        return [(k, sku, d) for k, sku, d in rows]


def captured(oid: str) -> int:
    with unit_of_work() as s:
        return int(s.scalar(select(func.sum(Payment.amount)).where(Payment.order_id == oid)) or 0)
