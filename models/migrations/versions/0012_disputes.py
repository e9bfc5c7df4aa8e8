"""disputes: chargebacks and inquiries on captured payments, with their evidence deadline

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 05:00:00.000000

A buyer who disputes a card payment (Stripe ``charge.dispute.*``) gives the shop a deadline to
answer with evidence and may take the money back. One row per dispute (unique per provider),
holding the newest state applied (``status``, ``event_at`` of the event that set it), the amount,
reason, evidence deadline, the funds withdrawn and reinstated, and ``outcome`` once closed. The
partial index serves the console's Attention page, which lists the open ones by deadline.
A dispute names its payment by the provider's reference (Stripe ``pi_…``), so ``payments`` gets
an index on ``(provider, provider_ref)`` for the webhook's lookup.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

NOW = sa.text("now()")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "disputes",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("provider_dispute_id", sa.String(128), nullable=False),
        sa.Column("order_id", sa.String(36), nullable=False),
        sa.Column("payment_id", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("evidence_due_by", TS, nullable=True),
        sa.Column("has_evidence", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("funds_withdrawn", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("funds_reinstated", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("event_at", TS, nullable=False),
        sa.Column("closed_at", TS, nullable=True),
        sa.Column("created_at", TS, server_default=NOW, nullable=False),
        sa.Column("updated_at", TS, server_default=NOW, nullable=False),
        sa.CheckConstraint("amount >= 0", name=op.f("ck_disputes_amount_not_negative")),
        sa.CheckConstraint(
            "funds_withdrawn >= 0 AND funds_reinstated >= 0",
            name=op.f("ck_disputes_funds_not_negative"),
        ),
        sa.ForeignKeyConstraint(
            ["order_id"], ["orders.id"], name=op.f("fk_disputes_order_id_orders")
        ),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payments.id"], name=op.f("fk_disputes_payment_id_payments")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_disputes")),
        sa.UniqueConstraint(
            "provider", "provider_dispute_id", name=op.f("uq_disputes_provider_dispute_id")
        ),
    )
    op.create_index("ix_disputes_order_id", "disputes", ["order_id"])
    op.create_index(
        "ix_disputes_open_due",
        "disputes",
        ["evidence_due_by"],
        postgresql_where=sa.text("outcome IS NULL"),
    )
    op.create_index(
        "ix_payments_provider_provider_ref",
        "payments",
        ["provider", "provider_ref"],
        postgresql_where=sa.text("provider_ref IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_payments_provider_provider_ref", table_name="payments")
    op.drop_index("ix_disputes_open_due", table_name="disputes")
    op.drop_index("ix_disputes_order_id", table_name="disputes")
    op.drop_table("disputes")
