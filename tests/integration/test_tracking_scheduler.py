"""The tracking scheduler on real PostgreSQL and Redis: concurrent claims, the token bucket, a
provider outage, forward-only results and the staleness query."""

from __future__ import annotations

import itertools
import random
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, text

from adapters.logistics.base import TrackingEvent as Ev
from adapters.logistics.base import TrackingResult, TrackingStatus
from adapters.ratelimit import TokenBucket
from domain.tracking import Cadence
from models import Order, OrderEvent, Shipment, TrackingEvent
from services.tracking import (
    apply_result,
    claim_ahead,
    claim_due,
    poll_targets,
    record_poll,
    release_lease,
    stale_shipments,
)
from services.unit_of_work import unit_of_work
from tests.conftest import redis_client

TS = TrackingStatus
CN = timezone(timedelta(hours=8))  # Kuaidi100 reports Beijing time
CADENCE = Cadence()
MIN_INTERVAL = CADENCE.min_interval
T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)


# -- builders -------------------------------------------------------------------------------


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


# -- (a) two concurrent claimers over 10,000 shipments --------------------------------------

#: The fleet: (shipment status, order status, cadence, share of g % 20). Mostly in transit,
#: with a few new and out-for-delivery parcels polled 2x and 4x as often.
FLEET = [
    ("IN_TRANSIT", "IN_TRANSIT", CADENCE.in_transit, range(0, 18)),
    ("INFO_RECEIVED", "SHIPPED", CADENCE.new, range(18, 19)),
    ("OUT_FOR_DELIVERY", "IN_TRANSIT", CADENCE.last_mile, range(19, 20)),
]


def _insert_fleet(n: int, t0: datetime) -> None:
    """n orders + shipments in two INSERT … SELECT generate_series statements. Each shipment's
    first poll is spread evenly (pseudo-randomly) over its cadence, as in a steady state."""
    status_case = " ".join(
        f"WHEN g % 20 IN ({','.join(map(str, share))}) THEN '{st}'" for st, _, _, share in FLEET
    )
    order_case = " ".join(
        f"WHEN g % 20 IN ({','.join(map(str, share))}) THEN '{os}'" for _, os, _, share in FLEET
    )
    cadence_case = " ".join(
        f"WHEN g % 20 IN ({','.join(map(str, share))}) THEN {c}" for _, _, c, share in FLEET
    )
    with unit_of_work() as s:
        s.execute(
            text(f"""
            INSERT INTO orders (id, source, external_id, body_hash, status, currency,
                                total_amount, payment_provider, shipping_address)
            SELECT 'o-' || g, 'bench', 'x-' || g, 'h', CASE {order_case} END, 'CNY', 1000,
                   'alipay', '{{"phone": "13800000000"}}'::jsonb
            FROM generate_series(1, :n) g
            """),
            {"n": n},
        )
        s.execute(
            text(f"""
            INSERT INTO shipments (order_id, booking_key, carrier, waybill, status, raw_state,
                                   next_poll_at, last_polled_at, last_event_at)
            SELECT 'o-' || g, 'bk-' || g, 'yuantong', 'YT' || lpad(g::text, 10, '0'),
                   CASE {status_case} END, '0', npa, npa - make_interval(secs => cad),
                   :t0 - interval '1 hour'
            FROM (SELECT g, CASE {cadence_case} END AS cad,
                         :t0 + make_interval(secs => ((g * 7919) % 10007) / 10007.0
                                                     * CASE {cadence_case} END) AS npa
                  FROM generate_series(1, :n) g) x
            """),
            {"n": n, "t0": t0},
        )


def _fake_provider(statuses: dict[int, str], ids: list[int], now: datetime):
    """The provider's answer for each shipment: same status, one new scan a minute ago."""
    for sid in ids:
        st = TS(statuses[sid])
        scan = ev(now - timedelta(minutes=1), st, "0", f"scan {sid} at {now.isoformat()}")
        yield sid, res(st, scan, waybill=f"YT{sid:010d}")


