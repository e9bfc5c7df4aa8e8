"""Applying tracking results (polls and pushes) on real PostgreSQL: duplicates and
out-of-order results move a shipment forward only, each event is stored once, and the order
follows its parcel (completed, flagged for attention, left to the operator)."""

from __future__ import annotations

import random
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from adapters.logistics.base import TrackingEvent as Ev
from tests.integration.tracking_support import (
    CN,
    T0,
    TS,
    apply,
    ev,
    event_count,
    get_order,
    get_shipment,
    make_order,
    make_shipment,
    res,
    tracking_entries,
    transitions,
)


def test_duplicates_and_out_of_order_results_move_forward_only(db):
    oid = make_order("SHIPPED")
    sid = make_shipment(oid, "PENDING", next_poll_at=T0)
    t = datetime(2026, 11, 1, 9, 0, tzinfo=CN)
    e1 = ev(t, TS.IN_TRANSIT, "1", "揽收")
    e2 = ev(t + timedelta(hours=3), TS.IN_TRANSIT, "1002", "运输中")
    e3 = ev(t + timedelta(hours=20), TS.OUT_FOR_DELIVERY, "5", "派件中")
    e4 = ev(t + timedelta(hours=22), TS.IN_TRANSIT, "0", "退回网点")
    e5 = ev(t + timedelta(hours=26), TS.DELIVERED, "301", "已签收")

    apply(sid, res(TS.IN_TRANSIT, e1, e2, raw_state="0"))
    assert (get_shipment(sid).status, event_count(sid)) == ("IN_TRANSIT", 2)
    assert get_order(oid).status == "IN_TRANSIT"
    entries = len(tracking_entries(oid))

    # The same result again, by push and with the times in UTC: nothing new.
    utc = [Ev(e.at.astimezone(UTC), e.description, e.location, e.status, e.raw_code)
           for e in (e1, e2)]  # fmt: skip
    apply(sid, res(TS.IN_TRANSIT, *utc), source="push", now=T0 + timedelta(minutes=1))
    assert event_count(sid) == 2
    assert len(tracking_entries(oid)) == entries  # a pure duplicate writes nothing
    assert get_shipment(sid).last_push_at == T0 + timedelta(minutes=1)

    apply(sid, res(TS.OUT_FOR_DELIVERY, e1, e2, e3, raw_state="5"))
    # A late, older result (delayed push): its status is ignored, on the timeline.
    apply(sid, res(TS.IN_TRANSIT, e1, e2, raw_state="0"), source="push")
    shipment = get_shipment(sid)
    assert (shipment.status, shipment.raw_state, event_count(sid)) == ("OUT_FOR_DELIVERY", "5", 3)
    assert tracking_entries(oid)[-1]["ignored"] == "stale"
    # Newer, but a lower status: its event is kept, the status is not taken.
    apply(sid, res(TS.IN_TRANSIT, e1, e2, e3, e4, raw_state="0"))
    assert (get_shipment(sid).status, event_count(sid)) == ("OUT_FOR_DELIVERY", 4)
    last = tracking_entries(oid)[-1]
    assert (last["ignored"], last["reported"], last["new_events"]) == (
        "not_forward",
        "IN_TRANSIT",
        1,
    )
    assert get_shipment(sid).last_event_at == e4.at

    apply(sid, res(TS.DELIVERED, e1, e2, e3, e4, e5, raw_state="3"))
    apply(sid, res(TS.DELIVERED, e1, e2, e3, e4, e5, raw_state="3"), source="push")
    apply(sid, res(TS.EXCEPTION, ev(e5.at + timedelta(hours=1), TS.EXCEPTION, "2")))
    shipment = get_shipment(sid)
    assert (shipment.status, shipment.next_poll_at) == ("DELIVERED", None)
    assert event_count(sid) == 6  # the late exception's event is kept as a fact
    assert get_order(oid).status == "DELIVERED"  # receipt is the buyer's (or the clock's)
    assert transitions(oid) == [("SHIPPED", "IN_TRANSIT"), ("IN_TRANSIT", "DELIVERED")]
    applied = [(d.get("ignored"), d["new_events"]) for d in tracking_entries(oid)]
    assert applied == [
        (None, 2), (None, 1), ("stale", 0), ("not_forward", 1), (None, 1), ("not_forward", 1),
    ]  # fmt: skip


