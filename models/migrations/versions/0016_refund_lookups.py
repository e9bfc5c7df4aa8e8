"""refund_lookups: provider refund look-ups owed, so that a lost publish is re-driven

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-04 13:50:00.000000

A provider notification that says a refund happened without saying enough to record it (Stripe's
``charge.refunded`` without its refund list, an Alipay refund we did not issue) asks for the
``payments.lookup_refunds`` task. Until now that was only a message published after the commit;
a message lost between the commit and the publish was never re-driven. A row per owed look-up
(``refund_no`` empty: list all of the payment's refunds) is written in the notification's
transaction and deleted when the answer is applied; the payment poll re-drives rows whose
``due_at`` passed, with backoff. A new table: nothing is rewritten.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

NOW = sa.text("now()")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "refund_lookups",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("payment_id", sa.BigInteger(), nullable=False),
        sa.Column("refund_no", sa.String(64), server_default=sa.text("''"), nullable=False),
        sa.Column("due_at", TS, nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("requests", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("created_at", TS, server_default=NOW, nullable=False),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payments.id"], name=op.f("fk_refund_lookups_payment_id_payments")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refund_lookups")),
        sa.UniqueConstraint(
            "payment_id", "refund_no", name=op.f("uq_refund_lookups_payment_refund")
        ),
    )
    op.create_index("ix_refund_lookups_due_at", "refund_lookups", ["due_at"])


def downgrade() -> None:
    op.drop_index("ix_refund_lookups_due_at", table_name="refund_lookups")
    op.drop_table("refund_lookups")