def test_two_claimers_10k_shipments_no_double_claim_and_lag_under_one_tick(db):
    """Two beats (threads, own sessions) claim and record concurrently over a simulated
    4 h 2 min. Beat tick = 60 simulated seconds: at every tick each claimer claims batches of
    BATCH until claim_due comes back empty, so the lag of a claim (``now - next_poll_at``) is
    under one tick exactly when nothing due is missed — not by SKIP LOCKED, a stale lease or
    the other claimer. Real time measures throughput (polls/s)."""
    n, tick, batch = 10_000, 60.0, 25
    end = T0 + timedelta(hours=4, minutes=2)
    _insert_fleet(n, T0)
    with unit_of_work() as s:
        statuses = dict(s.execute(select(Shipment.id, Shipment.status)).all())
        first_due = dict(s.execute(select(Shipment.id, Shipment.next_poll_at)).all())
    cadence_of = {st: c for st, _, c, _ in FLEET}

    clock = {"now": T0}
    start, done = threading.Barrier(3), threading.Barrier(3)
    stop = threading.Event()
    claims: list[tuple[int, datetime]] = []
    lags: list[float] = []
    errors: list[BaseException] = []
    busy = [0.0, 0.0]
    lock = threading.Lock()

    def claimer(idx: int) -> None:
        while True:
            start.wait()
            if stop.is_set():
                return
            now = clock["now"]
            t = time.perf_counter()
            try:
                while True:
                    with unit_of_work() as s:
                        ids = claim_due(
                            s, now=now, limit=batch, lease_s=300, min_interval_s=MIN_INTERVAL
                        )
                    if not ids:
                        break
                    with unit_of_work() as s:
                        due = dict(
                            s.execute(
                                select(Shipment.id, Shipment.next_poll_at).where(
                                    Shipment.id.in_(ids)
                                )
                            ).all()
                        )
                        for sid, result in _fake_provider(statuses, ids, now):
                            record_poll(s, sid, now=now, result=result, failed=False,
                                        cadence=CADENCE, has_push=False)  # fmt: skip
                    with lock:
                        claims.extend((sid, now) for sid in ids)
                        lags.extend((now - due[sid]).total_seconds() for sid in ids)
            except BaseException as exc:
                errors.append(exc)
            busy[idx] += time.perf_counter() - t
            done.wait()

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    wall = time.perf_counter()
    ticks = 0
    while clock["now"] <= end and not errors:
        start.wait()
        done.wait()
        ticks += 1
        clock["now"] += timedelta(seconds=tick)
    stop.set()
    start.wait()
    for th in threads:
        th.join()
    wall = time.perf_counter() - wall
    assert errors == []

    by_id: dict[int, list[datetime]] = defaultdict(list)
    for sid, at in claims:
        by_id[sid].append(at)
    polls = len(claims)
    print(
        f"\n[tracking scheduler] {n} shipments, 2 claimers, {ticks} ticks of {tick:.0f} s "
        f"simulated, batch {batch}: {polls} polls in {wall:.1f} s real = "
        f"{polls / wall:.0f} polls/s (claim+record, incl. barriers); busy per claimer "
        f"{busy[0]:.1f}/{busy[1]:.1f} s; lag mean {sum(lags) / len(lags):.1f} s, "
        f"max {max(lags):.2f} s simulated (tick {tick:.0f} s); the fleet needs "
        f"{sum(len(sh) / 20 / c for *_, c, sh in FLEET) * n:.2f} polls/s"
    )

    # Every claim was served within the tick it became due in.
    assert min(lags) >= 0 and max(lags) < tick
    # Never claimed twice within the minimum interval, by either claimer.
    for sid, times in by_id.items():
        times.sort()
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        assert all(g >= MIN_INTERVAL for g in gaps), (sid, gaps)
        # ... and refreshed within its cadence (+ one tick of quantization).
        assert times[0] - first_due[sid] < timedelta(seconds=tick)
        assert all(g <= cadence_of[statuses[sid]] + tick for g in gaps), (sid, gaps)
    assert len(by_id) == n  # every shipment was polled
    with unit_of_work() as s:
        assert s.scalar(select(func.count()).select_from(TrackingEvent)) == polls  # 1 new each
        assert s.scalar(select(func.count()).where(Shipment.lease_until.is_not(None))) == 0
        assert s.scalar(select(func.max(Shipment.poll_failures))) == 0
        # Scheduled exactly one cadence after the last poll, and nobody is overdue at the end.
        wrong = s.execute(
            text("""
                SELECT count(*) FROM shipments
                WHERE extract(epoch FROM next_poll_at - last_polled_at) <> CASE status
                        WHEN 'IN_TRANSIT' THEN :it WHEN 'INFO_RECEIVED' THEN :new ELSE :lm END
                   OR next_poll_at <= :end
            """),
            {"it": CADENCE.in_transit, "new": CADENCE.new, "lm": CADENCE.last_mile,
             "end": clock["now"] - timedelta(seconds=tick)},
        ).scalar_one()  # fmt: skip
        assert wrong == 0


