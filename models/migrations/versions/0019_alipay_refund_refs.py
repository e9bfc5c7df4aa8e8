"""alipay_refund_refs: Alipay refunds keep no provider reference (it was the trade's number)

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-04 17:00:00.000000

Alipay gives a refund no id of its own: the ``trade_no`` in its refund answers and notifications
is the trade's. The adapter used to store it as the refund's ``provider_refund_ref``, so every
refund of one trade had the same "reference" and settlement had to know to ignore it. The adapter
now reports none (refunds are named by our ``refund_no``, Alipay's ``out_request_no``); this
clears what was stored: an Alipay refund whose reference equals its payment's ``trade_no``.
Downgrade restores it from the payment.
"""

from __future__ import annotations

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "UPDATE refunds r SET provider_refund_ref = NULL FROM payments p "
        "WHERE p.id = r.payment_id AND p.provider = 'alipay' "
        "AND r.provider_refund_ref = p.provider_ref"
    )


def downgrade() -> None:
    op.execute(
        "UPDATE refunds r SET provider_refund_ref = p.provider_ref FROM payments p "
        "WHERE p.id = r.payment_id AND p.provider = 'alipay' AND r.provider_refund_ref IS NULL"
    )
