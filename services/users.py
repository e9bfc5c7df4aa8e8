"""Users: registration, login with revocable tokens, logout, and a user's orders.

Contracts:

* **Email** is normalized (surrounding space stripped, lower-cased) before it is stored or
  looked up, and is unique: registering it twice raises :class:`ConflictError`.
* **Password policy** (:func:`check_password`): 10 to 128 characters, at least two character
  classes (lower case, upper case, digits, anything else), not the email address, and not in
  the bundled list of common passwords (:func:`is_common_password`, compared lower-cased).
* **Unicode**: a password is NFKC-normalized (:func:`normalize_password`) before the policy
  check, hashing and verification, so the same password typed on two keyboards (full-width
  digits, a composed or decomposed accent, a ligature) is one password. Nothing else is altered
  (no stripping, no case folding). NFKC leaves ASCII unchanged, so every hash of an ASCII
  password stays valid; a hash stored before normalization of a non-ASCII password that NFKC
  changes still verifies (the raw password is tried second) and is rehashed from the
  normalized form at that login.
* **Hashes** are argon2id, m = 19 MiB, t = 2, p = 1 (OWASP's baseline for argon2id), stored in
  the PHC string form ``$argon2id$v=19$m=19456,t=2,p=1$...``. A stored hash made with weaker
  parameters or another variant is replaced at the next successful login.
* **Login** answers a wrong password and an unknown email with the same
  :class:`InvalidCredentials` after the same work: exactly one argon2 verification either way
  (an unknown email is verified against a dummy hash made with the current parameters).
* **Rate limit** (:class:`LoginLimiter`): at most ``max_failures`` failed logins per account
  *and* per client address in any ``window_s``; the next attempt raises :class:`LoginThrottled`
  without checking the password, even a correct one.
* **Registration limit** (:class:`RegistrationLimiter`): at most ``max_attempts``
  registrations that pass validation per client address in any ``window_s``; the next raises
  :class:`RegistrationThrottled` before anything is hashed or stored.
* **Tokens** are 32 random bytes (URL-safe base64). Only their SHA-256 is stored; they expire
  after ``ttl_s`` and logout revokes them.

Services never commit: the caller's unit of work does.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from importlib import resources
from typing import Any

import redis
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from redis.commands.core import Script
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from domain.errors import ConflictError, OrderflowError, ValidationError
from models import Order, User, UserSession

# --- errors -------------------------------------------------------------------------------------


class InvalidCredentials(OrderflowError):
    """Wrong password or unknown email: deliberately one error with one message."""

    def __init__(self) -> None:
        super().__init__("email or password is incorrect")


class RateLimited(OrderflowError):
    """A rate limit refused the attempt; try again in ``retry_after_s`` seconds."""

    what = "attempts"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many {self.what}; try again in {retry_after_s}s")
        self.retry_after_s = retry_after_s


class LoginThrottled(RateLimited):
    """Too many failed logins for this account or address."""

    what = "failed logins"


class RegistrationThrottled(RateLimited):
    """Too many registrations from this client address."""

    what = "registrations"


class Unauthenticated(OrderflowError):
    """A missing, unknown, expired or revoked session token."""

    def __init__(self) -> None:
        super().__init__("missing, invalid or expired session token")


# --- email and password -------------------------------------------------------------------------

EMAIL_MAX = 254  # RFC 5321 path limit
PASSWORD_MIN = 10
PASSWORD_MAX = 128
# Deliberately simple: one @, no spaces, a dot in the domain. Deliverability is the job of a
# confirmation mail, not of a regular expression.
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+$")


def normalize_email(raw: str) -> str:
    """Strip and lower-case; raise ``ValidationError("email", ...)`` if it is not an address."""
    email = raw.strip().lower()
    if not email:
        raise ValidationError("email", "is required")
    if len(email) > EMAIL_MAX:
        raise ValidationError("email", f"must be at most {EMAIL_MAX} characters")
    if not _EMAIL.match(email):
        raise ValidationError("email", "is not an email address")
    return email


def _classes(password: str) -> int:
    has = [False, False, False, False]  # lower, upper, digit, other
    for ch in password:
        if ch.islower():
            has[0] = True
        elif ch.isupper():
            has[1] = True
        elif ch.isdigit():
            has[2] = True
        else:
            has[3] = True
    return sum(has)


def normalize_password(password: str) -> str:
    """NFKC: compatibility characters (full-width, ligatures, composed/decomposed accents) map
    to one form. A no-op for ASCII, which is why stored hashes of ASCII passwords stay valid."""
    return unicodedata.normalize("NFKC", password)


_COMMON_HEADER_END = "--- passwords ---"


@lru_cache(maxsize=1)
def _common_passwords() -> frozenset[str]:
    # Django's list of 20,000 common passwords (see the file's header for source and licence).
    text = resources.files("services").joinpath("data/common_passwords.txt").read_text("utf-8")
    _, found, body = text.partition(f"\n{_COMMON_HEADER_END}\n")
    if not found:
        raise RuntimeError("common_passwords.txt: header end marker missing")
    return frozenset(
        normalize_password(line.strip()).lower() for line in body.splitlines() if line.strip()
    )


def is_common_password(password: str) -> bool:
    """True if the password, NFKC-normalized, stripped and lower-cased, is in the bundled list
    of common passwords (so "Password123" is as refused as "password123")."""
    return normalize_password(password).strip().lower() in _common_passwords()


def check_password(password: str, email: str) -> None:
    """Raise ``ValidationError("password", reason)`` unless the password meets the policy.
    Pass the normalized password (:func:`normalize_password`): lengths count its characters."""
    if len(password) < PASSWORD_MIN:
        raise ValidationError("password", f"must be at least {PASSWORD_MIN} characters")
    if len(password) > PASSWORD_MAX:
        raise ValidationError("password", f"must be at most {PASSWORD_MAX} characters")
    if _classes(password) < 2:
        raise ValidationError(
            "password", "must mix at least two of: lower case, upper case, digits, symbols"
        )
    if password.strip().lower() == email.strip().lower():
        raise ValidationError("password", "must not be the email address")
    if is_common_password(password):
        raise ValidationError("password", "is too common: it is in a list of leaked passwords")


# --- hashing ------------------------------------------------------------------------------------

ARGON2_TIME_COST = 2
ARGON2_MEMORY_KIB = 19_456
ARGON2_PARALLELISM = 1

#: The one hasher for new hashes. ``check_needs_rehash`` compares stored hashes against it.
HASHER = PasswordHasher(
    time_cost=ARGON2_TIME_COST,
    memory_cost=ARGON2_MEMORY_KIB,
    parallelism=ARGON2_PARALLELISM,
    hash_len=32,
    salt_len=16,
    type=Type.ID,
)


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    # Made with the current parameters, so verifying against it costs what a real check costs.
    return HASHER.hash(secrets.token_urlsafe(24))


def warm_up() -> None:
    """Make the dummy hash and load the common-password list now, so the first login or
    registration does not pay for them."""
    _dummy_hash()
    _common_passwords()


def hash_password(password: str) -> str:
    """Hash the NFKC-normalized password with the current parameters."""
    return HASHER.hash(normalize_password(password))


def _verify(stored: str, password: str) -> bool:
    """True if ``password`` matches ``stored``; a malformed stored hash never matches."""
    try:
        return HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


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
        raise ConflictError("email: already registered")
    user = session.get(User, user_id)
    assert user is not None
    return user


# --- rate limits --------------------------------------------------------------------------------

# A sliding-window log per key: a sorted set of attempts scored by the Redis server's clock in
# ms (never a client's: clocks of API processes drift). One script prunes, checks every key and
# takes a slot in all of them atomically, so concurrent attempts can never exceed the limit.
# KEYS: the logs to check; ARGV: limit, window ms, member naming this attempt.
# Returns 0 when the slot was taken, else the ms until the oldest attempt ages out.
_ACQUIRE = """
if redis.replicate_commands then redis.replicate_commands() end
local limit, window, member = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait = 0
for _, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= limit then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    wait = math.max(wait, tonumber(oldest[2]) + window - now)
  end