# -- (b) token bucket under concurrency -----------------------------------------------------


def test_token_bucket_concurrent_threads_never_exceed_rate(db):
    rate, burst, threads_n, duration = 50.0, 10, 8, 2.0
    granted = [0] * threads_n
    calls = [0] * threads_n
    go = threading.Barrier(threads_n + 1)
    stamps: list[float] = []

    def hammer(i: int) -> None:
        bucket = TokenBucket(redis_client(), "kuaidi100", rate_per_s=rate, burst=burst)
        go.wait()
        stamps.append(time.monotonic())
        while time.monotonic() - stamps[0] < duration:
            # half the threads take single tokens, half take batches
            got = int(bucket.try_acquire()) if i % 2 else bucket.reserve(3)
            granted[i] += got
            calls[i] += 1
        stamps.append(time.monotonic())

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(threads_n)]
    for th in threads:
        th.start()
    go.wait()
    for th in threads:
        th.join()
    elapsed = max(stamps) - min(stamps)
    total = sum(granted)
    ceiling = burst + rate * elapsed
    print(
        f"\n[token bucket] {threads_n} threads, {sum(calls)} calls in {elapsed:.2f} s: "
        f"{total} tokens granted, ceiling burst + rate x elapsed = {ceiling:.1f}"
    )
    assert total <= ceiling + 1  # +1: the calls bracketing the timing window
    assert total >= rate * elapsed * 0.8  # hammering gets (nearly) every token minted


def test_token_bucket_partial_reserve_all_or_nothing_and_expiry(db):
    client = redis_client()
    bucket = TokenBucket(client, "kuaidi100", rate_per_s=2.0, burst=5, account="acct-1")
    other = TokenBucket(client, "kuaidi100", rate_per_s=2.0, burst=5, account="acct-2")
    assert bucket.reserve(8) == 5  # a batch gets what there is
    assert bucket.reserve(3) == 0
    assert not bucket.try_acquire()
    assert other.try_acquire(5)  # accounts do not share tokens
    time.sleep(1.1)  # ~2.2 tokens minted
    assert not bucket.try_acquire(3)  # all or nothing ...
    assert bucket.try_acquire(2)  # ... and the refusal took nothing
    ttl = client.pttl(bucket.key)
    assert 0 < ttl <= 3_600  # expires about when it would be full again (+1 s)
    with pytest.raises(ValueError):
        TokenBucket(client, "x", rate_per_s=0, burst=1)
    assert bucket.reserve(0) == 0


# -- (c) provider down: backoff, recovery, and the rate limit ------------------------------


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


