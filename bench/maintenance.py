"""What one maintenance tick costs with 10,000 open orders in the database.

Seeded with set-based SQL (nothing is due, so each tick scans and finds nothing, as at rest):
a quarter of the orders RESERVED, a quarter AWAITING_PAYMENT with a PENDING payment whose next
query is an hour away, a quarter PAID, a quarter IN_TRANSIT with a shipment polled and updated
just now (next poll an hour away); every stage and payment deadline an hour away; one callback
endpoint with a PENDING delivery per order, next attempt an hour away.

A ``maintenance`` worker (prefork 1, production settings, so the ticks run one after another as
beat's would) is sent each beat job ``ticks`` times; :class:`bench.common.CpuMeter` reads the
worker's and PostgreSQL's CPU from the first send until the broker shows them all acknowledged
(the idle worker's CPU over those last 150 ms included, spread over the ticks). psutil reads
CPU in 10 ms clock ticks, so a figure is good to about 10 ms / ticks. The daily reconcile is
left out (it calls the providers).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

import redis
from sqlalchemy import text

from bench.common import CpuMeter, wait_for
from bench.environment import production_env, purge_queues
from bench.journey import park_earlier_work
from models.db import get_engine
from services.task_names import (
    MAINTENANCE_DISPATCH_CALLBACKS,
    MAINTENANCE_POLL_PAYMENTS,
    MAINTENANCE_SCHEDULE_TRACKING,
    MAINTENANCE_SWEEP,
    MAINTENANCE_TRACKING_STALENESS,
)
from settings import get_settings
from workers.embedded import exported_env
from workers.procs import Proc, ProcessGroup, wait_worker_ready

SOURCE = "bench-maintenance"
WORKER = "bench-maintenance"

_ORDERS = """
INSERT INTO orders (id, source, external_id, body_hash, customer_ref, status, currency,
                    total_amount, payment_provider, shipping_address, stage_deadline,
                    payment_deadline)
SELECT :prefix || g, :source, :prefix || g, 'bench', 'bench-customer',
       (ARRAY['RESERVED', 'AWAITING_PAYMENT', 'PAID', 'IN_TRANSIT'])[g % 4 + 1], 'CNY', 1990,
       'alipay', CAST(:address AS jsonb),
       CASE WHEN g % 4 < 3 THEN now() + interval '1 hour' END,
       CASE WHEN g % 4 < 2 THEN now() + interval '1 hour' END
FROM generate_series(1, :n) g"""
_PAYMENTS = """
INSERT INTO payments (order_id, provider, out_trade_no, idempotency_key, amount, currency,
                      status, next_query_at)
SELECT :prefix || g, 'alipay', :prefix || g, 'bench-' || :prefix || g, 1990, 'CNY', 'PENDING',
       now() + interval '1 hour'
FROM generate_series(1, :n) g WHERE g % 4 = 1"""
_SHIPMENTS = """
INSERT INTO shipments (order_id, booking_key, carrier, waybill, status, raw_state,
                       next_poll_at, last_polled_at, last_event_at)
SELECT :prefix || g, 'bk-' || :prefix || g, 'yuantong', 'YTM' || :prefix || g, 'IN_TRANSIT',
       '0', now() + interval '1 hour', now(), now()
FROM generate_series(1, :n) g WHERE g % 4 = 3"""
_ENDPOINT = """INSERT INTO callback_endpoints (source, url, secret)
VALUES (:source, 'http://127.0.0.1:9/callbacks', :secret) RETURNING id"""
_DELIVERIES = """
INSERT INTO callback_deliveries (event_id, endpoint_id, order_id, event_type, payload,
                                 next_attempt_at)
SELECT gen_random_uuid(), :endpoint, :prefix || g, 'order.status', '{}'::jsonb,
       now() + interval '1 hour'
