"""Builders and readers shared by the tracking scheduler tests (test_tracking_*.py): orders and
shipments made directly in PostgreSQL, Kuaidi100-style events and results, and what the services
wrote."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy import func, select

from adapters.logistics.base import TrackingEvent as Ev
from adapters.logistics.base import TrackingResult
from domain.tracking import Cadence, ShipmentStatus
from models import Order, OrderEvent, Shipment, TrackingEvent
from services.tracking import apply_result
from services.unit_of_work import unit_of_work

TS = ShipmentStatus
CN = timezone(timedelta(hours=8))  # Kuaidi100 reports Beijing time
CADENCE = Cadence()
MIN_INTERVAL = CADENCE.min_interval
T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)


def make_order(status: str = "SHIPPED", reason: str | None = None) -> str:
    oid = str(uuid.uuid4())
    with unit_of_work() as s:
        s.add(
            Order(
                id=oid, source="test", external_id=oid, body_hash="0" * 64, status=status,
                reason=reason, currency="CNY", total_amount=1000, payment_provider="alipay",
                shipping_address={"name": "Li Lei", "phone": "13800000000"},
            )
        )  # fmt: skip
    return oid


def make_shipment(order_id: str, status: str = "PENDING", **fields) -> int:
    fields.setdefault("carrier", "yuantong")
    fields.setdefault("waybill", "YT" + uuid.uuid4().hex[:12])
    with unit_of_work() as s:
        shipment = Shipment(
            order_id=order_id, booking_key=f"bk-{uuid.uuid4().hex}", status=status, **fields
        )
        s.add(shipment)
        s.flush()
        return shipment.id


def ev(at: datetime, status: TS, code: str, text_: str = "") -> Ev:
    return Ev(at=at, description=text_ or f"{status} {code}", location="Shanghai", status=status,
              raw_code=code)  # fmt: skip


def res(status: TS, *events: Ev, raw_state: str = "0", waybill: str = "YT1") -> TrackingResult:
    return TrackingResult("yuantong", waybill, status, raw_state, tuple(events))


def apply(shipment_id: int, result: TrackingResult, *, source="poll", now=T0) -> None:
    with unit_of_work() as s:
        apply_result(s, shipment_id, result, now=now, source=source)


def get_shipment(shipment_id: int) -> Shipment:
    with unit_of_work() as s:
        shipment = s.get(Shipment, shipment_id)
        assert shipment is not None
        return shipment


def get_order(order_id: str) -> Order:
    with unit_of_work() as s:
        order = s.get(Order, order_id)
        assert order is not None
        return order


def transitions(order_id: str) -> list[tuple[str | None, str | None]]:
    with unit_of_work() as s:
        rows = s.execute(
            select(OrderEvent.from_status, OrderEvent.to_status)
            .where(OrderEvent.order_id == order_id, OrderEvent.kind == "transition")
            .order_by(OrderEvent.id)
        )
        return [(a, b) for a, b in rows]


def tracking_entries(order_id: str) -> list[dict]:
    with unit_of_work() as s:
        rows = s.scalars(
            select(OrderEvent.detail)
            .where(OrderEvent.order_id == order_id, OrderEvent.kind == "tracking")
            .order_by(OrderEvent.id)
        )
        return [dict(d or {}) for d in rows]


def event_count(shipment_id: int) -> int:
    with unit_of_work() as s:
        return s.scalar(select(func.count()).where(TrackingEvent.shipment_id == shipment_id))