def test_rate_limited_claims_never_exceed_the_bucket(db):
    """300 shipments due while the provider is down; a beat claims batches, polls only what the
    bucket grants and hands the rest back. Real time, since the bucket runs on Redis's clock."""
    rate, burst, n = 20.0, 5, 300
    with unit_of_work() as s:
        s.execute(
            text("""
            INSERT INTO orders (id, source, external_id, body_hash, status, currency,
                                total_amount, payment_provider, shipping_address)
            SELECT 'r-' || g, 'rl', 'r-' || g, 'h', 'IN_TRANSIT', 'CNY', 1, 'alipay', '{}'
            FROM generate_series(1, :n) g;
            INSERT INTO shipments (order_id, booking_key, carrier, waybill, status, next_poll_at)
            SELECT 'r-' || g, 'rb-' || g, 'zto', 'ZT' || lpad(g::text, 10, '0'), 'IN_TRANSIT',
                   now() - interval '1 minute'
            FROM generate_series(1, :n) g
            """),
            {"n": n},
        )
    bucket = TokenBucket(redis_client(), "kuaidi100", rate_per_s=rate, burst=burst)
    polled: list[tuple[int, float]] = []
    released = 0
    # The bucket refills by Redis server time, so its ceiling is judged by that clock too: a
    # wall-clock step on the machine moves both, while time.monotonic would not.
    server_start = _server_time()
    t_start = time.monotonic()
    while time.monotonic() - t_start < 1.5:
        now = datetime.now(UTC)
        with unit_of_work() as s:
            ids = claim_due(s, now=now, limit=50, lease_s=60, min_interval_s=MIN_INTERVAL)
        granted = bucket.reserve(len(ids))
        stamp = time.monotonic()
        with unit_of_work() as s:
            for sid in ids[:granted]:  # the provider is down: every query fails
                record_poll(s, sid, now=now, result=None, failed=True, cadence=CADENCE,
                            has_push=False, error="HTTP 502")  # fmt: skip
                polled.append((sid, stamp))
            release_lease(s, ids[granted:], now=now, retry_in_s=0.05)
            released += len(ids) - granted
        time.sleep(0.01)
    elapsed = max(time.monotonic() - t_start, _server_time() - server_start)
    ceiling = burst + rate * elapsed
    window = max(
        sum(1 for _, t in polled if a <= t < a + 1.0) for _, a in polled
    )  # busiest 1-second window
    print(
        f"\n[rate limit] {len(polled)} polls in {elapsed:.2f} s (ceiling {ceiling:.1f}); "
        f"busiest 1 s window {window} (ceiling {burst + rate:.0f}); {released} hand-backs"
    )
    assert 0 < len(polled) <= ceiling + 1
    assert window <= burst + rate + 1
    assert released > 0
    ids = [sid for sid, _ in polled]
    assert len(set(ids)) == len(ids)  # never twice within the minimum interval
    with unit_of_work() as s:
        rows = s.execute(
            select(
                Shipment.poll_failures, Shipment.last_polled_at.is_(None), func.count()
            ).group_by(Shipment.poll_failures, Shipment.last_polled_at.is_(None))
        ).all()
        counts = {(f, never): c for f, never, c in rows}
        assert counts.get((1, False), 0) == len(polled)  # polled: one failure recorded
        assert counts.get((0, True), 0) == n - len(polled)  # handed back: never polled
        assert s.scalar(select(func.count()).where(Shipment.lease_until.is_not(None))) == 0
        backoff = s.execute(
            select(func.min(Shipment.next_poll_at - Shipment.last_polled_at)).where(
                Shipment.poll_failures == 1
            )
        ).scalar_one()
        assert backoff == timedelta(seconds=CADENCE.error_base)


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


# -- (d) applying results: dedup, forward only, the order follows ---------------------------


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
    assert get_order(oid).status == "COMPLETED"
    assert transitions(oid) == [
        ("SHIPPED", "IN_TRANSIT"), ("IN_TRANSIT", "DELIVERED"), ("DELIVERED", "COMPLETED"),
    ]  # fmt: skip
    applied = [(d.get("ignored"), d["new_events"]) for d in tracking_entries(oid)]
    assert applied == [
        (None, 2), (None, 1), ("stale", 0), ("not_forward", 1), (None, 1), ("not_forward", 1),
    ]  # fmt: skip


def test_delivered_straight_from_shipped_completes_the_order(db):
    oid = make_order("SHIPPED")
    sid = make_shipment(oid)
    apply(sid, res(TS.DELIVERED, ev(T0, TS.DELIVERED, "304", "快递柜签收"), raw_state="304"))
    assert get_order(oid).status == "COMPLETED"
    assert transitions(oid) == [("SHIPPED", "DELIVERED"), ("DELIVERED", "COMPLETED")]


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
    assert get_order(oid).status == "COMPLETED"
    moves = transitions(oid)
    assert moves[-2:] == [("IN_TRANSIT", "DELIVERED"), ("DELIVERED", "COMPLETED")] or moves == [
        ("SHIPPED", "DELIVERED"), ("DELIVERED", "COMPLETED"),
    ]  # fmt: skip
    assert len(moves) == len(set(moves))


