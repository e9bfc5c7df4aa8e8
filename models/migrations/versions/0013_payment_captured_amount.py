"""payments: what was captured (amount and currency as the provider reported them), and a note
for a person when a capture needs one

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 05:00:00.000000

``payments.amount`` is what the order asked for. A buyer can pay another amount (a tampered QR
code, a provider bug); refunds must then be bounded by, and sent against, what was captured, or
the provider refuses them and the money stays with the shop. ``captured_amount`` and
``captured_currency`` are NULL until a capture, and equal ``amount``/``currency`` when they
match. ``attention`` holds why a person should look at a payment whose order can no longer move
(a wrong amount paid after the order expired: refunded in full, then flagged); the partial index
serves the console's Attention page, which lists the flagged ones until they are acknowledged.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("payments", sa.Column("captured_amount", sa.BigInteger(), nullable=True))
    op.add_column("payments", sa.Column("captured_currency", sa.String(3), nullable=True))
    op.add_column("payments", sa.Column("attention", sa.String(300), nullable=True))
    op.execute(
        "CREATE INDEX ix_payments_attention ON payments (updated_at) WHERE attention IS NOT NULL"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_payments_attention")
    for column in ("attention", "captured_currency", "captured_amount"):
        op.drop_column("payments", column)
