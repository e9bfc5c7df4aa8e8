"""Claiming due shipments on real PostgreSQL: what must not be polled is skipped, leases
keep a second beat away, a provider outage backs off (capped) and recovery resumes the cadence,
a beat claims one tick ahead with each poll's due time, and the staleness query finds the
quiet active parcels. Every "now" is passed in: no test waits for time to pass."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import text

from services.tracking import (
    claim_ahead,
    claim_due,
    poll_targets,
    record_poll,
    release_lease,
    stale_shipments,
)
from services.unit_of_work import unit_of_work
from tests.integration.tracking_support import (
    CADENCE,
    MIN_INTERVAL,
    T0,
    TS,
    ev,
    get_shipment,
    make_order,
    make_shipment,
    res,
    tracking_entries,
)


def test_provider_down_backs_off_capped_then_success_resumes_cadence(db):
    oid = make_order("IN_TRANSIT")
    sid = make_shipment(oid, "IN_TRANSIT", next_poll_at=T0, last_event_at=T0)
    now, delays = T0, []
    for attempt in range(1, 10):
        with unit_of_work() as s:
            early = claim_due(s, now=now - timedelta(seconds=1), limit=10, lease_s=60,
                              min_interval_s=MIN_INTERVAL)  # fmt: skip
            assert early == []  # not before its time
            claimed = claim_due(s, now=now, limit=10, lease_s=60, min_interval_s=MIN_INTERVAL)
            assert claimed == [sid]
            record_poll(s, sid, now=now, result=None, failed=True, cadence=CADENCE,
                        has_push=False, error="ProviderUnavailable: 502")  # fmt: skip
        shipment = get_shipment(sid)
        assert shipment.poll_failures == attempt and shipment.lease_until is None
        assert shipment.next_poll_at is not None
        delays.append((shipment.next_poll_at - now).total_seconds())
        now = shipment.next_poll_at
    assert delays == [1800, 3600, 7200, 14400, 28800, 57600, 86400, 86400, 86400]
    failures = [d for d in tracking_entries(oid) if "poll_failed" in d]
    assert [d["poll_failed"] for d in failures] == list(range(1, 10))
    assert failures[0]["error"] == "ProviderUnavailable: 502"

    with unit_of_work() as s:  # the provider is back
        assert claim_due(s, now=now, limit=10, lease_s=60, min_interval_s=MIN_INTERVAL) == [sid]
        scan = ev(now - timedelta(minutes=5), TS.IN_TRANSIT, "1002")
        record_poll(s, sid, now=now, result=res(TS.IN_TRANSIT, scan), failed=False,
                    cadence=CADENCE, has_push=False)  # fmt: skip
    shipment = get_shipment(sid)
    assert shipment.poll_failures == 0
    assert shipment.next_poll_at == now + timedelta(seconds=CADENCE.in_transit)
    assert shipment.last_polled_at == now


def test_claim_due_skips_what_must_not_be_polled(db):
    oid = make_order()
    due = T0 - timedelta(minutes=1)
    ok = make_shipment(
        oid, "IN_TRANSIT", next_poll_at=due, subscribed=True, last_push_at=T0 - timedelta(hours=1)
    )
    make_shipment(make_order(), next_poll_at=due, carrier=None, waybill=None)  # no waybill
    make_shipment(make_order(), "DELIVERED", next_poll_at=due)  # final
    make_shipment(make_order(), "EXPIRED", next_poll_at=due)  # final
    not_yet = make_shipment(make_order(), next_poll_at=T0 + timedelta(seconds=1))
    make_shipment(make_order(), next_poll_at=None)  # polling stopped
    leased = make_shipment(make_order(), next_poll_at=due, lease_until=T0 + timedelta(seconds=5))
    recent = make_shipment(
        make_order(), next_poll_at=due, last_polled_at=T0 - timedelta(seconds=MIN_INTERVAL - 1)
    )
    expired_lease = make_shipment(
        make_order(), next_poll_at=due - timedelta(hours=1), lease_until=T0 - timedelta(seconds=1)
    )
    with unit_of_work() as s:
        got = claim_due(s, now=T0, limit=10, lease_s=120, min_interval_s=MIN_INTERVAL)
    assert got == [expired_lease, ok]  # most overdue first
    assert get_shipment(ok).lease_until == T0 + timedelta(seconds=120)
    with unit_of_work() as s:  # leased now: a second beat gets nothing
        assert claim_due(s, now=T0, limit=10, lease_s=120, min_interval_s=MIN_INTERVAL) == []
        targets = poll_targets(s, [ok], now=T0, push_window_s=8 * 3600, lease_until=None,
                               min_interval_s=MIN_INTERVAL)  # fmt: skip
        assert [(t.shipment_id, t.carrier, t.phone, t.has_push) for t in targets] == [
            (ok, "yuantong", "13800000000", True)
        ]
        (quiet,) = poll_targets(
            s, [ok], now=T0, push_window_s=600, lease_until=None, min_interval_s=MIN_INTERVAL
        )  # last push too long ago
        assert not quiet.has_push
        release_lease(s, [ok], now=T0, retry_in_s=30)
    released = get_shipment(ok)
    assert released.lease_until is None and released.last_polled_at is None
    assert released.next_poll_at == T0 + timedelta(seconds=30)
    assert not {leased, recent, not_yet} & set(got)
    later = T0 + timedelta(seconds=30)  # lease expired, minimum interval and due time passed
    with unit_of_work() as s:
        again = claim_due(s, now=later, limit=10, lease_s=120, min_interval_s=MIN_INTERVAL)
    assert sorted(again) == sorted([ok, leased, recent, not_yet])


def test_stale_shipments_finds_only_the_quiet_active_ones(db):
    now = T0

    def days(n: float) -> datetime:
        return now - timedelta(days=n)

    old_event = make_shipment(make_order(), "IN_TRANSIT", last_event_at=days(4))
    fresh_event = make_shipment(make_order(), "IN_TRANSIT", last_event_at=days(1))
    no_event_old = make_shipment(make_order(), "PENDING")
    make_shipment(make_order(), "PENDING")  # no event, created just now... see below
    make_shipment(make_order(), "DELIVERED", last_event_at=days(10))  # final
    make_shipment(make_order(), "EXPIRED", last_event_at=days(10))  # final
    exception_old = make_shipment(make_order(), "EXCEPTION", last_event_at=days(3.5))
    with unit_of_work() as s:
        # created_at is server time; age every shipment relative to the simulated now
        s.execute(text("UPDATE shipments SET created_at = :t"), {"t": days(0.5)})
        s.execute(text("UPDATE shipments SET created_at = :t WHERE id = :id"),
                  {"t": days(5), "id": no_event_old})  # fmt: skip
        got = stale_shipments(s, now=now, stale_after_s=3 * 86400, limit=10)
        limited = stale_shipments(s, now=now, stale_after_s=3 * 86400, limit=2)
    assert [g[0] for g in got] == [no_event_old, old_event, exception_old]  # longest quiet first
    assert got[0][2] is None and got[1][2] == days(4)
    assert fresh_event not in [g[0] for g in got]
    assert [g[0] for g in limited] == [no_event_old, old_event]
    assert isinstance(got[0][1], str)  # the order id, for `orderflow orders show`


def test_claim_ahead_takes_the_next_tick_and_reports_when_each_is_due(db):
    """One beat tick claims what falls due before the next one, with its due time, so the
    scheduler can publish each poll for that moment instead of up to a tick late; the minimum
    interval is judged at the due time, not at the claim."""
    tick = 10.0
    overdue = make_shipment(make_order(), next_poll_at=T0 - timedelta(seconds=3))
    soon = make_shipment(make_order(), next_poll_at=T0 + timedelta(seconds=4))
    make_shipment(make_order(), next_poll_at=T0 + timedelta(seconds=tick + 1))  # next tick's
    # Last polled MIN_INTERVAL - 2 s ago: too early now, fine at its due time 5 s from now.
    spaced = make_shipment(
        make_order(), next_poll_at=T0 + timedelta(seconds=5),
        last_polled_at=T0 - timedelta(seconds=MIN_INTERVAL - 2),
    )  # fmt: skip
    # Due in 5 s but polled 1 s ago: still inside its minimum interval then.
    make_shipment(
        make_order(), next_poll_at=T0 + timedelta(seconds=5),
        last_polled_at=T0 - timedelta(seconds=1),
    )  # fmt: skip
    with unit_of_work() as s:
        got = claim_ahead(s, now=T0, horizon_s=tick, limit=10, lease_s=120,
                          min_interval_s=MIN_INTERVAL)  # fmt: skip
    assert got == [
        (overdue, T0),  # overdue: due now
        (soon, T0 + timedelta(seconds=4)),
        (spaced, T0 + timedelta(seconds=5)),
    ]
    # The lease outlives the wait for the due time plus a poll task's life.
    assert get_shipment(soon).lease_until == T0 + timedelta(seconds=tick + 120)
    with unit_of_work() as s:  # leased: a second beat gets none of them
        assert claim_ahead(s, now=T0, horizon_s=tick, limit=10, lease_s=120,
                           min_interval_s=MIN_INTERVAL) == []  # fmt: skip
