"""Console operators (one account per person) and the console's audit trail."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Index, SmallInteger, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, CreatedAt, Timestamp, UpdatedAt


class Operator(Base):
    """A person who logs in to the console. ``role`` is :class:`domain.operators.Role`'s value
    (1 viewer, 2 operator, 3 admin); ``password_hash`` is argon2id like users'. A disabled
    account keeps its row and name (the audit trail refers to it) and can no longer log in."""

    __tablename__ = "operators"
    __table_args__ = (CheckConstraint("role BETWEEN 1 AND 3", name="role_known"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[int] = mapped_column(SmallInteger)
    password_hash: Mapped[str] = mapped_column(String(255))
    disabled_at: Mapped[Timestamp | None]
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]

    def __repr__(self) -> str:  # never the hash
        return f"Operator(id={self.id!r}, name={self.name!r}, role={self.role!r})"


class ConsoleAudit(Base):
    """One row per thing a person did in the console or to operator accounts: logins (refused
    ones too), logouts, actions, account changes. ``actor`` names the person
    (``operator:<name>``, ``admin-key:<fingerprint>`` for the bootstrap key, ``cli:<os user>``);
    ``address`` is the client address as the API saw it. Rows are only ever inserted."""

    __tablename__ = "console_audit"
    __table_args__ = (Index("ix_console_audit_actor_id", "actor", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    at: Mapped[CreatedAt]
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(32))
    address: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
