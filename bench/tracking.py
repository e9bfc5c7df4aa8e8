"""Tracking figures: Kuaidi100 polls per second and scheduler lag with 10,000 active shipments.

The fleet is seeded with set-based SQL in the bench database: ``n`` orders (90 % IN_TRANSIT,
10 % SHIPPED) with one shipment each (carrier ``yuantong``, status IN_TRANSIT or INFO_RECEIVED,
not subscribed to pushes) whose waybill is registered at the Kuaidi100 simulator with the
``stuck`` script (a first leg of three scans, then no news: a parcel that stays active). Once
beat and the worker are up, one UPDATE spreads their due times (``next_poll_at``) evenly, in a
pseudo-random order, over one cadence starting ``lead_s`` from now: the steady state of a fleet
in which every parcel is polled once per cadence, so it needs ``n / cadence_s`` polls/s. The
per-waybill minimum interval is longer than the run, so no shipment is due twice.

The real path runs meanwhile: a beat process (``schedule-tracking`` every ``tick_s``) and a
Celery worker on ``tracking,maintenance``. Beat's task claims due shipments (FOR UPDATE SKIP
LOCKED, leased) and enqueues ``tracking.poll`` chunks, which take tokens from the Redis bucket,
query the simulator over HTTP and record the result.

Measured, never assumed, from the simulator's log of every query (receipt time, same host
clock as the seeded due times):

* lag: for each shipment due in the first ``measure_s`` of the cadence, the receipt time of the
  first query for its waybill minus its ``next_poll_at``;
* steady polls/s: the queries for those shipments over the span from the first to the last;
* drain polls/s: afterwards ``backlog`` shipments not due yet are made due at once; every query
  of the fleet between the first and the last query of the backlog, over that span — what the
  same processes do when there is more to poll than time.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from statistics import fmean
from typing import Any

from sqlalchemy import text

from bench.common import percentile, wait_for
from bench.journey import park_earlier_work
from bench.pipeline import WorkerSpec
from models.db import get_engine
from workers.embedded import exported_env
from workers.procs import Proc, ProcessGroup, wait_worker_ready

SOURCE = "bench-tracking"
ADDRESS = {"name": "Bench", "phone": "13800000000", "line1": "1 Bench Road", "country": "CN"}

_SEED_ORDERS = """
INSERT INTO orders (id, source, external_id, body_hash, customer_ref, status, currency,
                    total_amount, payment_provider, shipping_address)
SELECT :prefix || g, :source, :prefix || g, 'bench', 'bench-customer',
       CASE WHEN g % 10 = 0 THEN 'SHIPPED' ELSE 'IN_TRANSIT' END, 'CNY', 1990, 'alipay',
       CAST(:address AS jsonb)
FROM generate_series(1, :n) g"""
_SEED_SHIPMENTS = """
INSERT INTO shipments (order_id, booking_key, carrier, waybill, status, raw_state, last_event_at)
SELECT :prefix || g, 'bk-' || :prefix || g, 'yuantong', :waybill || lpad(g::text, 8, '0'),
       CASE WHEN g % 10 = 0 THEN 'INFO_RECEIVED' ELSE 'IN_TRANSIT' END,
       CASE WHEN g % 10 = 0 THEN '1' ELSE '0' END, now() - interval '1 hour'
FROM generate_series(1, :n) g
RETURNING waybill"""
# Due times: an even spread over the window, in a pseudo-random order of the shipments; the
# last poll one minimum interval earlier, so each becomes claimable exactly at its due time.
_MAKE_DUE = """
UPDATE shipments s
SET next_poll_at = x.due, last_polled_at = x.due - make_interval(secs => :min_interval)
FROM (SELECT id, CAST(:t0 AS timestamptz) + make_interval(
                 secs => :window * ((g * 7919) % :modulus) / CAST(:modulus AS float)) AS due
      FROM (SELECT id, row_number() OVER (ORDER BY id) AS g
            FROM shipments WHERE booking_key LIKE :pattern) r) x
WHERE s.id = x.id
RETURNING s.waybill, extract(epoch FROM x.due)"""
_UNPOLLED = """SELECT count(*) FROM shipments
WHERE booking_key LIKE :pattern AND last_polled_at < :t0 AND next_poll_at <= :until"""
# The backlog: shipments not due for a while are made due at once.
_BACKLOG = """
UPDATE shipments SET next_poll_at = :now, last_polled_at = :now - make_interval(secs => :mi)
WHERE id IN (SELECT id FROM shipments
             WHERE booking_key LIKE :pattern AND next_poll_at > :later AND last_polled_at < :t0
             ORDER BY next_poll_at DESC LIMIT :k)
