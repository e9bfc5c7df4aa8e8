"""console order list: newest first within a status, a source, a provider, or among orders with a
reason

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 10:00:00.000000

``/console/orders`` lists orders newest first, filtered by status, source, payment provider or
reason (substring), one page (LIMIT) at a time, with a total counted up to a cap. Without these,
"the newest 50 COMPLETED orders" sorts every COMPLETED order, and "the newest with a reason like
'mismatch'" walks every order. Each index leads with the filtered column and ends with
``created_at``, so a page is a walk down one index that stops after the page's rows; the reason
index is partial (only orders with a reason: rejections, expiries, cancellations, attention) and
the substring is checked on its rows. The pipeline page's rejections by reason (last 24 h) read
``ix_orders_status_created_at`` too.

The cost is on writes: an order insert maintains four more index entries, and a status change
already touched an index on ``status``. Created with ``CONCURRENTLY`` would avoid locking a large
live table, but needs to run outside a transaction: on a large installation run
``CREATE INDEX CONCURRENTLY`` by hand with these names first; this migration then skips them
(``IF NOT EXISTS``).
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_orders_status_created_at": "(status, created_at)",
    "ix_orders_source_created_at": "(source, created_at)",
    "ix_orders_payment_provider_created_at": "(payment_provider, created_at)",
    "ix_orders_reason_created_at": "(created_at) WHERE reason IS NOT NULL",
}


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON orders {columns}")


def downgrade() -> None:
    for name in INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
