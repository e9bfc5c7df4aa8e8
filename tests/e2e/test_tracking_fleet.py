"""The tracking scheduler on the production path, at fleet scale and through a provider outage.

Two real beat processes run ``schedule-tracking`` at once; a real Celery worker runs the poll
tasks, which take tokens from the Redis bucket and query the Kuaidi100 simulator over HTTP.
The simulator's ledger (the receipt time of every query, per waybill and overall) is the judge.

Time is compressed with ``TRACKING_TIME_SCALE`` so a parcel's in-transit cadence (4 h) is
``CADENCE_S`` seconds and Kuaidi100's 30-minute rule is ``MIN_INTERVAL_S``; the simulator locks
a number queried again within that interval and counts it as a throttle violation.
"""

from __future__ import annotations

import itertools
import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from bench.tracking import seed_fleet, wait_log
from models.db import get_engine
from tests.conftest import redis_client, wait_until
from workers.procs import wait_worker_ready

pytestmark = pytest.mark.e2e

SCALE = 480.0  # 4 h in transit -> 30 s; Kuaidi100's 30 min -> 3.75 s
CADENCE_S = 4 * 3600 / SCALE
MIN_INTERVAL_S = 1800 / SCALE
# The fleet test compresses twice as hard (a cadence of 15 s, 1.875 s between queries: still
# above a tick, so a waybill claimed by both beats shows up as too close): it runs a cadence
# and a half, and its due shipments per second stay what they were at ``SCALE``.
FLEET_SCALE = 2 * SCALE
FLEET_CADENCE_S = 4 * 3600 / FLEET_SCALE
FLEET_MIN_INTERVAL_S = 1800 / FLEET_SCALE
TICK_S = 1.0
RATE, BURST = 40.0, 20