end
if wait > 0 then return wait end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, member)
  redis.call('PEXPIRE', key, window)
end
return 0
"""


def _address_bucket(address: str) -> str:
    # One IPv6 host usually owns a whole /64; limiting single addresses would be no limit.
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:100]
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _take_slot(script: Script, keys: list[str], limit: int, window_s: int) -> tuple[str, int]:
    """Take a slot in every log of ``keys``: ``(member, 0)``, or ``("", seconds to wait)``."""
    member = secrets.token_hex(8)
    wait_ms = int(script(keys=keys, args=[limit, window_s * 1000, member]))
    if wait_ms > 0:
        return "", max(1, -(-wait_ms // 1000))
    return member, 0


@dataclass(frozen=True, slots=True)
class LoginLimiter:
    """At most ``max_failures`` failed logins per account and per client address in any
    ``window_s`` seconds (sliding window). State lives in Redis under ``login:fail:*``.

    Every attempt first takes a slot (:meth:`acquire`); a successful login gives it back
    (:meth:`release`), so only failures stay counted. Refused attempts take no slot, so the
    window frees up ``window_s`` after the oldest counted failure.
    """

    client: redis.Redis
    max_failures: int = 10
    window_s: int = 60
    _script: Script = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_failures < 1 or self.window_s < 1:
            raise ValueError("max_failures and window_s must be at least 1")
        object.__setattr__(self, "_script", self.client.register_script(_ACQUIRE))

    @staticmethod
    def keys(email: str, address: str) -> list[str]:
        # The account key is a hash: raw addresses need not sit in Redis. Unknown emails are
        # limited like known ones, or a 429 would reveal which accounts exist.
        account = hashlib.sha256(email.encode()).hexdigest()[:32]
        return [f"login:fail:account:{account}", f"login:fail:addr:{_address_bucket(address)}"]

    def acquire(self, email: str, address: str) -> str:
        """Take a slot for one attempt and return its id, or raise :class:`LoginThrottled`."""
        keys = self.keys(email, address)
        member, wait_s = _take_slot(self._script, keys, self.max_failures, self.window_s)
        if wait_s:
            raise LoginThrottled(wait_s)
        return member

    def release(self, email: str, address: str, member: str) -> None:
        """The attempt did not fail: stop counting it."""
        pipe = self.client.pipeline(transaction=True)
        for key in self.keys(email, address):
            pipe.zrem(key, member)
        pipe.execute()


@dataclass(frozen=True, slots=True)
class RegistrationLimiter:
    """At most ``max_attempts`` registrations per client address (IPv6: per /64) in any
    ``window_s`` seconds, successful or not (a 409 counts: it is what enumeration needs).
    The same sliding-window script as :class:`LoginLimiter`, under ``register:addr:*``."""

    client: redis.Redis
    max_attempts: int = 20
    window_s: int = 3600
    _script: Script = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.window_s < 1:
            raise ValueError("max_attempts and window_s must be at least 1")
        object.__setattr__(self, "_script", self.client.register_script(_ACQUIRE))

    @staticmethod
    def keys(address: str) -> list[str]:
        return [f"register:addr:{_address_bucket(address)}"]

    def acquire(self, address: str) -> None:
        """Count one registration, or raise :class:`RegistrationThrottled`."""
        _, wait_s = _take_slot(self._script, self.keys(address), self.max_attempts, self.window_s)
        if wait_s:
            raise RegistrationThrottled(wait_s)


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
    stored = user.password_hash if user is not None else _dummy_hash()
    matched = [_verify(stored, candidate) for candidate in _candidates(password)]
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