RETURNING waybill"""
_MODULUS = 10_007  # a prime above the fleet size: (g * 7919) % p is a permutation of 1..n


@dataclass(frozen=True)
class TrackingConfig:
    """Settings of one tracking run; :meth:`env` exports the TRACKING_* ones to the processes.

    Every shipment is due once per ``cadence_s`` (the fleet needs ``shipments / cadence_s``
    polls/s); lags are sampled over the first ``measure_s`` of it. Then ``backlog`` shipments
    not due yet are made due at once, to see how fast the same processes drain a backlog.
    """

    shipments: int = 10_000
    cadence_s: float = 400.0
    measure_s: float = 30.0
    backlog: int = 600
    tick_s: float = 5.0
    min_interval_s: float = 900.0  # longer than the run: each shipment is due once
    rate_per_s: float = 2_000.0
    burst: int = 2_000
    batch: int = 200  # the default: a tick claims batches until the quota's share is met
    chunk: int = 20
    workers: tuple[WorkerSpec, ...] = (WorkerSpec("tracking,maintenance", 8, "threads"),)
    # Due times start more than a tick after they are written, as in steady state (a poll sets
    # the next one at least TRACKING_MIN_INTERVAL_S ahead): the scheduler sees each a tick early.
    lead_s: float = 6.0
    settle_s: float = 30.0  # bound on each wait beyond its due times

    @property
    def demand(self) -> float:
        """Polls/s the fleet needs: every shipment once per cadence."""
        return self.shipments / self.cadence_s

    def env(self) -> dict[str, str]:
        return {
            "TRACKING_INTERVAL_S": str(self.tick_s),
            "TRACKING_MIN_INTERVAL_S": str(self.min_interval_s),
            "TRACKING_RATE_PER_S": str(self.rate_per_s),
            "TRACKING_BURST": str(self.burst),
            "TRACKING_BATCH": str(self.batch),
            "TRACKING_POLL_CHUNK": str(self.chunk),
        }


@dataclass(frozen=True)
class Rate:
    """Queries counted over the span from the first to the last of them."""

    polls: int
    span_s: float

    @property
    def per_s(self) -> float:
        return self.polls / self.span_s if self.span_s > 0 else 0.0


@dataclass(frozen=True)
class TrackingResult:
    """What one run measured. ``lags`` (s) are those of the shipments due in the measured
    window; one never polled enters as (end of the run - due), a lower bound."""

    lags: list[float]
    unpolled: int
    steady: Rate
    drain: Rate
    repeats: int
    throttled: int
    timed_out: tuple[str, ...]  # the waits that ran out of time: "window", "backlog"

    def lag(self) -> tuple[float, float, float]:
        """(mean, p99, max) of the lags."""
        if not self.lags:
            return 0.0, 0.0, 0.0
        return fmean(self.lags), percentile(self.lags, 99), max(self.lags)


def seed_fleet(n: int) -> tuple[str, list[str]]:
    """Insert ``n`` active orders and shipments (not due yet); returns (prefix, waybills)."""
    if n > _MODULUS:
        raise ValueError(f"at most {_MODULUS} shipments")
    tag = secrets.token_hex(3)
    prefix, params = f"bt-{tag}-", {"n": n, "source": SOURCE}
    with get_engine().begin() as conn:
        conn.execute(
            text(_SEED_ORDERS), {**params, "prefix": prefix, "address": json.dumps(ADDRESS)}
        )
        rows = conn.execute(
            text(_SEED_SHIPMENTS), {**params, "prefix": prefix, "waybill": f"YTB{tag}"}
        ).all()
    return prefix, [row[0] for row in rows]


def make_due(prefix: str, cfg: TrackingConfig) -> tuple[datetime, dict[str, float]]:
    """Spread the fleet's due times over one cadence from now + lead: (t0, waybill -> due)."""
    t0 = datetime.now(UTC) + timedelta(seconds=cfg.lead_s)
    params = {
        "t0": t0, "window": cfg.cadence_s, "modulus": _MODULUS,
        "min_interval": cfg.min_interval_s, "pattern": f"bk-{prefix}%",
    }  # fmt: skip
    with get_engine().begin() as conn:
        rows = conn.execute(text(_MAKE_DUE), params).all()
    return t0, {waybill: float(due) for waybill, due in rows}


def make_backlog(prefix: str, t0: datetime, cfg: TrackingConfig) -> tuple[datetime, list[str]]:
    """Make ``cfg.backlog`` unpolled shipments due now (the furthest from due, so the regular
    stream does not reach them meanwhile); returns (now, their waybills)."""
    now = datetime.now(UTC)
    params = {
        "now": now, "mi": cfg.min_interval_s, "pattern": f"bk-{prefix}%", "t0": t0,
        "later": now + timedelta(seconds=2 * cfg.settle_s), "k": cfg.backlog,
    }  # fmt: skip
    with get_engine().begin() as conn:
        rows = conn.execute(text(_BACKLOG), params).all()
    return now, [row[0] for row in rows]


def unpolled(prefix: str, t0: datetime, until: datetime) -> int:
    """Shipments of the fleet due before ``until`` and not polled since ``t0``."""
    params = {"pattern": f"bk-{prefix}%", "t0": t0, "until": until}
    with get_engine().connect() as conn:
        return int(conn.execute(text(_UNPOLLED), params).scalar_one())


