"""callback_endpoints.secret encrypted at rest: a wider column and its format

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 20:00:00.000000

Callback secrets were stored in clear in ``varchar(200)``. Registration now stores a Fernet token
under ``KEY_ENCRYPTION_KEY`` (see ``services.secrets_at_rest``), longer than the secret, so the
column becomes ``text`` (varchar to text needs no table rewrite in PostgreSQL). ``secret_format``
says which rows hold what: every existing row is ``clear``, and the server default stays
``'clear'`` so a row inserted by code that predates this revision (during a rolling deploy) is
marked correctly too. Clear rows keep working; ``orderflow keys reencrypt`` encrypts them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column(
        "callback_endpoints",
        "secret",
        existing_type=sa.String(length=200),
        type_=sa.Text(),
        existing_nullable=False,
    )
    op.add_column(
        "callback_endpoints",
        sa.Column(
            "secret_format", sa.String(length=8), server_default=sa.text("'clear'"), nullable=False
        ),
    )
    op.create_check_constraint(
        op.f("ck_callback_endpoints_secret_format_known"),
        "callback_endpoints",
        "secret_format IN ('clear', 'fernet')",
    )


def downgrade() -> None:
    # Decrypting needs KEY_ENCRYPTION_KEY, which a migration does not have: refuse rather than
    # leave tokens where the old code expects the secret itself.
    encrypted = op.get_bind().scalar(
        sa.text("SELECT count(*) FROM callback_endpoints WHERE secret_format <> 'clear'")
    )
    if encrypted:
        raise RuntimeError(
            f"{encrypted} callback endpoint secret(s) are encrypted, which code below 0009 cannot "
            "read: delete those endpoints first (and register them again after the downgrade)"
        )
    op.drop_constraint(
        op.f("ck_callback_endpoints_secret_format_known"), "callback_endpoints", type_="check"
    )
    op.drop_column("callback_endpoints", "secret_format")
    op.alter_column(
        "callback_endpoints",
        "secret",
        existing_type=sa.Text(),
        type_=sa.String(length=200),
        existing_nullable=False,
    )
