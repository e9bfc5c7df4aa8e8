"""The shipping and tracking steps' decisions (``services.shipping.book/subscribe``,
``services.tracking.poll.poll_chunk``): fake warehouse and carrier, fake gate, manual clock,
no database (see ``support.py``)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from adapters.logistics.base import BookShipment, TrackingEvent
from domain.tracking import Cadence, ShipmentStatus
from services import shipping
from services.followup import Followup
from services.shipping import BookingCall, ShippingConfig
from services.task_names import SHIPPING_SUBSCRIBE
from services.tracking import poll as poll_mod
from services.tracking.leases import PollTarget
from services.tracking.poll import TrackingConfig, poll_chunk
from services.tracking.schedule import PollStarted
from tests.fakes import FakeBookingService, FakeGate, FakeTrackingProvider, ManualClock
from tests.unit.steps.support import Store, ports

OID = "8f0c1e4a-0000-4000-8000-000000000002"
CONFIG = ShippingConfig(redrive_s=60, first_poll_s=30, push_url="http://shop.test/webhooks/k100")


def _booking(name: str = "Li Lei", sid: int = 11, warehouse: str = "main") -> BookingCall:
    request = BookShipment(OID, f"book-{OID}-{warehouse}", name, "13800000000", "Shanghai",
                           [("SKU-1", 2)], warehouse=warehouse)  # fmt: skip
    return BookingCall(OID, sid, request)


def _queue(*answers: object) -> object:
    """A part's answers in turn, then None (no parcel left to book)."""
    pending = list(answers)
    return lambda *_a, **_k: pending.pop(0) if pending else None


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Store:
    store = Store(monkeypatch)
    store.replace(shipping, "prepare_booking", "refuse_parcel", "ship_parcel", "_unsend",
                  "pending_subscriptions", "subscription_target", "mark_subscribed")  # fmt: skip
    store.answers["prepare_booking"] = _queue(_booking())
    store.answers["ship_parcel"] = [Followup(SHIPPING_SUBSCRIBE, 11)]
    store.answers["pending_subscriptions"] = [Followup(SHIPPING_SUBSCRIBE, 11)]
    store.answers["subscription_target"] = (OID, "yuantong", "YT0000000001", "13800000000")
    return store


def test_a_booking_ships_the_order_and_asks_for_the_subscription(store):
    warehouse, gate = FakeBookingService(), FakeGate()
    outcome = shipping.book(OID, warehouse, ports(gate=gate), CONFIG)
    assert outcome.result == "YT0000000001"
    assert outcome.followups == (Followup(SHIPPING_SUBSCRIBE, 11),)
    assert gate.calls == [("warehouse", "book", OID)]
    names = ["prepare_booking", "ship_parcel", "prepare_booking", "pending_subscriptions"]
    assert store.names() == names
    assert store.calls[1][2]["first_poll_s"] == 30 and store.calls[1][2]["actor"] == "warehouse"


def test_each_parcel_is_booked_in_turn_with_its_own_key(store):
    store.answers["prepare_booking"] = _queue(_booking(sid=11), _booking(sid=12, warehouse="east"))
    warehouse = FakeBookingService()
    outcome = shipping.book(OID, warehouse, ports(), CONFIG)
    assert outcome.result == "YT0000000001,YT0000000002"
    assert [(r.warehouse, r.idempotency_key) for r, _ in warehouse.bookings.values()] == [
        ("main", f"book-{OID}-main"), ("east", f"book-{OID}-east"),
    ]  # fmt: skip
    assert [args[0] for name, args, _ in store.calls if name == "ship_parcel"] == [11, 12]


def test_a_retried_booking_gets_the_same_parcel(store):
    store.answers["prepare_booking"] = _queue(_booking(), _booking())
    warehouse = FakeBookingService()
    warehouse.fail_next(after=True)  # booked, but the answer was lost
    with pytest.raises(Exception, match="injected"):
        shipping.book(OID, warehouse, ports(), CONFIG)
    assert shipping.book(OID, warehouse, ports(), CONFIG).result == "YT0000000001"
    assert len(warehouse.bookings) == 1


def test_a_refused_booking_is_handed_to_the_refusal_with_the_services_code(store):
    store.answers["prepare_booking"] = _queue(_booking(name=" "))
    assert shipping.book(OID, FakeBookingService(), ports(), CONFIG).result == "rejected"
    assert store.names() == ["prepare_booking", "refuse_parcel", "prepare_booking",
                             "pending_subscriptions"]  # fmt: skip
    assert store.args_of("refuse_parcel") == (11, "invalid_request")


