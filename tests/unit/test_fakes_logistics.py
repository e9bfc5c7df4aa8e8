"""The fake warehouse and carrier keep the contract of the real adapters (see
``test_fakes_payments.py`` for the payment fake and the ports check)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from adapters.logistics.base import (
    BookShipment,
    TrackingEvent,
)
from domain.errors import ProviderRejected, ProviderUnavailable, SignatureInvalid
from domain.tracking import ShipmentStatus
from tests.fakes import (
    FakeBookingService,
    FakeTrackingProvider,
    ManualClock,
)

S = ShipmentStatus
HOUR = 3600.0


def booking(key: str, address: str = "Beijing") -> BookShipment:
    return BookShipment("ord-1", key, "Zhang San", "13800001111", address, [("SKU-1", 2)])


def test_booking_is_idempotent_and_registers_the_waybill_for_tracking() -> None:
    tracker = FakeTrackingProvider(ManualClock())
    service = FakeBookingService(tracker)
    first = service.book(booking("ship-1"))
    assert service.book(booking("ship-1")) == first and len(service.bookings) == 1
    with pytest.raises(ProviderRejected) as err:
        service.book(booking("ship-1", address="elsewhere"))
    assert err.value.code == "idempotency_conflict"
    assert service.book(booking("ship-2")).waybill != first.waybill
    assert first.waybill in tracker.waybills
    assert tracker.query(first.carrier, first.waybill, "1111").status is S.PENDING


def test_booking_faults_and_refusals() -> None:
    service = FakeBookingService()
    service.fail_next()
    with pytest.raises(ProviderUnavailable):
        service.book(booking("k1"))
    with pytest.raises(ProviderRejected) as err:
        service.book(BookShipment("ord-2", "k2", " ", "1", "addr", [("SKU", 1)]))
    assert err.value.code == "invalid_request"
    assert service.book(booking("k1")).waybill and len(service.bookings) == 1


# -- tracking -------------------------------------------------------------------------------

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)


def trace() -> list[TrackingEvent]:
    steps = [(1, S.INFO_RECEIVED, "102"), (3, S.IN_TRANSIT, "1002"), (30, S.OUT_FOR_DELIVERY, "5"),
             (34, S.DELIVERED, "301")]  # fmt: skip
    return [
        TrackingEvent(T0 + timedelta(hours=h), f"scan {c}", "Hangzhou", s, c) for h, s, c in steps
    ]


def test_query_follows_the_trace_on_the_clock() -> None:
    clock = ManualClock(T0)
    fake = FakeTrackingProvider(clock)
    fake.register("yuantong", "YT1", trace())
    seen = []
    for hours in (0, 1, 2, 27, 4):
        clock.advance(hours * HOUR)
        seen.append(fake.query("yuantong", "YT1"))
    assert [r.status for r in seen] == [S.PENDING, S.INFO_RECEIVED, S.IN_TRANSIT,
                                        S.OUT_FOR_DELIVERY, S.DELIVERED]  # fmt: skip
    assert seen[0].events == () and seen[-1].signed and not seen[-2].signed
    assert [e.raw_code for e in seen[-1].events] == ["102", "1002", "5", "301"]
    assert seen[-1].raw_state == "301"


def test_unknown_waybill_or_wrong_carrier_is_pending_without_events() -> None:
    clock = ManualClock(T0 + timedelta(days=3))
    fake = FakeTrackingProvider(clock)
    fake.register("yuantong", "YT1", trace())
    for carrier, waybill in (("yuantong", "YT9"), ("zhongtong", "YT1")):
        result = fake.query(carrier, waybill)
        assert (result.status, result.events, result.waybill) == (S.PENDING, (), waybill)


def test_throttle_locks_the_number_without_restarting_the_interval() -> None:
    clock = ManualClock(T0 + timedelta(hours=4))
    fake = FakeTrackingProvider(clock, min_query_interval_s=1800)
    fake.register("yuantong", "YT1", trace())
    assert fake.query("yuantong", "YT1").status is S.IN_TRANSIT
    clock.advance(1000)
    with pytest.raises(ProviderUnavailable) as err:
        fake.query("yuantong", "YT1")
    assert err.value.code == "502" and err.value.retryable
    assert fake.query("yuantong", "YT2").status is S.PENDING  # other numbers are free
    clock.advance(800)  # 1800 s after the accepted query, 800 s after the refused one
    assert fake.query("yuantong", "YT1").status is S.IN_TRANSIT
    assert (fake.queries["YT1"], fake.throttle_violations) == (3, 1)


def test_phone_is_checked_for_numbers_registered_with_one() -> None:
    fake = FakeTrackingProvider(ManualClock(T0 + timedelta(hours=4)), min_query_interval_s=0)
    fake.register("shunfeng", "SF1", trace(), phone="13912345678")
    for phone in (None, "0000"):
        with pytest.raises(ProviderRejected) as err:
            fake.query("shunfeng", "SF1", phone)
        assert err.value.code == "408"
    assert fake.query("shunfeng", "SF1", "5678").status is S.IN_TRANSIT


def test_subscribe_then_duplicate() -> None:
    fake = FakeTrackingProvider()
    assert fake.subscribe("yuantong", "YT1", "http://127.0.0.1:9/cb", None) is True
    assert fake.subscribe("yuantong", "YT1", "http://127.0.0.1:9/cb", None) is False
    fake.fail_next()
    with pytest.raises(ProviderUnavailable):
        fake.subscribe("yuantong", "YT2", "http://127.0.0.1:9/cb", None)
    assert list(fake.subscriptions) == ["YT1"]


def test_pushes_are_verified_before_they_are_read() -> None:
    fake = FakeTrackingProvider(ManualClock(T0 + timedelta(days=2)))
    fake.register("yuantong", "YT1", trace())
    genuine = fake.push_form("yuantong", "YT1", "shutdown")
    update = fake.parse_push(genuine)
    assert update.push_status == "shutdown" and update.result is not None
    assert update.result == fake.result("yuantong", "YT1") and update.result.status is S.DELIVERED
    tampered = genuine["param"].replace('"shutdown"', '"polling"')
    forgeries = [
        {"param": tampered, "sign": genuine["sign"]},
        {"param": genuine["param"], "sign": "0" * 64},
        {"param": genuine["param"], "sign": ""},
        {"param": genuine["param"]},
        {"sign": genuine["sign"]},
    ]
    for form in forgeries:
        with pytest.raises(SignatureInvalid):
            fake.parse_push(form)
    with pytest.raises(SignatureInvalid):
        FakeTrackingProvider(salt="other").parse_push(genuine)


def test_abort_push_can_carry_expired() -> None:
    fake = FakeTrackingProvider(ManualClock(T0 + timedelta(hours=4)))
    fake.register("yuantong", "YT1", trace())
    abort = fake.parse_push(fake.push_form("yuantong", "YT1", "abort", "60天无变化", S.EXPIRED))
    assert abort.result is not None
    assert (abort.result.status, abort.result.raw_state) == (S.EXPIRED, "1002")
    assert abort.result.note == "60天无变化"


def test_push_reply_shapes() -> None:
    status, body, ctype = FakeTrackingProvider().push_reply(True)
    assert (status, ctype, json.loads(body)["result"]) == (200, "application/json", True)
    status, body, _ = FakeTrackingProvider().push_reply(False)
    assert status == 500 and json.loads(body)["result"] is False
