"""Users: registration, login with revocable tokens, logout, and a user's orders.

Contracts:

* **Email** is normalized (surrounding space stripped, lower-cased) before it is stored or
  looked up, and is unique: registering it twice raises :class:`ConflictError`.
* **Passwords** follow the policy and are hashed as :mod:`services.passwords` says.
* **Login** answers a wrong password and an unknown email with the same
  :class:`InvalidCredentials` after the same work: exactly one argon2 verification either way
  (an unknown email is verified against a dummy hash made with the current parameters).
* **Rate limits** on login and registration: :mod:`services.login_limits`.
* **Tokens** are 32 random bytes (URL-safe base64). Only their SHA-256 is stored; they expire
  after ``ttl_s`` and logout revokes them.

Services never commit: the caller's unit of work does.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from domain.errors import ConflictError, OrderflowError, ValidationError
from models import Order, User, UserSession
from services.login_limits import LoginLimiter, RegistrationLimiter
from services.passwords import (
    HASHER,
    check_password,
    dummy_hash,
    hash_password,
    normalize_email,
    normalize_password,
    verify_hash,
)

# --- errors -------------------------------------------------------------------------------------


class InvalidCredentials(OrderflowError):
    """Wrong password or unknown email: deliberately one error with one message."""

    def __init__(self) -> None:
        super().__init__("email or password is incorrect")


class Unauthenticated(OrderflowError):
    """A missing, unknown, expired or revoked session token."""

    def __init__(self) -> None:
        super().__init__("missing, invalid or expired session token")


# --- registration -------------------------------------------------------------------------------


def register(
    session: Session,
    email: str,
    password: str,
    *,
    display_name: str | None = None,
    is_admin: bool = False,
    limiter: RegistrationLimiter | None = None,
    client_address: str = "",
) -> User:
    """Create a user. Raises ``ValidationError`` naming the field, ``ConflictError`` if the
    normalized email is taken (the unique index decides, so two concurrent sign-ups of one
    address make one user), or :class:`RegistrationThrottled`.

    With a ``limiter`` (the public route passes one; the operator's CLI does not), an attempt
    that passes validation takes a slot for ``client_address`` before anything is hashed or
    stored; refused input (422) takes none, so a person fixing a password is not locked out.

    Enumeration: the ``ConflictError`` (409) tells the caller that an address has an account.
    It is kept on purpose: the issue asks for unique emails with a clear answer, and a shop
    cannot send a confirmation mail instead of answering. The limiter bounds what it leaks:
    every 409 costs a slot, so one address learns at most ``max_attempts`` answers a window.
    """
    normalized = normalize_email(email)
    password = normalize_password(password)
    check_password(password, normalized)
    name = display_name.strip() if display_name else None
    if name is not None and len(name) > 100:
        raise ValidationError("display_name", "must be at most 100 characters")
    if limiter is not None:
        limiter.acquire(client_address)
    user_id = session.execute(
        pg_insert(User)
        .values(
            email=normalized,
            password_hash=hash_password(password),
            display_name=name or None,
            is_admin=is_admin,
        )
        .on_conflict_do_nothing(index_elements=[User.email])
        .returning(User.id)
    ).scalar_one_or_none()
    if user_id is None:
        raise ConflictError(
            "email is already registered", field="email", reason="already registered"
        )
    user = session.get(User, user_id)
    assert user is not None
    return user


# --- sessions -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str  # shown to the client once; only its hash is stored
    expires_at: datetime
    user_id: int


def token_hash(token: str) -> str:
    # A fast hash is enough: tokens carry 256 random bits, nothing to brute-force.
    return hashlib.sha256(token.encode()).hexdigest()


def login(
    session: Session,
    limiter: LoginLimiter,
    email: str,
    password: str,
    *,
    client_address: str,
    now: datetime,
    ttl_s: int,
) -> IssuedToken:
    """Check the credentials and open a session, or raise :class:`InvalidCredentials` /
    :class:`LoginThrottled`. A weaker stored hash, or one of the raw password from before NFKC
    normalization, is replaced on success (compare-and-set, so a concurrent password change
    wins)."""
    normalized = email.strip().lower()  # no syntax check: a bad address is just unknown
    slot = limiter.acquire(normalized, client_address)
    try:
        user, legacy = _check_credentials(session, normalized, password)
    except InvalidCredentials:
        raise  # the slot stays taken: this is a counted failure
    except BaseException:
        limiter.release(normalized, client_address, slot)  # our fault, not a guess
        raise
    limiter.release(normalized, client_address, slot)
    _upgrade_hash(session, user, password, force=legacy)
    return _open_session(session, user.id, now=now, ttl_s=ttl_s)


def _candidates(password: str) -> list[str]:
    # The normalized form first; the raw form too when NFKC changed it, for hashes stored
    # before passwords were normalized. Depends only on the input, never on the account.
    normalized = normalize_password(password)
    return [normalized] if normalized == password else [normalized, password]


def _check_credentials(session: Session, email: str, password: str) -> tuple[User, bool]:
    """The user and whether the stored hash matched only the raw (pre-NFKC) password.

    A failure always verifies every candidate (against the dummy hash for an unknown email),
    so wrong password and unknown email cost the same for any input."""
    user = session.scalars(select(User).where(User.email == email)).one_or_none()
    stored = user.password_hash if user is not None else dummy_hash()
    matched = [verify_hash(stored, candidate) for candidate in _candidates(password)]
    if user is None or not any(matched):
        raise InvalidCredentials()
    return user, not matched[0]


def _upgrade_hash(session: Session, user: User, password: str, *, force: bool = False) -> None:
    """Rehash a weaker (or, with ``force``, a pre-normalization) stored hash."""
    if not force and not HASHER.check_needs_rehash(user.password_hash):
        return
    session.execute(
        update(User)
        .where(User.id == user.id, User.password_hash == user.password_hash)
        .values(password_hash=hash_password(password))
    )


def _open_session(session: Session, user_id: int, *, now: datetime, ttl_s: int) -> IssuedToken:
    if ttl_s < 1:
        raise ValidationError("ttl_s", "must be at least 1 second")
    token = secrets.token_urlsafe(32)
    expires_at = now + timedelta(seconds=ttl_s)
    session.add(UserSession(user_id=user_id, token_hash=token_hash(token), expires_at=expires_at))
    session.flush()
    return IssuedToken(token, expires_at, user_id)


def authenticate(session: Session, token: str, *, now: datetime) -> User:
    """The user owning a live (unrevoked, unexpired) token, or raise :class:`Unauthenticated`."""
    if not token:
        raise Unauthenticated()
    user = session.scalars(
        select(User)
        .join(UserSession, UserSession.user_id == User.id)
        .where(
            UserSession.token_hash == token_hash(token),
            UserSession.revoked_at.is_(None),
            UserSession.expires_at > now,
        )
    ).one_or_none()
    if user is None:
        raise Unauthenticated()
    return user


def logout(session: Session, token: str, *, now: datetime) -> None:
    """Revoke a live token (the row stays, with ``revoked_at``); a dead one is
    :class:`Unauthenticated`, so logging out twice fails the second time."""
    revoked = session.execute(
        update(UserSession)
        .where(
            UserSession.token_hash == token_hash(token),
            UserSession.revoked_at.is_(None),
            UserSession.expires_at > now,
        )
        .values(revoked_at=now)
        .returning(UserSession.id)
    ).scalar_one_or_none()
    if revoked is None:
        raise Unauthenticated()


# --- the user's orders --------------------------------------------------------------------------


def user_orders(session: Session, user_id: int, *, limit: int = 50) -> list[dict[str, Any]]:
    """The user's newest orders (``orders.user_id``), with lines, as plain JSON-able data."""
    if not 1 <= limit <= 200:
        raise ValidationError("limit", "must be between 1 and 200")
    orders = session.scalars(
        select(Order)
        .where(Order.user_id == user_id)
        .order_by(Order.created_at.desc(), Order.id)
        .limit(limit)
    )
    return [
        {
            "id": o.id,
            "source": o.source,
            "external_id": o.external_id,
            "status": o.status,
            "reason": o.reason,
            "currency": o.currency,
            "total_amount": o.total_amount,
            "created_at": o.created_at.isoformat(),
            "lines": [
                {"sku": line.sku, "quantity": line.quantity, "unit_amount": line.unit_amount}
                for line in o.lines
            ],
        }
        for o in orders
    ]
