"""Intake API keys, stored hashed (see :mod:`services.api_keys` for the scheme and contracts).

A presented key is ``of_<key_id>_<secret>``. ``key_id`` is public (it appears in ``orderflow
apikeys list`` and in logs); only the SHA-256 of ``secret`` is stored, so the table (or a backup
of it) holds nothing a client could present. ``signing_secret`` is the per-key HMAC key for
signed requests: the server must be able to read it, so it is stored encrypted with Fernet under
the ``KEY_ENCRYPTION_KEY`` setting, never in clear.
"""

from __future__ import annotations

from sqlalchemy import CheckConstraint, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, CreatedAt, Timestamp


class ApiKey(Base):
    """One intake API key bound to one ``source``.

    Accepted while ``revoked_at`` is NULL and ``expires_at`` is NULL or in the future. Rotation
    creates a new key, sets this one's ``expires_at`` to the end of the grace period and records
    the successor in ``replaced_by``. ``signing_required`` keys must sign every request; it
    implies a stored ``signing_secret`` (a CHECK constraint).
    """

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint(
            "NOT signing_required OR signing_secret IS NOT NULL", name="signing_secret_present"
        ),
        CheckConstraint("length(secret_hash) = 64", name="secret_hash_is_sha256_hex"),
        Index("ix_api_keys_source", "source"),
    )

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    source: Mapped[str] = mapped_column(String(64))
    secret_hash: Mapped[str] = mapped_column(String(64))  # hex SHA-256 of the secret part
    signing_secret: Mapped[str | None] = mapped_column(Text)  # Fernet token, never clear text
    signing_required: Mapped[bool] = mapped_column(server_default=text("false"))
    created_at: Mapped[CreatedAt]
    expires_at: Mapped[Timestamp | None]
    revoked_at: Mapped[Timestamp | None]
    replaced_by: Mapped[str | None] = mapped_column(String(32))

    def __repr__(self) -> str:  # never the hash or the signing secret
        return f"ApiKey(key_id={self.key_id!r}, source={self.source!r})"
