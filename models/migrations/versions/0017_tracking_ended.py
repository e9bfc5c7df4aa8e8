"""tracking_ended: shipments whose tracking the provider has finished are no longer polled

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 09:00:00.000000

Kuaidi100 says when it is done with a parcel (a ``shutdown`` or ``abort`` push, ``ischeck=1``,
state 4 退签): see :mod:`services.tracking.finish`. Until now only a DELIVERED or EXPIRED status
stopped polling, so a parcel left in EXCEPTION was polled hourly forever. ``tracking_ended_at``
records that moment; a shipment with it set is never claimed again and no later result moves it
or its order. A nullable column without a default: nothing is rewritten.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("shipments", sa.Column("tracking_ended_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("shipments", "tracking_ended_at")
