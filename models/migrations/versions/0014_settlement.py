"""settlement: the providers' daily bills, their lines, and the differences found matching them

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04 10:40:00.000000

A finance team reconciles against the files the providers publish, which also carry the fees.
``settlement_files`` holds one row per (provider, account, bill date, bill type) — the unique key
that makes a fetch idempotent — with the verified raw file and its SHA-256, or a refused file's
reason (no content, no lines). ``settlement_lines`` are its parsed lines (unique per file and
line id); ``settlement_differences`` what matching found (unique per provider, account, date,
kind and reference, so matching twice records each once), each resolved by a person with a
note. The partial index serves the unresolved-differences gauge.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

NOW = sa.text("now()")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "settlement_files",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("bill_date", sa.Date(), nullable=False),
        sa.Column("bill_type", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("content", sa.LargeBinary(), nullable=True),
        sa.Column("line_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("error", sa.String(500), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("fetched_at", TS, nullable=False),
        sa.Column("matched_at", TS, nullable=True),
        sa.Column("created_at", TS, server_default=NOW, nullable=False),
        sa.Column("updated_at", TS, server_default=NOW, nullable=False),
        sa.CheckConstraint(
            "status IN ('stored', 'refused')", name=op.f("ck_settlement_files_status_known")
        ),
        sa.CheckConstraint(
            "status <> 'stored' OR (sha256 IS NOT NULL AND content IS NOT NULL)",
            name=op.f("ck_settlement_files_stored_has_content"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_settlement_files")),
        sa.UniqueConstraint(
            "provider", "account", "bill_date", "bill_type", name="uq_settlement_files_bill"
        ),
    )
    op.create_table(
        "settlement_lines",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("file_id", sa.BigInteger(), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("line_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("raw_type", sa.String(64), nullable=False),
        sa.Column("source_ref", sa.String(128), nullable=True),
        sa.Column("payment_ref", sa.String(128), nullable=True),
        sa.Column("refund_ref", sa.String(128), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("fee", sa.BigInteger(), nullable=False),
        sa.Column("net", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("occurred_at", TS, nullable=False),
        sa.Column("payment_id", sa.BigInteger(), nullable=True),
        sa.Column("refund_id", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["settlement_files.id"],
            name=op.f("fk_settlement_lines_file_id_settlement_files"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payments.id"], name=op.f("fk_settlement_lines_payment_id_payments")
        ),
        sa.ForeignKeyConstraint(
            ["refund_id"], ["refunds.id"], name=op.f("fk_settlement_lines_refund_id_refunds")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_settlement_lines")),
        sa.UniqueConstraint("file_id", "line_id", name="uq_settlement_lines_file_line"),
    )
    op.create_index("ix_settlement_lines_payment_ref", "settlement_lines", ["payment_ref"])
    op.create_table(
        "settlement_differences",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("bill_date", sa.Date(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("ref", sa.String(128), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("ours", sa.BigInteger(), nullable=True),
        sa.Column("theirs", sa.BigInteger(), nullable=True),
        sa.Column("detail", sa.String(300), nullable=False),
        sa.Column("line_id", sa.String(128), nullable=True),
        sa.Column("payment_id", sa.BigInteger(), nullable=True),
        sa.Column("refund_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", TS, server_default=NOW, nullable=False),
        sa.Column("resolved_at", TS, nullable=True),
        sa.Column("resolved_by", sa.String(100), nullable=True),
        sa.Column("resolution_note", sa.String(500), nullable=True),
        sa.ForeignKeyConstraint(
            ["payment_id"],
            ["payments.id"],
            name=op.f("fk_settlement_differences_payment_id_payments"),
        ),
        sa.ForeignKeyConstraint(
            ["refund_id"],
            ["refunds.id"],
            name=op.f("fk_settlement_differences_refund_id_refunds"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_settlement_differences")),
        sa.UniqueConstraint(
            "provider",
            "account",
            "bill_date",
            "kind",
            "ref",
            name="uq_settlement_differences_key",
        ),
    )
    op.create_index(
        "ix_settlement_differences_open",
        "settlement_differences",
        ["created_at"],
        postgresql_where=sa.text("resolved_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_settlement_differences_open", table_name="settlement_differences")
    op.drop_table("settlement_differences")
    op.drop_index("ix_settlement_lines_payment_ref", table_name="settlement_lines")
    op.drop_table("settlement_lines")
    op.drop_table("settlement_files")