def tracking_env(monkeypatch, scale: float = SCALE, **extra: str) -> None:
    """Settings for the processes started next: cadence compressed by ``scale``, a 1 s beat
    tick, the bucket, and the unrelated beat jobs slowed down so they do not compete for the
    CPU."""
    env = {
        "TRACKING_TIME_SCALE": str(scale),
        "TRACKING_MIN_INTERVAL_S": str(1800 / scale),
        "TRACKING_INTERVAL_S": str(TICK_S),
        "TRACKING_RATE_PER_S": str(RATE),
        "TRACKING_BURST": str(BURST),
        "SWEEP_INTERVAL_S": "30",
        "PAYMENT_POLL_INTERVAL_S": "30",
        **extra,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def start_tracking(procs, *, beats: int = 2, threads: int = 8) -> None:
    """One ``tracking,maintenance`` worker and ``beats`` beat processes, all ready."""
    worker = procs.worker("tracking", "tracking,maintenance", concurrency=threads, pool="threads")
    wait_worker_ready(worker)
    for i in range(beats):
        wait_log(procs.beat(f"beat-{i}"), b"beat: Starting", 30.0)


_SPREAD = """
UPDATE shipments s
SET next_poll_at = CASE WHEN x.g <= :due_n
                        THEN CAST(:t0 AS timestamptz)
                             + make_interval(secs => :window * ((x.g * 7919) % :due_n)
                                                     / CAST(:due_n AS float))
                        ELSE CAST(:t0 AS timestamptz) + interval '1 hour' END,
    last_polled_at = NULL, last_event_at = now()
FROM (SELECT id, row_number() OVER (ORDER BY id) AS g FROM shipments
      WHERE booking_key LIKE :pattern) x
WHERE s.id = x.id
RETURNING s.waybill, x.g <= :due_n, extract(epoch FROM s.next_poll_at)"""


def spread_due(prefix: str, *, due_n: int, window_s: float, lead_s: float) -> dict[str, float]:
    """The first ``due_n`` shipments fall due evenly (pseudo-randomly ordered) over
    ``window_s`` from now + ``lead_s``; the rest an hour later. Returns waybill -> due (epoch)
    of the due ones."""
    t0 = datetime.now(UTC) + timedelta(seconds=lead_s)
    params = {"t0": t0, "window": window_s, "due_n": due_n, "pattern": f"bk-{prefix}%"}
    with get_engine().begin() as conn:
        rows = conn.execute(text(_SPREAD), params).all()
    return {waybill: float(due) for waybill, is_due, due in rows if is_due}


def busiest_second(times: Sequence[float]) -> int:
    """Most timestamps inside any window [t, t + 1 s) that starts at one of them."""
    ordered = sorted(times)
    return max((bisect_left(ordered, t + 1.0) - i for i, t in enumerate(ordered)), default=0)


def gaps(times: Iterable[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(sorted(times))]


def test_10k_shipments_two_beats_never_double_poll_stay_in_quota_and_on_cadence(
    pipeline_env, procs, db, monkeypatch
):
    """10,000 active shipments; ``DUE`` of them fall due over one cadence, the rest an hour
    later. Two beats claim concurrently until the simulator has seen every due shipment, and
    again the early ones that are due a second time within ``RUN_S`` of the first due time (a
    cadence and a half). From the simulator's receipt times: no waybill queried twice within
    the minimum interval, the busiest second never above rate + burst, every due shipment first
    queried within a tick (+ slack) of its due time and again within its cadence (+ a tick and
    slack), and none of the not-yet-due ones queried at all."""
    cadence_s, min_interval_s = FLEET_CADENCE_S, FLEET_MIN_INTERVAL_S
    # 20 due per second over a cadence (half the bucket's rate), as 600 were over 30 s.
    due_n, lead_s, slack_s = int(20 * cadence_s), 6.0, 2.0
    run_s = cadence_s * 1.6
    _port, stack = pipeline_env
    sim = stack.kuaidi100
    sim.min_query_interval_s = min_interval_s  # the simulator enforces the compressed rule
    tracking_env(monkeypatch, FLEET_SCALE)
    # No leader lease: both beats send, so their claims really race (a hand-over between two
    # leased beats can send a tick twice too; this shows that is safe).
    monkeypatch.setenv("BEAT_LEASE_S", "0")
    prefix, waybills = seed_fleet(10_000)
    for waybill in waybills:
        sim.register_waybill("yuantong", waybill, "stuck")
    start_tracking(procs)

    due = spread_due(prefix, due_n=due_n, window_s=cadence_s, lead_s=lead_s)
    t0 = min(due.values())
    end = t0 + run_s
    # Due a second time within the run: their second query is judged (``late_again``).
    again = {w for w, at in due.items() if at + cadence_s + TICK_S + slack_s < end}

    def missing() -> dict[str, int]:
        """Due waybills not yet queried as often as the run needs: once, twice for ``again``."""
        queries = sim.ledger()["queries"]
        return {w: n for w in due if (n := queries.get(w, {}).get("count", 0))
                < (2 if w in again else 1)}  # fmt: skip

    wait_until(lambda: not missing(), end - time.time() + 60, 1.0,
               show=lambda: dict(itertools.islice(missing().items(), 10)))  # fmt: skip
    for proc in procs.procs:
        assert proc.alive(), proc.log_tail()
        if proc.name.startswith("beat-"):  # both beats really ran the scheduler
            assert b"Sending due task schedule-tracking" in proc.log_path.read_bytes()
    ledger = sim.ledger()
    stopped = time.time()
    queries: dict[str, Any] = ledger["queries"]

    not_due = [w for w in waybills if w not in due and queries.get(w, {}).get("count")]
    lags, late_first, late_again, too_close = [], [], [], []
    polls = 0
    for waybill, due_at in due.items():
        stamps = sorted(queries.get(waybill, {}).get("timestamps", []))
        polls += len(stamps)
        first = stamps[0] if stamps else stopped
        lags.append(first - due_at)
        if not -0.05 <= first - due_at <= TICK_S + slack_s:
            late_first.append((waybill, round(first - due_at, 2)))
        between = gaps(stamps)
        too_close += [(waybill, g) for g in between if g < min_interval_s]
        late_again += [(waybill, round(g, 2)) for g in between if g > cadence_s + TICK_S + slack_s]
        # Due again one cadence after the first poll, before the run ended: queried again.
        if stamps and stamps[0] + cadence_s + TICK_S + slack_s < stopped and len(stamps) < 2:
            late_again.append((waybill, None))
    ran_s = stopped - t0
    steady = [t for t in ledger["query_times"] if t0 <= t <= stopped]
    lags.sort()
    print(
        f"\n[tracking fleet] 10,000 shipments, {due_n} due over {cadence_s:.0f} s, 2 beats "
        f"(tick {TICK_S:g} s), 1 worker x 8 threads, bucket {RATE:g}/s burst {BURST}: "
        f"{polls} polls in {ran_s:.0f} s = {len(steady) / ran_s:.1f} polls/s "
        f"(busiest second {busiest_second(ledger['query_times'])}); first-poll lag "
        f"mean {sum(lags) / len(lags):.2f} s, p99 {lags[int(len(lags) * 0.99)]:.2f} s, "
        f"max {lags[-1]:.2f} s"
    )
    assert ledger["throttle_violations"] == 0
    assert too_close == []  # never twice within the minimum interval
    assert not_due == []  # nothing queried before its time
    assert busiest_second(ledger["query_times"]) <= RATE + BURST  # the quota, never exceeded
    assert late_first == [], late_first[:10]  # first refresh on time
    assert late_again == [], late_again[:10]  # and again within its cadence
    assert ledger["quota_rejections"] == 0


def test_provider_down_backs_off_then_recovers_without_a_burst(
    pipeline_env, procs, db, monkeypatch
):
    """200 shipments due while Kuaidi100 answers every query "502 server busy", until the
    pollers have tried at least once per shipment and the circuit has opened, let a probe
    through after its cool-down and opened again. Failed polls back off (``next_poll_at``
    pushed out, ``poll_failures`` counted), the circuit opens and the poll tasks hand their
    shipments back instead of querying. When the provider is back, the
    backlog is worked off at the bucket's pace: no second ever sees more than rate + burst
    queries, and every shipment ends refreshed with its failures reset."""
    n = 200
    # Below what the worker can do, so the bucket, not the CPU, paces the recovery; above what
    # the shipments need once refreshed (n / CADENCE_S), so the backlog drains.
    rate, burst = 15.0, 5
    _port, stack = pipeline_env
    sim = stack.kuaidi100
    sim.min_query_interval_s = MIN_INTERVAL_S
    tracking_env(monkeypatch, CIRCUIT_COOLDOWN_S="3", CIRCUIT_MIN_CALLS="10",
                 CIRCUIT_WINDOW_S="5", TRACKING_RATE_PER_S=str(rate),
                 TRACKING_BURST=str(burst))  # fmt: skip
    prefix, waybills = seed_fleet(n)
    for waybill in waybills:
        sim.register_waybill("yuantong", waybill, "stuck")
    sim.set_faults(business_error="502")
    start_tracking(procs, beats=1)
    spread_due(prefix, due_n=n, window_s=2.0, lead_s=1.0)
    outage_from = time.monotonic()
    seen = {"opened": False}

    def outage_played_out() -> dict[str, int] | None:
        """Poll attempts (queries made, and skipped while open) and circuit openings on the
        timelines, once there were at least ``n`` attempts (without the circuit as many queries:
        enough for hammering to show) and two openings (the second after a failed probe)."""
        seen["opened"] = seen["opened"] or bool(redis_client().exists("circuit:kuaidi100:open"))
        with get_engine().connect() as conn:
            tries, opens = conn.execute(
                text("""SELECT count(*), count(*) FILTER (WHERE detail->>'circuit' = 'opened')
                        FROM order_events WHERE kind IN ('provider_call', 'provider_wait')
                        AND detail->>'provider' = 'kuaidi100'"""),
            ).one()  # fmt: skip
        counts = {"tries": tries, "opens": opens}
        return counts if tries >= n and opens >= 2 else None

    outage = wait_until(outage_played_out, 120, 0.1)
    opened = seen["opened"]
    outage_s = time.monotonic() - outage_from
    with get_engine().connect() as conn:
        failed, pushed_out = conn.execute(
            text("""SELECT count(*) FILTER (WHERE poll_failures >= 1),
                           count(*) FILTER (WHERE poll_failures >= 1
                                            AND next_poll_at >= last_polled_at + :base)
                    FROM shipments"""),
            {"base": timedelta(seconds=1800 / SCALE * 0.99)},
        ).one()  # fmt: skip
    down = sim.ledger()["query_times"]
    recovered_at = time.time()
    sim.set_faults(business_error=None)

    def all_refreshed() -> bool:
        with get_engine().connect() as conn:
            return not conn.execute(
                text("SELECT count(*) FROM shipments WHERE poll_failures > 0 "
                     "OR status = 'INFO_RECEIVED' OR coalesce(last_polled_at < :t, true)"),
                {"t": datetime.fromtimestamp(recovered_at, UTC)},
            ).scalar_one()  # fmt: skip

    def where() -> object:
        with get_engine().connect() as conn:
            return conn.execute(
                text("SELECT status, poll_failures, lease_until > now(), "
                     "coalesce(last_polled_at >= :t, false), count(*), "
                     "min(next_poll_at - now()), max(next_poll_at - now()) FROM shipments "
                     "GROUP BY 1, 2, 3, 4"),
                {"t": datetime.fromtimestamp(recovered_at, UTC)},
            ).all()  # fmt: skip

    wait_until(all_refreshed, 120, show=where)
    ledger = sim.ledger()
    after = [t for t in ledger["query_times"] if t >= recovered_at]
    print(
        f"\n[tracking outage] {n} shipments due during a {outage_s:.1f} s outage: "
        f"{len(down)} failed queries of {outage['tries']} tries, {failed} shipments backing off, "
        f"circuit opened: {opened} ({outage['opens']} times); "
        f"after recovery {len(after)} queries, busiest second {busiest_second(after)} "
        f"(bucket {rate:g}/s + burst {burst}), {len(after) / (after[-1] - after[0]):.1f} "
        "polls/s"
    )
    assert failed > 0 and pushed_out == failed  # backoff: at least error_base after a failure
    assert opened  # the circuit opened ...
    assert len(down) < n  # ... and its hand-backs kept the outage from being hammered
    assert busiest_second(ledger["query_times"]) <= rate + burst
    assert busiest_second(after) <= rate + burst  # no burst over quota on recovery
    assert ledger["throttle_violations"] == 0