def test_a_warehouse_that_cannot_ship_hands_the_parcel_on_and_the_next_is_booked(store):
    """The refusal re-allocates (its own transaction); the run then books the new parcel."""
    store.answers["prepare_booking"] = _queue(_booking(sid=11), _booking(sid=12, warehouse="b"))
    warehouse = FakeBookingService()
    warehouse.refusing["main"] = "out_of_stock"
    outcome = shipping.book(OID, warehouse, ports(), CONFIG)
    assert outcome.result == "YT0000000001"
    assert store.args_of("refuse_parcel") == (11, "out_of_stock")
    assert [r.warehouse for r, _ in warehouse.bookings.values()] == ["b"]


def test_a_booking_behind_an_open_circuit_is_left_to_the_sweeper(store):
    gate = FakeGate()
    gate.open.add("warehouse")
    warehouse = FakeBookingService()
    assert shipping.book(OID, warehouse, ports(gate=gate), CONFIG).result == "circuit_open"
    assert warehouse.bookings == {}
    # The call never left: the parcel is marked unsent again (a cancel may still take it).
    assert store.names() == ["prepare_booking", "_unsend", "pending_subscriptions"]


def test_subscribing_twice_is_answered_already(store):
    carrier = FakeTrackingProvider()
    assert shipping.subscribe(11, carrier, ports(), CONFIG).result == "subscribed"
    assert shipping.subscribe(11, carrier, ports(), CONFIG).result == "already"
    assert carrier.subscriptions == {"YT0000000001": "http://shop.test/webhooks/k100"}
    assert [kw["newly"] for n, _, kw in store.calls if n == "mark_subscribed"] == [True, False]


# -- tracking polls --------------------------------------------------------------------------

TRACKING = TrackingConfig(cadence=Cadence(), rate_per_s=1.0, burst=1, retry_after_circuit_s=30)


def _target(sid: int) -> PollTarget:
    return PollTarget(sid, OID, "yuantong", f"YT{sid:010d}", None, has_push=False)


class Quota:
    """Grants at most ``left`` tokens in all."""

    def __init__(self, left: int) -> None:
        self.left = left

    def reserve(self, n: int) -> int:
        granted = min(n, self.left)
        self.left -= granted
        return granted


@pytest.fixture
def poll_store(monkeypatch: pytest.MonkeyPatch) -> Store:
    store = Store(monkeypatch)
    store.replace(poll_mod, "defer_pushed", "hand_back_recent", "poll_targets", "release_lease",
                  "start_poll", "abandon_poll", "record_poll")  # fmt: skip
    store.answers["poll_targets"] = [_target(1), _target(2), _target(3)]
    store.answers["start_poll"] = PollStarted(None, ManualClock()())
    return store


def _carrier(clock: ManualClock) -> FakeTrackingProvider:
    carrier = FakeTrackingProvider(clock)
    for sid in (1, 2, 3):
        at = clock() - timedelta(hours=1)
        scan = TrackingEvent(at, "揽收", "上海", ShipmentStatus.IN_TRANSIT, "0")
        carrier.register("yuantong", f"YT{sid:010d}", [scan])
    return carrier


def test_a_chunk_polls_what_the_quota_grants_and_hands_the_rest_back(poll_store):
    clock = ManualClock()
    carrier = _carrier(clock)
    assert poll_chunk([1, 2, 3], None, carrier, Quota(2), ports(clock), TRACKING) == 2
    assert carrier.queries == {"YT0000000001": 1, "YT0000000002": 1}
    assert poll_store.args_of("release_lease")[0] == [3]
    recorded = [kw for n, _, kw in poll_store.calls if n == "record_poll"]
    assert [r["result"].status for r in recorded] == [ShipmentStatus.IN_TRANSIT] * 2
    assert not any(r["failed"] for r in recorded)


def test_a_failed_query_is_recorded_as_a_failure_for_the_backoff(poll_store):
    clock = ManualClock()
    carrier = _carrier(clock)
    carrier.fail_next()
    assert poll_chunk([1, 2, 3], None, carrier, Quota(3), ports(clock), TRACKING) == 3
    first = next(kw for n, _, kw in poll_store.calls if n == "record_poll")
    assert first["failed"] and first["result"] is None and "injected" in first["error"]


def test_an_open_circuit_undoes_the_take_and_queries_nothing(poll_store):
    clock, gate = ManualClock(), FakeGate()
    gate.open.add("kuaidi100")
    carrier = _carrier(clock)
    assert poll_chunk([1, 2, 3], None, carrier, Quota(3), ports(clock, gate), TRACKING) == 0
    assert carrier.queries == {}
    assert [kw["retry_in_s"] for n, _, kw in poll_store.calls if n == "abandon_poll"] == [30] * 3


def test_a_member_already_taken_is_not_queried_again(poll_store):
    clock = ManualClock()
    poll_store.answers["start_poll"] = lambda sid, **kw: (
        None if sid == 2 else PollStarted(None, clock())
    )
    carrier = _carrier(clock)
    assert poll_chunk([1, 2, 3], None, carrier, Quota(3), ports(clock), TRACKING) == 2
    assert "YT0000000002" not in carrier.queries
