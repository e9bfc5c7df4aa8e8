"""Two concurrent claimers over 10,000 shipments on real PostgreSQL: nothing is claimed twice
within the minimum interval, nothing due is missed for longer than one beat tick, and every
shipment is refreshed within its cadence. Simulated time drives the beat; real time only
measures throughput."""

from __future__ import annotations

import itertools
import threading
import time
from collections import defaultdict
from datetime import datetime, timedelta

from sqlalchemy import func, select, text

from models import Shipment, TrackingEvent
from services.tracking import claim_due, record_poll
from services.unit_of_work import unit_of_work
from tests.integration.tracking_support import CADENCE, MIN_INTERVAL, T0, TS, ev, res

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
