"""settlement lines name the merchant's own numbers: out_trade_no and refund number

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04 13:40:00.000000

Alipay's and WeChat Pay's bills name each line by the provider's reference and by the merchant's
own (``out_trade_no``; ``out_request_no``/``out_refund_no``). Alipay gives a refund no id of its
own, and a payment whose provider reference we never learnt is still ours: matching falls back on
these numbers (:mod:`domain.settlement`). Nullable columns on a young table: no rewrite.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("settlement_lines", sa.Column("merchant_payment_ref", sa.String(128)))
    op.add_column("settlement_lines", sa.Column("merchant_refund_ref", sa.String(128)))


def downgrade() -> None:
    op.drop_column("settlement_lines", "merchant_refund_ref")
    op.drop_column("settlement_lines", "merchant_payment_ref")
