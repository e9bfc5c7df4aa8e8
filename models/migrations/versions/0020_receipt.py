"""receipt: when an order was delivered and when its receipt was confirmed (issue 22)

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-04 21:00:00.000000

A delivered order no longer completes at once: it waits for the buyer's confirmation (or
``AUTO_RECEIVE_S``), then for the after-sale window (``AFTERSALE_WINDOW_S``). The two moments
are stamped on the order; partial indexes keep the receipt sweep's claims to the orders waiting.
Orders already DELIVERED are stamped with their last update, so their clock starts from the
delivery as near as it is known.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("orders", sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "orders", sa.Column("receipt_confirmed_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.execute("UPDATE orders SET delivered_at = updated_at WHERE status = 'DELIVERED'")
    op.create_index(
        "ix_orders_delivered_at", "orders", ["delivered_at"],
        postgresql_where=sa.text("status = 'DELIVERED'"),
    )  # fmt: skip
    op.create_index(
        "ix_orders_receipt_confirmed_at", "orders", ["receipt_confirmed_at"],
        postgresql_where=sa.text("status = 'RECEIPT_CONFIRMED'"),
    )  # fmt: skip


def downgrade() -> None:
    op.execute("UPDATE orders SET status = 'DELIVERED' WHERE status = 'RECEIPT_CONFIRMED'")
    op.drop_index("ix_orders_receipt_confirmed_at", table_name="orders")
    op.drop_index("ix_orders_delivered_at", table_name="orders")
    op.drop_column("orders", "receipt_confirmed_at")
    op.drop_column("orders", "delivered_at")
