"""console indexes: search by external id and waybill, transitions of the last hour

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 10:00:00.000000

The ops console (api/console.py) finds an order by its external id alone (the unique constraint
leads with ``source``) or by waybill (the unique constraint leads with ``carrier``), and counts
the transitions of the last hour: without these each is a sequential scan of a large table.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_orders_external_id", "orders", ["external_id"], unique=False)
    op.create_index("ix_shipments_waybill", "shipments", ["waybill"], unique=False)
    op.create_index(
        "ix_order_events_transition_created_at",
        "order_events",
        ["created_at"],
        unique=False,
        postgresql_where=sa.text("kind = 'transition'"),
    )


def downgrade() -> None:
    op.drop_index("ix_order_events_transition_created_at", table_name="order_events")
    op.drop_index("ix_shipments_waybill", table_name="shipments")
    op.drop_index("ix_orders_external_id", table_name="orders")
