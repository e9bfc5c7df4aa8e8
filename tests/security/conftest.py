"""Fixtures for the security tests: the running pipeline of tests/e2e (simulators with generated
keys, API, workers, beat) and small database probes shared by the fuzzers."""

from __future__ import annotations

from sqlalchemy import text

from services.unit_of_work import unit_of_work
from tests.e2e.conftest import pipeline_env, start_pipeline

__all__ = ["pipeline_env", "row_counts", "start_pipeline"]

#: Tables a request could write to. A refused request (4xx) must leave every count unchanged.
WRITABLE_TABLES = (
    "orders", "order_lines", "order_events", "reservations", "payments", "refunds",
    "processed_notifications", "shipments", "tracking_events", "products", "product_prices",
    "stock", "stock_movements", "users", "user_sessions", "callback_endpoints",
    "callback_deliveries", "dead_letters",
)  # fmt: skip


def row_counts() -> dict[str, int]:
    """Row count per table in :data:`WRITABLE_TABLES`, in one statement."""
    select = ", ".join(f"(SELECT count(*) FROM {t}) AS {t}" for t in WRITABLE_TABLES)
    with unit_of_work() as s:
        row = s.execute(text(f"SELECT {select}")).mappings().one()
    return {t: int(row[t]) for t in WRITABLE_TABLES}