def wait_log(proc: Proc, needle: bytes, timeout_s: float) -> None:
    """Wait until ``needle`` is in the process's log; raises if it exits or the time is up."""

    def seen() -> bool:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited early:\n{proc.log_tail()}")
        return proc.log_path is not None and needle in proc.log_path.read_bytes()

    if not wait_for(seen, timeout_s, every_s=0.1):
        raise TimeoutError(f"{proc.name}: no {needle!r} within {timeout_s}s:\n{proc.log_tail()}")


def first_queries(queries: Mapping[str, Any], waybills: Iterable[str]) -> dict[str, float]:
    """Receipt time of the first query of each waybill the simulator was asked about."""
    return {w: min(queries[w]["timestamps"]) for w in waybills if queries.get(w, {}).get("count")}


def rate_of(queries: Mapping[str, Any], waybills: Iterable[str], among: Iterable[str]) -> Rate:
    """Queries for ``among`` from the first to the last query of ``waybills``."""
    own = [t for w in waybills for t in queries.get(w, {}).get("timestamps", [])]
    if len(own) < 2:
        return Rate(len(own), 0.0)
    low, high = min(own), max(own)
    polls = sum(
        1 for w in among for t in queries.get(w, {}).get("timestamps", []) if low <= t <= high
    )
    return Rate(polls, high - low)


def run_tracking(group: ProcessGroup, kuaidi100: Any, cfg: TrackingConfig) -> TrackingResult:
    """Seed the fleet, start beat and the workers with ``cfg``'s settings, make the fleet due,
    wait out the measured window (then at most ``settle_s`` for its stragglers), drain a
    backlog (at most ``settle_s``); the processes are stopped whatever happens."""
    park_earlier_work()
    prefix, waybills = seed_fleet(cfg.shipments)
    for waybill in waybills:
        kuaidi100.register_waybill("yuantong", waybill, "stuck")
    procs: list[Proc] = []
    try:
        with exported_env(cfg.env()):
            procs = [
                group.worker(f"bench-tracking-{i}", w.queues, concurrency=w.concurrency,
                             pool=w.pool)
                for i, w in enumerate(cfg.workers)
            ]  # fmt: skip
            procs.append(group.beat("beat-tracking"))
        for proc in procs[:-1]:
            wait_worker_ready(proc)
        wait_log(procs[-1], b"beat: Starting", 30.0)
        t0, due = make_due(prefix, cfg)
        until = t0 + timedelta(seconds=cfg.measure_s)
        time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()))
        timed_out = [] if _wait_polled(procs, prefix, t0, until, cfg.settle_s) else ["window"]
        t_backlog, backlog = make_backlog(prefix, t0, cfg)
        if not _wait_polled(procs, prefix, t0, t_backlog, cfg.settle_s):
            timed_out.append("backlog")
    finally:
        for proc in reversed(procs):
            proc.stop()
    queries = kuaidi100.ledger()["queries"]
    end = time.time()
    window = [w for w, at in due.items() if at < until.timestamp()]
    first = first_queries(queries, window)
    return TrackingResult(
        lags=[first.get(w, end) - due[w] for w in window],
        unpolled=len(window) - len(first),
        steady=rate_of(queries, window, window),
        drain=rate_of(queries, backlog, due),
        repeats=sum(max(0, queries.get(w, {}).get("count", 0) - 1) for w in due),
        throttled=sum(queries.get(w, {}).get("throttle_violations", 0) for w in due),
        timed_out=tuple(timed_out),
    )


def _wait_polled(
    procs: Sequence[Proc], prefix: str, t0: datetime, until: datetime, settle_s: float
) -> bool:
    """Until nothing due before ``until`` is unpolled (bounded by ``until`` + ``settle_s``)."""
    remaining = (until - datetime.now(UTC)).total_seconds() + settle_s
    return wait_for(
        lambda: _alive(procs) and unpolled(prefix, t0, until) == 0,
        max(1.0, remaining),
        every_s=0.5,
    )


def _alive(procs: Sequence[Proc]) -> bool:
    for proc in procs:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited early:\n{proc.log_tail()}")
    return True


def describe(cfg: TrackingConfig, r: TrackingResult, *, default_rate: float) -> str:
    """The configuration string of the tracking figures."""
    workers = " + ".join(f"{w.queues} {w.pool} {w.concurrency}" for w in cfg.workers)
    return (
        f"{cfg.shipments:,} active shipments (90 % IN_TRANSIT, 10 % INFO_RECEIVED, Kuaidi100 "
        f"simulator over HTTP), each due once per {cfg.cadence_s:g} s cadence (fleet needs "
        f"{cfg.demand:,.0f} polls/s); TRACKING_INTERVAL_S={cfg.tick_s:g} (beat tick), "
        f"TRACKING_MIN_INTERVAL_S={cfg.min_interval_s:g} (> the run: one poll each), "
        f"TRACKING_BATCH={cfg.batch}, "
        f"TRACKING_POLL_CHUNK={cfg.chunk}, TRACKING_RATE_PER_S raised from {default_rate:g} "
        f"to {cfg.rate_per_s:g} (burst {cfg.burst}); beat + worker {workers}; "
        f"{r.repeats} repeat queries, {r.throttled} locked by the simulator"
        + (f"; TIMED OUT waiting for {' and '.join(r.timed_out)}" if r.timed_out else "")
    )
