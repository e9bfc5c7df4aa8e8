"""stock_movements append-only: a trigger refuses UPDATE and DELETE

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-09 10:00:00.000000

The ledger is the evidence the stock counters are checked against (``sum(delta_*) == counter``):
a row changed or removed afterwards would make a drift invisible or invent one. No code path
updates or deletes a movement (a correction is a new ``adjust``/``repair`` row), so the database
now refuses both, whoever asks. TRUNCATE (the test suite's per-test cleanup, a deliberate reset)
is a statement-level operation and is not refused.
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION stock_movements_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'stock_movements is append-only: % of movement % refused',
                TG_OP, OLD.id
                USING ERRCODE = 'restrict_violation',
                      HINT = 'record a correcting movement (adjust or repair) instead';
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER stock_movements_append_only
        BEFORE UPDATE OR DELETE ON stock_movements
        FOR EACH ROW EXECUTE FUNCTION stock_movements_append_only()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER stock_movements_append_only ON stock_movements")
    op.execute("DROP FUNCTION stock_movements_append_only()")
