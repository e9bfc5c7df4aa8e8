"""Pipeline figures: HTTP intake, intake -> RESERVED (spread, hot SKU, 1 vs 2 processes) and
per-stage latency from the order timeline."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests
from sqlalchemy import text

from bench.common import CpuMeter, CpuUse, percentile, wait_for
from models.db import get_engine
from workers.procs import ProcessGroup, wait_worker_ready


def order_message(source: str, sku: str, quantity: int = 1) -> dict[str, Any]:
    """A valid one-line order for ``POST /v1/orders``."""
    return {
        "source": source,
        "external_id": uuid.uuid4().hex,
        "customer_ref": "bench-customer",
        "lines": [{"sku": sku, "quantity": quantity}],
        "currency": "CNY",
        "payment_provider": "alipay",
        "shipping_address": {
            "name": "Bench Customer",
            "phone": "+86 138 0000 0000",
            "line1": "1 Bench Road",
            "city": "Hangzhou",
            "country": "CN",
        },
    }


@dataclass(frozen=True)
class PostResult:
    """What a burst of POSTs achieved: accepted count, wall time, per-request latency (s)."""

    accepted: int
    refused: int
    elapsed_s: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.accepted / self.elapsed_s if self.elapsed_s else 0.0


def post_orders(
    base_url: str,
    key: str,
    messages: Sequence[dict[str, Any]],
    *,
    concurrency: int,
    timeout_s: float,
) -> PostResult:
    """POST every message from ``concurrency`` threads (a requests.Session each), bounded."""
    local = threading.local()
    stop_at = time.monotonic() + timeout_s

    def post(msg: dict[str, Any]) -> tuple[int, float]:
        if time.monotonic() > stop_at:
            return 0, 0.0
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            session.headers["X-API-Key"] = key
        t0 = time.perf_counter()
        code = session.post(f"{base_url}/v1/orders", json=msg, timeout=30).status_code
        return code, time.perf_counter() - t0

    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(post, messages))
    elapsed = time.monotonic() - started
    sent = [(c, lat) for c, lat in results if c]
    accepted = sum(1 for c, _ in sent if c == 202)
    return PostResult(accepted, len(sent) - accepted, elapsed, [lat for _, lat in sent])


def status_counts(source: str) -> dict[str, int]:
    """Orders of one source by status."""
    with get_engine().connect() as conn:
        rows = conn.execute(
            text("SELECT status, count(*) FROM orders WHERE source = :s GROUP BY status"),
            {"s": source},
        ).all()
    return {status: int(n) for status, n in rows}


PAID_OR_LATER = frozenset(
    {"PAID", "SHIPPED", "IN_TRANSIT", "DELIVERED", "RECEIPT_CONFIRMED", "COMPLETED"}
)
RESERVED_OR_LATER = frozenset({"RESERVED", "AWAITING_PAYMENT"}) | PAID_OR_LATER
CLOSED = frozenset({"REJECTED", "EXPIRED", "CANCELLED", "NEEDS_ATTENTION"})


@dataclass(frozen=True)
class WorkerSpec:
    """One Celery worker of a pipeline run."""

    queues: str
    concurrency: int
    pool: str = "prefork"
    env: Mapping[str, str] = field(default_factory=dict)  # on top of the group's


@dataclass(frozen=True)
class StageResult:
    """Orders/s from the first POST until every accepted order reached the target stage."""

    orders: int
    reached: int
    elapsed_s: float
    counts: dict[str, int]
    finished: bool
    cpu: CpuUse | None = None  # CPU per part of the stack over the same interval

    @property
    def rate(self) -> float:
        return self.reached / self.elapsed_s if self.elapsed_s else 0.0


def to_stage(
    group: ProcessGroup,
    base_url: str,
    key: str,
    *,
    source: str,
    skus: Sequence[str],
    orders: int,
    workers: Sequence[WorkerSpec],
    target: frozenset[str],
    timeout_s: float,
) -> StageResult:
    """Start ``workers``, post ``orders`` orders over ``skus`` (16 client threads), and time
    until each accepted order is in ``target`` or closed (bounded by ``timeout_s``). The CPU
    each part of the stack used meanwhile is sampled too (:class:`bench.common.CpuMeter`)."""
    names = {f"{source}-{i}": f"worker {w.queues} {w.pool} {w.concurrency}"
             for i, w in enumerate(workers)}  # fmt: skip
    procs = [
        group.worker(f"{source}-{i}", w.queues, concurrency=w.concurrency, pool=w.pool, env=w.env)
        for i, w in enumerate(workers)
    ]
    meter = CpuMeter(group, names)

    def reached(counts: dict[str, int]) -> int:
        return sum(n for status, n in counts.items() if status in target | CLOSED)

    try:
        for proc in procs:
            wait_worker_ready(proc)
        messages = [order_message(source, skus[i % len(skus)]) for i in range(orders)]
        meter.start()
        started = time.monotonic()
        posted = post_orders(base_url, key, messages, concurrency=16, timeout_s=timeout_s)
        remaining = max(1.0, timeout_s - (time.monotonic() - started))
        finished = wait_for(
            lambda: reached(status_counts(source)) >= posted.accepted, remaining, every_s=0.05
        )
        elapsed = time.monotonic() - started
        cpu = meter.stop()
    finally:
        for proc in reversed(procs):
            proc.stop()
    counts = status_counts(source)
    return StageResult(posted.accepted, reached(counts), elapsed, counts, finished, cpu)


_STAGE_SQL = """
SELECT from_status, to_status, count(*),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY d),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY d), min(d), max(d)
FROM (SELECT e.from_status, e.to_status,
             extract(epoch FROM e.created_at - lag(e.created_at)
                     OVER (PARTITION BY e.order_id ORDER BY e.id)) AS d
      FROM order_events e JOIN orders o ON o.id = e.order_id
      WHERE e.kind = 'transition' AND o.source = :source) x
WHERE d IS NOT NULL AND from_status IS NOT NULL
GROUP BY from_status, to_status ORDER BY count(*) DESC"""


@dataclass(frozen=True)
class StageLatency:
    """Seconds between an order entering ``stage``'s from-status and its to-status."""

    stage: str
    count: int
    p50: float
    p99: float
    low: float
    high: float


def stage_latencies(source: str) -> list[StageLatency]:
    """Per transition of one source's orders, from the timeline (``created_at`` differences
    between consecutive transitions of each order; ``created_at`` is the transaction start)."""
    with get_engine().connect() as conn:
        rows = conn.execute(text(_STAGE_SQL), {"source": source}).all()
    return [
        StageLatency(f"{a}->{b}", int(n), float(p50), float(p99), float(lo), float(hi))
        for a, b, n, p50, p99, lo, hi in rows
    ]


def intake_figures(
    base_url: str, key: str, skus: Sequence[str], *, concurrency: int, orders: int
) -> tuple[float, float, float, int]:
    """Accepted POST /v1/orders per second at ``concurrency``: (rate, p50 ms, p99 ms, refused).

    Nothing consumes the orders queue meanwhile; the caller purges it afterwards."""
    source = f"bench-intake-c{concurrency}"
    messages = [order_message(source, skus[i % len(skus)]) for i in range(orders)]
    warmup = [order_message(source + "-warmup", skus[0]) for _ in range(concurrency * 2)]
    post_orders(base_url, key, warmup, concurrency=concurrency, timeout_s=20)
    result = post_orders(base_url, key, messages, concurrency=concurrency, timeout_s=30)
    return (
        result.rate,
        percentile(result.latencies, 50) * 1000,
        percentile(result.latencies, 99) * 1000,
        result.refused,
    )