def test_delivered_straight_from_shipped_delivers_the_order(db):
    oid = make_order("SHIPPED")
    sid = make_shipment(oid)
    apply(sid, res(TS.DELIVERED, ev(T0, TS.DELIVERED, "304", "快递柜签收"), raw_state="304"))
    assert get_order(oid).status == "DELIVERED"
    assert transitions(oid) == [("SHIPPED", "DELIVERED")]


def test_exception_needs_attention_and_a_resolution_moves_the_order_on(db):
    oid = make_order("IN_TRANSIT")
    sid = make_shipment(oid, "IN_TRANSIT", last_event_at=T0 - timedelta(hours=1))
    problem = ev(T0, TS.EXCEPTION, "2", "地址不详 联系收件人中")
    apply(sid, res(TS.EXCEPTION, problem, raw_state="2"))
    order = get_order(oid)
    assert (order.status, order.reason) == (
        "NEEDS_ATTENTION", "tracking_exception: 地址不详 联系收件人中",
    )  # fmt: skip
    assert get_shipment(sid).status == "EXCEPTION"
    apply(sid, res(TS.EXCEPTION, problem, raw_state="2"), source="push")  # duplicate: no-op
    assert transitions(oid) == [("IN_TRANSIT", "NEEDS_ATTENTION")]

    # A stale pre-exception result does not resolve it; a newer carrier scan does.
    apply(sid, res(TS.IN_TRANSIT, ev(T0 - timedelta(hours=1), TS.IN_TRANSIT, "0")))
    assert get_order(oid).status == "NEEDS_ATTENTION"
    apply(sid, res(TS.IN_TRANSIT, problem, ev(T0 + timedelta(hours=2), TS.IN_TRANSIT, "0")))
    order = get_order(oid)
    assert (order.status, order.reason, get_shipment(sid).status) == (
        "IN_TRANSIT", None, "IN_TRANSIT",
    )  # fmt: skip

    # Trouble again, then Kuaidi100 gives up on the number: the order stays flagged.
    apply(sid, res(TS.EXCEPTION, ev(T0 + timedelta(hours=3), TS.EXCEPTION, "2", "疑难件")))
    apply(sid, res(TS.EXPIRED, ev(T0 + timedelta(hours=3), TS.EXCEPTION, "2", "疑难件")))
    order = get_order(oid)
    assert (order.status, order.reason) == ("NEEDS_ATTENTION", "tracking_exception: 疑难件")
    assert get_shipment(sid).status == "EXPIRED"
    assert transitions(oid) == [
        ("IN_TRANSIT", "NEEDS_ATTENTION"), ("NEEDS_ATTENTION", "IN_TRANSIT"),
        ("IN_TRANSIT", "NEEDS_ATTENTION"),
    ]  # fmt: skip


def test_a_refused_or_returned_parcel_stays_flagged_whatever_scans_follow(db):
    """Refused by the recipient (14), the parcel travels back and is signed for by the sender:
    its later "in transit" and "delivered" scans are the way back, so the order stays
    NEEDS_ATTENTION (tracking_returned) and never completes by itself."""
    oid = make_order("IN_TRANSIT")
    sid = make_shipment(oid, "IN_TRANSIT", last_event_at=T0 - timedelta(hours=1))
    refused = ev(T0, TS.EXCEPTION, "14", "收件人拒签")
    apply(sid, replace(res(TS.EXCEPTION, refused, raw_state="14"), returned=True))
    assert (get_order(oid).status, get_order(oid).reason) == (
        "NEEDS_ATTENTION", "tracking_returned: 收件人拒签",
    )  # fmt: skip
    back = ev(T0 + timedelta(hours=2), TS.IN_TRANSIT, "0", "退回途中")
    apply(sid, res(TS.IN_TRANSIT, refused, back))
    home = ev(T0 + timedelta(hours=5), TS.DELIVERED, "3", "寄件人已签收")
    apply(sid, res(TS.DELIVERED, refused, back, home, raw_state="3"))
    order = get_order(oid)
    assert (order.status, order.reason) == ("NEEDS_ATTENTION", "tracking_returned: 收件人拒签")
    assert transitions(oid) == [("IN_TRANSIT", "NEEDS_ATTENTION")]