FROM generate_series(1, :n) g"""

#: Beat job -> the setting of its period (None: a fixed period in celeryconfig).
JOBS: dict[str, str | None] = {
    MAINTENANCE_SWEEP: "sweep_interval_s",
    MAINTENANCE_POLL_PAYMENTS: "payment_poll_interval_s",
    MAINTENANCE_SCHEDULE_TRACKING: "tracking_interval_s",
    MAINTENANCE_TRACKING_STALENESS: None,
    MAINTENANCE_DISPATCH_CALLBACKS: "callback_dispatch_interval_s",
}
STALENESS_PERIOD_S = 3600.0  # celeryconfig.beat_schedule["tracking-staleness"]


def seed_open_orders(n: int) -> None:
    """``n`` open orders with nothing due (see the module docstring)."""
    params = {"n": n, "source": SOURCE, "prefix": f"bm-{secrets.token_hex(3)}-"}
    address = json.dumps({"name": "Bench", "line1": "1 Bench Road", "country": "CN"})
    with get_engine().begin() as conn:
        conn.execute(text(_ORDERS), {**params, "address": address})
        conn.execute(text(_PAYMENTS), params)
        conn.execute(text(_SHIPMENTS), params)
        endpoint = conn.execute(
            text(_ENDPOINT), {"source": SOURCE, "secret": secrets.token_hex(16)}
        ).scalar_one()
        conn.execute(text(_DELIVERIES), {**params, "endpoint": endpoint})
        conn.execute(text("ANALYZE"))  # plans as on a database that has lived with these rows


@dataclass(frozen=True)
class TickCost:
    """CPU ms per tick of one beat job, and how often beat runs it at production cadence."""

    job: str
    ticks: int
    worker_ms: float
    postgres_ms: float
    period_s: float

    @property
    def total_ms(self) -> float:
        return self.worker_ms + self.postgres_ms


def _idle(broker: redis.Redis) -> bool:
    """Nothing waiting on the maintenance queue and nothing delivered but unacknowledged (kombu's
    Redis transport keeps a delivered message in ``unacked`` until the acks-late ack)."""
    return broker.llen("maintenance") == 0 and broker.hlen("unacked") == 0


def _broker() -> redis.Redis:
    from workers.embedded import redis_client_url

    url = get_settings().effective_broker_url
    if not url.startswith(("redis", "unix")):
        raise RuntimeError("the maintenance phase reads the queues on a Redis broker")
    return redis.Redis.from_url(redis_client_url(url), socket_timeout=5)


def _run_ticks(broker: redis.Redis, proc: Proc, job: str, ticks: int) -> None:
    """Queue ``job`` ``ticks`` times and wait until the worker (prefork 1: one after another,
    as beat's ticks) has run and acknowledged them all. The per-task log lines are off in the
    workers, so the broker is the witness: idle three times in a row, 50 ms apart, which no
    message can spend between its pop and its ``unacked`` entry."""
    from workers.app import app

    for _ in range(ticks):
        app.send_task(job)
    idle_runs = 0

    def settled() -> bool:
        nonlocal idle_runs
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited early:\n{proc.log_tail()}")
        idle_runs = idle_runs + 1 if _idle(broker) else 0
        return idle_runs >= 3

    if not wait_for(settled, 60.0, every_s=0.05):
        raise TimeoutError(f"{ticks} x {job} not done within 60 s:\n{proc.log_tail()}")


# What earlier phases left due (their payments' next queries, a refund, a callback) would be
# found by the ticks: pushed out of reach, as park_earlier_work does for orders and shipments.
_PARK_DUE = (
    "UPDATE payments SET next_query_at = NULL WHERE next_query_at IS NOT NULL",
    "UPDATE refunds SET next_query_at = NULL WHERE next_query_at IS NOT NULL",
    "UPDATE callback_deliveries SET next_attempt_at = now() + interval '1 day' "
    "WHERE status = 'PENDING'",
)
#: The queues a tick publishes its follow-ups to; left empty when the ticks found nothing.
FOLLOWUP_QUEUES = ("orders", "payments", "shipping", "tracking", "callbacks")


def tick_costs(group: ProcessGroup, *, orders: int, ticks: int) -> list[TickCost]:
    """Seed ``orders`` open orders, start the worker, and meter ``ticks`` ticks of each job.
    Raises if the ticks published any follow-up (then they did work, and the figure would not
    be the cost of a scan)."""
    park_earlier_work()
    with get_engine().begin() as conn:
        for statement in _PARK_DUE:
            conn.execute(text(statement))
    seed_open_orders(orders)
    purge_queues()
    broker = _broker()
    with exported_env(production_env()):
        s = get_settings()
        proc = group.worker(WORKER, "maintenance", concurrency=1)
    costs = []
    try:
        wait_worker_ready(proc)
        for job, setting in JOBS.items():
            _run_ticks(broker, proc, job, 2)  # warm: imports, connections, plans
            meter = CpuMeter(group, {WORKER: "worker"})
            meter.start()
            _run_ticks(broker, proc, job, ticks)
            used = meter.stop().by_part
            period = float(getattr(s, setting)) if setting else STALENESS_PERIOD_S
            costs.append(
                TickCost(job, ticks, used.get("worker", 0.0) * 1000 / ticks,
                         used.get("postgres", 0.0) * 1000 / ticks, period)
            )  # fmt: skip
        followups = sum(int(broker.llen(q)) for q in FOLLOWUP_QUEUES)
    finally:
        proc.stop()
        purge_queues()
        broker.close()
    if followups:
        raise RuntimeError(f"the ticks published {followups} follow-ups: something was due")
    return costs


def figures(costs: list[TickCost], orders: int) -> list[tuple[str, str, float, float | None, str]]:
    """One row per job (CPU ms per tick, worker + PostgreSQL) and the sum at production
    cadence (CPU ms per second of wall time: what maintenance costs a system at rest)."""
    common = (
        f"{orders:,} open orders, nothing due (RESERVED, AWAITING_PAYMENT with pending payment, "
        "PAID, IN_TRANSIT with shipment; one pending callback each); maintenance worker prefork "
        "1, production settings; ticks sent one after another"
    )
    rows: list[tuple[str, str, float, float | None, str]] = [
        (f"maintenance tick {c.job}", "ms CPU", c.total_ms, None,
         f"worker {c.worker_ms:.1f} + PostgreSQL {c.postgres_ms:.1f} ms, mean of {c.ticks} "
         f"ticks; every {c.period_s:g} s in production; {common}")
        for c in costs
    ]  # fmt: skip
    per_s = sum(c.total_ms / c.period_s for c in costs)
    periods = ", ".join(f"{c.job.split('.')[-1]} {c.period_s:g} s" for c in costs)
    rows.append(("maintenance at production cadence", "ms CPU/s", per_s, None,
                 f"sum of tick cost / period ({periods}); {common}"))  # fmt: skip
    return rows
