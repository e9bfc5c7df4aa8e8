"""Full-journey figures: intake -> RESERVED -> PAID -> SHIPPED -> IN_TRANSIT -> DELIVERED with a
worker for every queue the journey uses, beat, and compressed tracking. The journey ends at
DELIVERED: receipt and completion follow days later (``AUTO_RECEIVE_S``, ``AFTERSALE_WINDOW_S``);
before they existed a delivered order completed in the same transaction, so the figure is
comparable with earlier runs' "intake -> COMPLETED".

The Alipay simulator pays every trade at once; the warehouse simulator books each parcel and
registers its waybill at the Kuaidi100 simulator with the ``normal`` script (34 simulated hours
from first scan to signature), which runs ``time_scale`` times faster than real time. Tracking
reaches the pipeline both ways: the simulator pushes subscribed waybills to the API, and beat's
tracking scheduler polls due shipments within the configured Kuaidi100 quota.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import text

from bench.pipeline import StageResult, WorkerSpec, to_stage
from models.db import get_engine
from workers.embedded import exported_env
from workers.procs import ProcessGroup

DELIVERED = frozenset({"DELIVERED"})
WORKERS = (
    WorkerSpec("orders,maintenance", 2),
    WorkerSpec("payments", 8, "threads"),
    WorkerSpec("shipping,tracking", 8, "threads"),
)

# Earlier phases leave orders mid-pipeline (their queued tasks were purged) and may leave
# shipments due: beat's sweeper and tracking scheduler would pull them into a later run.
_PARK_ORDERS = """UPDATE orders SET stage_deadline = NULL, payment_deadline = NULL
WHERE status IN ('RECEIVED', 'RESERVED', 'AWAITING_PAYMENT', 'PAID')"""
_PARK_SHIPMENTS = "UPDATE shipments SET next_poll_at = NULL WHERE next_poll_at IS NOT NULL"
_DELIVERED_VIA = """
SELECT coalesce(e.detail->>'source', '?'), count(*)
FROM order_events e JOIN orders o ON o.id = e.order_id
WHERE o.source = :source AND e.kind = 'transition' AND e.to_status = 'DELIVERED'
GROUP BY 1"""
_PROVIDER_CALLS = """
SELECT e.detail->>'provider' || '.' || (e.detail->>'operation'), count(*)
FROM order_events e JOIN orders o ON o.id = e.order_id
WHERE o.source = :source AND e.kind = 'provider_call'
GROUP BY 1"""


def park_earlier_work() -> tuple[int, int]:
    """Make the orders and shipments already in the database invisible to beat's sweeper and
    tracking scheduler (no stage, payment or poll deadline); returns (orders, shipments)."""
    with get_engine().begin() as conn:
        orders = conn.execute(text(_PARK_ORDERS)).rowcount
        shipments = conn.execute(text(_PARK_SHIPMENTS)).rowcount
    return orders, shipments


def run_journey(
    group: ProcessGroup,
    base_url: str,
    key: str,
    *,
    source: str,
    skus: list[str],
    orders: int,
    env: Mapping[str, str],
    timeout_s: float,
) -> StageResult:
    """Start beat (with ``env`` exported, as the workers) and time ``orders`` orders from the
    first POST to DELIVERED (or closed) via :func:`bench.pipeline.to_stage`; beat is stopped
    whatever happens."""
    park_earlier_work()
    with exported_env(env):
        beat = group.beat(f"beat-{source}")
        try:
            return to_stage(
                group, base_url, key, source=source, skus=skus, orders=orders,
                workers=WORKERS, target=DELIVERED, timeout_s=timeout_s,
            )  # fmt: skip
        finally:
            beat.stop()


def delivered_via(source: str) -> dict[str, int]:
    """How the DELIVERED transitions of one source's orders arrived: ``push`` or ``poll``."""
    with get_engine().connect() as conn:
        rows = conn.execute(text(_DELIVERED_VIA), {"source": source}).all()
    return {via: int(n) for via, n in rows}


def provider_calls(source: str) -> dict[str, int]:
    """Provider calls made for one source's orders, by ``provider.operation``."""
    with get_engine().connect() as conn:
        rows = conn.execute(text(_PROVIDER_CALLS), {"source": source}).all()
    return {op: int(n) for op, n in rows}