# -- (e) staleness --------------------------------------------------------------------------


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


def _server_time() -> float:
    seconds, micros = redis_client().time()
    return seconds + micros / 1_000_000


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


# -- (e) the poll task: a chunk is safe to run again, or twice at once ----------------------


@pytest.fixture
def k100(db, monkeypatch):
    """A Kuaidi100 simulator over HTTP whose per-number lock is longer than the test (any
    second query of a waybill is a throttle violation in its ledger), and the settings the
    poll task reads pointing at it. The task body runs in this process; the provider, the
    database and the Redis bucket are the real ones."""
    import secrets

    from adapters import registry
    from settings import get_settings
    from simulators.kuaidi100 import Kuaidi100Simulator
    from workers import ports

    key = secrets.token_hex(8)
    sim = Kuaidi100Simulator("K100TEST", key, time_scale=1.0, min_query_interval_s=600.0).start()
    env = {
        "KUAIDI100_QUERY_URL": f"{sim.url}/poll/query.do",
        "KUAIDI100_SUBSCRIBE_URL": f"{sim.url}/poll",
        "KUAIDI100_CUSTOMER": "K100TEST",
        "KUAIDI100_KEY": key,
        "KUAIDI100_CALLBACK_SALT": "salt",
        "TRACKING_MIN_INTERVAL_S": "600",
        "TRACKING_RATE_PER_S": "200",
        "TRACKING_BURST": "200",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    registry.reset()
    ports.tracking_quota.cache_clear()
    try:
        yield sim
    finally:
        sim.stop()
        get_settings.cache_clear()
        registry.reset()
        ports.tracking_quota.cache_clear()


def _due_fleet(sim, n: int, *, due: datetime) -> dict[int, str]:
    """n shipments due at ``due``, their waybills known to the simulator: id -> waybill."""
    fleet = {}
    for _ in range(n):
        waybill = "YT" + uuid.uuid4().hex[:12].upper()
        sim.register_waybill("yuantong", waybill, "normal")
        fleet[make_shipment(make_order("SHIPPED"), next_poll_at=due, waybill=waybill)] = waybill
    sim.advance(3 * 3600)  # the first scans are visible: a query finds a trace
    return fleet


def _claim(now: datetime, lease_s: float = 120.0) -> tuple[list[int], str]:
    from services.tracking import lease_expiry

    with unit_of_work() as s:
        ids = claim_due(s, now=now, limit=100, lease_s=lease_s, min_interval_s=600.0)
    return ids, lease_expiry(now, horizon_s=0.0, lease_s=lease_s).isoformat()


def _queries(sim, fleet: dict[int, str]) -> dict[str, int]:
    queries = sim.ledger()["queries"]
    return {w: queries.get(w, {}).get("count", 0) for w in fleet.values()}


def test_a_chunk_retried_partway_never_queries_a_waybill_twice(k100, monkeypatch):
    """The 4th member's record fails for a non-provider reason (a lost database connection):
    the task raises for a retry after three queries were recorded and a fourth sent. The retry
    queries only the four not yet sent; a redelivery after that queries nothing. The member
    whose outcome was lost is handed back, due once its minimum interval has passed."""
    import sqlalchemy.exc

    from services.tracking import poll as svc
    from tasks.tracking import poll

    fleet = _due_fleet(k100, 8, due=datetime.now(UTC) - timedelta(seconds=5))
    ids, token = _claim(datetime.now(UTC))
    assert sorted(ids) == sorted(fleet)
    real_record, calls = svc.record_poll, []

    def flaky_record(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 4:
            raise sqlalchemy.exc.OperationalError("UPDATE shipments", {}, Exception("conn lost"))
        return real_record(*args, **kwargs)

    monkeypatch.setattr(svc, "record_poll", flaky_record)
    with pytest.raises(sqlalchemy.exc.OperationalError):
        poll(ids, token)  # called directly, retry() re-raises the retryable error
    assert sorted(_queries(k100, fleet).values()) == [0] * 4 + [1] * 4
    lost = calls[3]

    assert poll(ids, token) == 4  # the retry: only the four never sent
    assert poll(ids, token) == 0  # a redelivery after that: nothing
    ledger = k100.ledger()
    assert _queries(k100, fleet) == {w: 1 for w in fleet.values()}
    assert ledger["throttle_violations"] == 0
    handed_back = get_shipment(lost)
    assert handed_back.lease_until is None and handed_back.last_polled_at is not None
    assert handed_back.next_poll_at >= handed_back.last_polled_at + timedelta(seconds=600)
    with unit_of_work() as s:
        leased = s.scalar(select(func.count()).where(Shipment.lease_until.is_not(None)))
        recorded = s.scalar(select(func.count()).where(Shipment.poll_failures == 0,
                                                       Shipment.status != "PENDING"))  # fmt: skip
    assert leased == 0 and recorded == 7  # the lost one's answer never landed


def test_a_chunk_delivered_after_its_lease_was_reclaimed_queries_nothing(k100):
    """A poll task that arrives after its lease expired and its shipments were claimed again
    (a long broker delay, a redelivery after the visibility timeout) finds none of them."""
    from tasks.tracking import poll

    now = datetime.now(UTC)
    fleet = _due_fleet(k100, 5, due=now - timedelta(seconds=60))
    ids, old_token = _claim(now - timedelta(seconds=30), lease_s=1.0)  # expired 29 s ago
    again, new_token = _claim(now)
    assert sorted(again) == sorted(ids) and new_token > old_token
    assert poll(ids, old_token) == 0
    assert _queries(k100, fleet) == {w: 0 for w in fleet.values()}
    assert poll(again, new_token) == 5
    assert poll(ids, old_token) == 0
    assert _queries(k100, fleet) == {w: 1 for w in fleet.values()}


def test_two_copies_of_a_chunk_at_once_query_each_waybill_once(k100):
    """An acks-late redelivery can run beside the original: the atomic take before each query
    lets exactly one of them query a waybill."""
    from tasks.tracking import poll

    k100.set_faults(latency_ms=30)  # both copies are mid-chunk together
    fleet = _due_fleet(k100, 12, due=datetime.now(UTC) - timedelta(seconds=5))
    ids, token = _claim(datetime.now(UTC))
    done: list[int] = []
    threads = [threading.Thread(target=lambda: done.append(poll(ids, token))) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sum(done) == 12, done
    assert _queries(k100, fleet) == {w: 1 for w in fleet.values()}
    assert k100.ledger()["throttle_violations"] == 0


def test_a_push_since_the_last_poll_defers_the_fallback_poll(k100):
    """Polling is the fallback: a shipment that got a push since its last poll is handed back,
    due one push-stretched interval after that push, and not queried."""
    from tasks.tracking import poll
    from workers.ports import tracking_config

    now = datetime.now(UTC)
    fleet = _due_fleet(k100, 2, due=now - timedelta(seconds=5))
    pushed, quiet = sorted(fleet)
    with unit_of_work() as s:
        s.execute(
            text("UPDATE shipments SET subscribed = true, last_push_at = :at, "
                 "last_polled_at = :polled WHERE id = :id"),
            {"at": now - timedelta(seconds=60), "polled": now - timedelta(hours=2), "id": pushed},
        )  # fmt: skip
    ids, token = _claim(now)
    assert poll(ids, token) == 1
    assert _queries(k100, fleet) == {fleet[pushed]: 0, fleet[quiet]: 1}
    deferred = get_shipment(pushed)
    c = tracking_config().cadence
    expected = c.new * c.push_multiplier  # PENDING, with pushes
    assert deferred.lease_until is None
    assert deferred.next_poll_at == now - timedelta(seconds=60) + timedelta(seconds=expected)


def test_the_bucket_belongs_to_the_provider_account(k100):
    from workers.ports import tracking_quota

    assert tracking_quota().key == "ratelimit:kuaidi100:K100TEST"
