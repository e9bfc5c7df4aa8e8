"""returns: after-sale returns and their lines; products' returnable flag and window; a
shipment's direction (a buyer's return parcel is tracked like any); an order's discount and
each line's charged share (issue 22)

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-04 21:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column(
        "products", sa.Column("returnable", sa.Boolean(), server_default=sa.text("true"),
                              nullable=False)
    )  # fmt: skip
    op.add_column("products", sa.Column("return_window_s", sa.Integer(), nullable=True))
    op.create_table(
        "returns",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("order_id", sa.String(36), sa.ForeignKey("orders.id"), nullable=False),
        sa.Column("return_no", sa.String(64), nullable=True),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.Column("requested_by", sa.String(100), nullable=False),
        sa.Column("decided_by", sa.String(100), nullable=True),
        sa.Column("decision_note", sa.String(200), nullable=True),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("refund_amount", sa.BigInteger(), nullable=True),
        sa.Column("refund_no", sa.String(64), nullable=True),
        sa.Column("parcel_due_at", TS, nullable=True),
        sa.Column("carrier", sa.String(32), nullable=True),
        sa.Column("waybill", sa.String(64), nullable=True),
        sa.Column("warehouse", sa.String(64), nullable=True),
        sa.Column("approved_at", TS, nullable=True),
        sa.Column("received_at", TS, nullable=True),
        sa.Column("created_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", TS, server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("refund_amount IS NULL OR refund_amount >= 0",
                           name=op.f("ck_returns_refund_not_negative")),
        sa.UniqueConstraint("refund_no", name=op.f("uq_returns_refund_no")),
        sa.UniqueConstraint("order_id", "return_no", name="uq_returns_order_return_no"),
    )  # fmt: skip
    op.create_index("ix_returns_order_id", "returns", ["order_id"])
    op.create_index("ix_returns_status_created_at", "returns", ["status", "created_at"])
    op.create_index(
        "ix_returns_parcel_due_at", "returns", ["parcel_due_at"],
        postgresql_where=sa.text("status = 'AWAITING_PARCEL' AND waybill IS NULL"),
    )  # fmt: skip
    op.create_table(
        "return_lines",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("return_id", sa.BigInteger(),
                  sa.ForeignKey("returns.id", ondelete="CASCADE"), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("sku", sa.String(64), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("restocked", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("damaged", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("lost", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("refund_amount", sa.BigInteger(), nullable=True),
        sa.CheckConstraint("quantity > 0", name=op.f("ck_return_lines_quantity_positive")),
        sa.CheckConstraint(
            "restocked >= 0 AND damaged >= 0 AND lost >= 0 "
            "AND restocked + damaged + lost IN (0, quantity)",
            name=op.f("ck_return_lines_disposition_adds_up"),
        ),
        sa.UniqueConstraint("return_id", "line_no", name="uq_return_lines_return_line"),
    )  # fmt: skip
    op.add_column("orders", sa.Column("discount_amount", sa.BigInteger(),
                                      server_default=sa.text("0"), nullable=False))  # fmt: skip
    op.create_check_constraint(op.f("ck_orders_discount_not_negative"), "orders",
                               "discount_amount >= 0")  # fmt: skip
    op.add_column("order_lines", sa.Column("charged_amount", sa.BigInteger(), nullable=True))
    op.add_column(
        "shipments",
        sa.Column("direction", sa.String(8), server_default=sa.text("'OUTBOUND'"), nullable=False),
    )
    op.add_column("shipments", sa.Column("return_id", sa.BigInteger(), nullable=True))
    op.create_foreign_key(op.f("fk_shipments_return_id_returns"), "shipments", "returns",
                          ["return_id"], ["id"])  # fmt: skip


def downgrade() -> None:
    op.execute("DELETE FROM shipments WHERE direction = 'RETURN'")
    op.drop_constraint(op.f("fk_shipments_return_id_returns"), "shipments", type_="foreignkey")
    op.drop_column("shipments", "return_id")
    op.drop_column("shipments", "direction")
    op.drop_column("order_lines", "charged_amount")
    op.drop_constraint(op.f("ck_orders_discount_not_negative"), "orders", type_="check")
    op.drop_column("orders", "discount_amount")
    op.drop_table("return_lines")
    op.drop_table("returns")
    op.drop_column("products", "return_window_s")
    op.drop_column("products", "returnable")
