"""parcels: a shipment per warehouse, with its lines

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 09:00:00.000000

An order whose lines sit in several warehouses ships as one parcel per warehouse
(:mod:`domain.parcels`). ``shipments`` gains:

* ``warehouse`` — where the parcel leaves from;
* ``seq`` — the parcel's number for its (order, warehouse): 1 when planned, one more for each
  parcel re-allocated there later. ``UNIQUE (order_id, warehouse, seq)`` is what keeps a crash
  or a retry from creating a second parcel for a warehouse (the booking key is derived from
  the three, so it cannot book one either), while a re-allocated parcel still gets a row of its
  own. (A partial unique index on live parcels would forbid re-allocating to a warehouse whose
  first parcel of the order is already on its way.) Legacy rows with no warehouse are NULL, and
  NULLs never collide;
* ``booking_sent_at`` — the booking call may have reached the warehouse;
* ``cancelled_at`` / ``cancel_reason`` — refused and re-allocated, or cancelled unshipped.

``shipment_lines`` (shipment, sku, quantity) holds the units each parcel carries.

Backfill of legacy rows (one parcel per order): ``warehouse`` from the order's reservations
(ACTIVE or CONSUMED) when they name exactly one warehouse, else NULL; their lines from those
reservations summed per SKU; ``booking_sent_at`` = ``created_at`` for a row with a booking key
(the row was written right before the booking call). A legacy booking still in flight when
this runs is retried with its old key and a body that now names the warehouse: the warehouse
answers 409 (same key, other body), so drain the shipping queue before migrating.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("shipments", sa.Column("warehouse", sa.String(64), nullable=True))
    op.add_column(
        "shipments", sa.Column("seq", sa.Integer(), server_default=sa.text("1"), nullable=False)
    )
    op.add_column("shipments", sa.Column("booking_sent_at", sa.DateTime(timezone=True)))
    op.add_column("shipments", sa.Column("cancelled_at", sa.DateTime(timezone=True)))
    op.add_column("shipments", sa.Column("cancel_reason", sa.String(200)))
    op.create_unique_constraint(
        "uq_shipments_order_warehouse_seq", "shipments", ["order_id", "warehouse", "seq"]
    )
    op.create_check_constraint(op.f("ck_shipments_seq_positive"), "shipments", "seq > 0")
    op.create_table(
        "shipment_lines",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column(
            "shipment_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "shipments.id",
                name=op.f("fk_shipment_lines_shipment_id_shipments"),
                ondelete="CASCADE",
            ),
            nullable=False,
        ),
        sa.Column("sku", sa.String(64), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.CheckConstraint("quantity > 0", name=op.f("ck_shipment_lines_quantity_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shipment_lines")),
        sa.UniqueConstraint("shipment_id", "sku", name="uq_shipment_lines_shipment_sku"),
    )
    op.execute(
        """
        UPDATE shipments s SET warehouse = r.warehouse
        FROM (SELECT order_id, min(warehouse) AS warehouse FROM reservations
              WHERE status IN ('ACTIVE', 'CONSUMED')
              GROUP BY order_id HAVING count(DISTINCT warehouse) = 1) r
        WHERE r.order_id = s.order_id
        """
    )
    op.execute(
        """
        INSERT INTO shipment_lines (shipment_id, sku, quantity)
        SELECT s.id, r.sku, sum(r.quantity) FROM shipments s
        JOIN reservations r ON r.order_id = s.order_id AND r.status IN ('ACTIVE', 'CONSUMED')
        GROUP BY s.id, r.sku
        """
    )
    op.execute("UPDATE shipments SET booking_sent_at = created_at WHERE booking_key LIKE 'ship-%'")


def downgrade() -> None:
    op.drop_table("shipment_lines")
    op.drop_constraint(op.f("ck_shipments_seq_positive"), "shipments", type_="check")
    op.drop_constraint("uq_shipments_order_warehouse_seq", "shipments", type_="unique")
    for column in ("cancel_reason", "cancelled_at", "booking_sent_at", "seq", "warehouse"):
        op.drop_column("shipments", column)