def test_expired_tracking_needs_attention(db):
    oid = make_order("IN_TRANSIT")
    sid = make_shipment(oid, "IN_TRANSIT", last_event_at=T0)
    # An ``abort`` push without a trace carries no events: still applied.
    apply(sid, res(TS.EXPIRED, raw_state=""), source="push")
    order = get_order(oid)
    assert (order.status, order.reason) == ("NEEDS_ATTENTION", "tracking_expired")
    assert get_shipment(sid).next_poll_at is None


def test_never_found_abort_flags_the_order_with_the_providers_note(db):
    """Kuaidi100's "3天查询无记录" abort (no trace ever) arrives as EXCEPTION without events and
    with a note (adapters.logistics.kuaidi100): the order is flagged with that note as reason."""
    from dataclasses import replace

    from adapters.logistics.kuaidi100 import NOT_FOUND_NOTE

    oid = make_order("SHIPPED")
    sid = make_shipment(oid, "PENDING", next_poll_at=T0)
    apply(sid, replace(res(TS.EXCEPTION, raw_state=""), note=NOT_FOUND_NOTE), source="push")
    order = get_order(oid)
    assert order.status == "NEEDS_ATTENTION"
    assert order.reason == f"tracking_exception: {NOT_FOUND_NOTE}"[:200]
    assert get_shipment(sid).status == "EXCEPTION"


def test_order_flagged_for_another_reason_is_left_to_the_operator(db):
    oid = make_order("NEEDS_ATTENTION", reason="operator_hold")
    sid = make_shipment(oid, "IN_TRANSIT")
    apply(sid, res(TS.DELIVERED, ev(T0, TS.DELIVERED, "3")))
    assert get_shipment(sid).status == "DELIVERED"
    assert (get_order(oid).status, get_order(oid).reason) == ("NEEDS_ATTENTION", "operator_hold")
    assert transitions(oid) == []


def test_concurrent_pushes_and_polls_apply_each_event_once(db):
    """Four threads deliver the same results in different orders (push and poll at once):
    no deadlock, each event stored once, each order transition recorded once."""
    oid = make_order("SHIPPED")
    sid = make_shipment(oid)
    t = datetime(2026, 11, 1, 9, 0, tzinfo=CN)
    trail = [
        ev(t, TS.INFO_RECEIVED, "101"),
        ev(t + timedelta(hours=1), TS.IN_TRANSIT, "1"),
        ev(t + timedelta(hours=5), TS.IN_TRANSIT, "1002"),
        ev(t + timedelta(hours=9), TS.OUT_FOR_DELIVERY, "5"),
        ev(t + timedelta(hours=10), TS.DELIVERED, "301"),
    ]
    results = [res(trail[i].status, *trail[: i + 1]) for i in range(len(trail))]
    errors: list[BaseException] = []

    def deliver(seed: int) -> None:
        order = results * 3
        random.Random(seed).shuffle(order)
        for r in order:
            try:
                apply(sid, r, source="push" if seed % 2 else "poll")
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert (get_shipment(sid).status, event_count(sid)) == ("DELIVERED", 5)
    assert get_order(oid).status == "DELIVERED"
    moves = transitions(oid)
    assert moves[-1] == ("IN_TRANSIT", "DELIVERED") or moves == [("SHIPPED", "DELIVERED")]
    assert len(moves) == len(set(moves))
