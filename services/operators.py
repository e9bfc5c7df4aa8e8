"""Console operator accounts and the console's audit trail.

Contracts:

* :func:`create` makes an account with a role and a password that meets the users' policy
  (:func:`services.passwords.check_password`), hashed with argon2id; a taken name is
  ``ConflictError("name")``.
* :func:`authenticate` returns the account for a name and password, or None. A wrong
  password, an unknown name and a disabled account cost the same (every failure verifies a
  hash: the dummy one when there is no account), so timing tells nothing about which names
  exist. Throttling is the caller's (the console's limiter), before this runs.
* :func:`disable` stamps ``disabled_at``; the caller ends the account's console sessions
  (:meth:`services.console_sessions.SessionStore.revoke_operator`). Disabling twice is a no-op.
* :func:`audit` inserts one :class:`models.ConsoleAudit` row in the caller's transaction;
  :func:`audit_page` reads them newest first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from domain.errors import ConflictError, NotFound
from domain.operators import Role, normalize_name
from models import ConsoleAudit, Operator
from services.passwords import (
    check_password,
    dummy_hash,
    hash_password,
    normalize_password,
    verify_hash,
)


@dataclass(frozen=True, slots=True)
class OperatorView:
    id: int
    name: str
    role: Role
    disabled_at: datetime | None
    created_at: datetime

    @property
    def actor(self) -> str:
        """How the audit trail and the timeline name this person."""
        return f"operator:{self.name}"


def _view(op: Operator) -> OperatorView:
    return OperatorView(op.id, op.name, Role(op.role), op.disabled_at, op.created_at)


def create(session: Session, name: str, password: str, role: Role) -> OperatorView:
    """A new account, or ``ValidationError`` (name, password) / ``ConflictError`` (taken)."""
    name = normalize_name(name)
    password = normalize_password(password)
    check_password(password, name)
    op = Operator(name=name, role=int(role), password_hash=hash_password(password))
    try:
        with session.begin_nested():
            session.add(op)
            session.flush()
    except IntegrityError:
        raise ConflictError(f"operator {name} exists", field="name") from None
    return _view(op)


def authenticate(session: Session, name: str, password: str) -> OperatorView | None:
    """The enabled account with this name and password, or None (same cost either way)."""
    op = session.scalar(select(Operator).where(Operator.name == name.strip().lower()))
    stored = op.password_hash if op is not None else dummy_hash()
    ok = verify_hash(stored, normalize_password(password))
    if op is None or not ok or op.disabled_at is not None:
        return None
    return _view(op)


def get(session: Session, operator_id: int) -> OperatorView | None:
    op = session.get(Operator, operator_id)
    return _view(op) if op is not None else None


def list_all(session: Session) -> list[OperatorView]:
    return [_view(op) for op in session.scalars(select(Operator).order_by(Operator.name))]


def disable(session: Session, name: str, *, now: datetime) -> OperatorView:
    """Disable the account (idempotent); ``NotFound`` for an unknown name."""
    op = session.scalar(
        select(Operator).where(Operator.name == name.strip().lower()).with_for_update()
    )
    if op is None:
        raise NotFound(f"no operator named {name!r}", field="name")
    if op.disabled_at is None:
        op.disabled_at = now
    return _view(op)


def audit(
    session: Session,
    *,
    actor: str,
    action: str,
    outcome: str = "ok",
    target: str | None = None,
    address: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """One audit row, in the caller's transaction (so an action and its row commit together)."""
    session.add(
        ConsoleAudit(
            actor=actor[:100], action=action[:64], outcome=outcome[:32],
            target=None if target is None else target[:200],
            address=None if address is None else address[:64], detail=detail,
        )
    )  # fmt: skip


def audit_page(
    session: Session, *, actor: str = "", before_id: int | None = None, limit: int = 100
) -> tuple[list[dict[str, Any]], int]:
    """Audit rows newest first (optionally one actor's, optionally older than ``before_id``)
    and the total count for that filter."""
    query = select(ConsoleAudit)
    count = select(func.count()).select_from(ConsoleAudit)
    if actor:
        query = query.where(ConsoleAudit.actor == actor)
        count = count.where(ConsoleAudit.actor == actor)
    if before_id is not None:
        query = query.where(ConsoleAudit.id < before_id)
    rows = session.scalars(query.order_by(ConsoleAudit.id.desc()).limit(limit))
    out = [
        {
            "id": r.id,
            "at": r.at,
            "actor": r.actor,
            "action": r.action,
            "target": r.target,
            "outcome": r.outcome,
            "address": r.address,
            "detail": r.detail or {},
        }
        for r in rows
    ]
    return out, int(session.scalar(count) or 0)
