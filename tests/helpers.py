"""Database assertions shared by integration and end-to-end tests."""

from __future__ import annotations

from sqlalchemy import func, select, text

from models import Order, Stock
from services.queries import stock_drift
from services.unit_of_work import unit_of_work


def status_counts() -> dict[str, int]:
    with unit_of_work() as s:
        return dict(s.execute(select(Order.status, func.count()).group_by(Order.status)).all())


def stock_of(sku: str, warehouse: str = "main") -> tuple[int, int]:
    with unit_of_work() as s:
        row = s.get(Stock, (sku, warehouse))
        assert row is not None
        return row.on_hand, row.reserved


def assert_stock_consistent() -> None:
    """Counters equal ledger sums, nothing negative, and reserved equals active reservations."""
    with unit_of_work() as s:
        assert stock_drift(s) == []
        negative = s.execute(
            text("SELECT count(*) FROM stock WHERE reserved < 0 OR on_hand < reserved")
        ).scalar_one()
        assert negative == 0
        mismatch = s.execute(
            text(
                """
                SELECT count(*) FROM stock st
                LEFT JOIN (SELECT sku, warehouse, sum(quantity) q FROM reservations
                           WHERE status = 'ACTIVE' GROUP BY sku, warehouse) r
                  ON r.sku = st.sku AND r.warehouse = st.warehouse
                WHERE st.reserved <> coalesce(r.q, 0)
                """
            )
        ).scalar_one()
        assert mismatch == 0


def reservations_per_order() -> dict[str, int]:
    """order id -> number of 'reserve' ledger rows (an order reserved twice shows up here)."""
    with unit_of_work() as s:
        rows = s.execute(
            text(
                "SELECT order_id, count(*) FROM stock_movements WHERE kind = 'reserve' "
                "GROUP BY order_id"
            )
        ).all()
        return {r[0]: r[1] for r in rows}


def pipeline_state() -> dict[str, object]:
    """Where the orders are: order and payment statuses and open dead letters by task.

    Used as ``wait_until(..., show=pipeline_state)`` so a timeout says where the pipeline stuck.
    """
    from models import DeadLetter, Payment

    with unit_of_work() as s:
        payments = s.execute(select(Payment.status, func.count()).group_by(Payment.status)).all()
        dead = s.execute(
            select(DeadLetter.task_name, DeadLetter.error_class, func.count())
            .where(DeadLetter.status == "OPEN")
            .group_by(DeadLetter.task_name, DeadLetter.error_class)
        ).all()
    return {
        "orders": status_counts(),
        "payments": dict(payments),
        "dead_letters": {f"{t} {e}": n for t, e, n in dead},
    }
