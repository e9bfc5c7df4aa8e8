"""Intake API keys: hashed storage, rotation and revocation.

Key format and storage
    A key is presented as ``X-API-Key: of_<key_id>_<secret>``: ``key_id`` is 16 hex digits and
    public (it is the row's primary key, shown by ``orderflow apikeys list`` and fine in logs);
    ``secret`` is 32 random bytes, URL-safe base64. Only the SHA-256 of the secret is stored.
    A fast hash is the right tool here, not argon2: the secret carries 256 random bits, so there
    is nothing to brute-force, and argon2 (~50 ms and 19 MiB per verification) on every intake
    request would cap the API at a few dozen requests per second per core and make it easy to
    exhaust. No pepper either, for the same reason: a pepper protects guessable secrets.
    Lookup is by ``key_id``; the hash of the presented secret is compared in constant time.

Contracts
    * :func:`create_key` returns the key (and signing secret) once, in :class:`IssuedKey`;
      neither is stored in clear nor logged. Callers show them once and forget them.
    * :func:`check_key` accepts a key while it is neither revoked nor past ``expires_at``;
      an unknown id and a wrong secret get the same answer (``unknown API key``); a revoked or
      expired key is named as such, but only to a caller who holds its secret.
    * :func:`revoke_key` is immediate in the database and idempotent. API processes cache
      lookups for ``API_KEY_CACHE_TTL_S`` (:class:`KeyCache`), so a revocation (and the expiry
      that :func:`rotate_key` sets) takes effect in every process within that TTL.
    * :func:`rotate_key` creates a key for the same source (same signing requirement) and sets
      the old key's ``expires_at`` to ``now + grace`` (never later than it already was), so both
      keys are accepted during the grace period and clients can switch without a rejected
      request. A revoked, expired or already rotated key cannot be rotated.
    * Services never commit: the caller's unit of work does.

Signed requests (the signing secret a key may carry, and the checks of a signed request) are
:mod:`services.request_signing`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session

from domain.errors import ConflictError, NotFound, OrderflowError, ValidationError
from models import ApiKey

KEY_PREFIX = "of_"
SIGNING_SECRET_PREFIX = "ofs_"  # noqa: S105 - a prefix, not a secret
KEY_ID_HEX_DIGITS = 16
SECRET_BYTES = 32
TIMESTAMP_HEADER = "X-Timestamp"
NONCE_HEADER = "X-Nonce"
SIGNATURE_HEADER = "X-Signature"

_PRESENTED = re.compile(r"of_([0-9a-f]{16})_([A-Za-z0-9_-]{32,128})")
_SOURCE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")

# --- errors -------------------------------------------------------------------------------------


class AuthRejected(OrderflowError):
    """The request may not pass (HTTP 401). ``field`` names the header, ``reason`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class AuthUnavailable(OrderflowError):
    """The request cannot be checked right now (HTTP 503): the nonce store is unreachable, or a
    signing secret cannot be decrypted with the configured ``KEY_ENCRYPTION_KEY``."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


# --- values -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key as created: ``api_key`` and ``signing_secret`` exist only in this object."""

    key_id: str
    source: str
    expires_at: datetime | None
    signing_required: bool
    api_key: str = field(repr=False)
    signing_secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What may be shown about a key: never a secret, a hash or a ciphertext."""

    key_id: str
    source: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    replaced_by: str | None
    signing_required: bool
    can_sign: bool

    def state(self, now: datetime) -> str:
        """``revoked``, ``expired``, ``rotating`` (replaced, in its grace period) or ``active``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "rotating" if self.replaced_by else "active"


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A snapshot of one row for authentication (what :class:`KeyCache` holds)."""

    key_id: str
    source: str
    secret_hash: str = field(repr=False)
    signing_secret: str | None = field(repr=False)  # Fernet token
    signing_required: bool
    expires_at: datetime | None
    revoked_at: datetime | None


def hash_secret(secret: str) -> str:
    """Hex SHA-256 of a key's secret part (see the module docstring for why not argon2)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_api_key(presented: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of an ``of_<key_id>_<secret>`` key, or None if it is not one."""
    match = _PRESENTED.fullmatch(presented)
    return (match.group(1), match.group(2)) if match else None


# --- encryption of signing secrets --------------------------------------------------------------


class SecretCipher:
    """Fernet encryption of secrets at rest (signing secrets here, callback secrets in
    :mod:`services.secrets_at_rest`). The first key encrypts; every key decrypts, so a new key
    can be put first and old rows re-encrypted at leisure (``orderflow keys reencrypt``)."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("KEY_ENCRYPTION_KEY: no key given")
        try:
            fernets = [Fernet(k.strip().encode()) for k in keys]
            self._first = fernets[0]
            self._fernet = MultiFernet(fernets)
        except (ValueError, TypeError):
            raise ValueError(
                "KEY_ENCRYPTION_KEY: each key must be 32 url-safe base64-encoded bytes "
                "(Fernet.generate_key())"
            ) from None

    @classmethod
    def from_setting(cls, value: SecretStr | None) -> SecretCipher | None:
        """The cipher for the ``KEY_ENCRYPTION_KEY`` setting, or None when it is unset."""
        if value is None or not value.get_secret_value().strip():
            return None
        return cls([k for k in value.get_secret_value().split(",") if k.strip()])

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        plaintext = self.decrypt_or_none(token)
        if plaintext is None:
            raise AuthUnavailable(
                SIGNATURE_HEADER, "the key's signing secret cannot be decrypted (server setup)"
            )
        return plaintext

    def decrypt_or_none(self, token: str) -> str | None:
        """The plaintext of ``token``, or None when no key decrypts it (a key missing from the
        setting, or not a Fernet token at all)."""
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            return None

    def is_current(self, token: str) -> bool:
        """Whether ``token`` is encrypted under the first key (re-encrypting it changes nothing)."""
        try:
            self._first.decrypt(token.encode())
        except InvalidToken:
            return False
        return True


# --- keys in the database -----------------------------------------------------------------------


def _check_source(source: str) -> None:
    if not _SOURCE.fullmatch(source):
        raise ValidationError("source", "must be 1-64 characters of A-Z a-z 0-9 _ . : -")


def _check_expiry(expires_in: timedelta | None) -> None:
    if expires_in is not None and expires_in <= timedelta(0):
        raise ValidationError("expires_in", "must be positive")


def _insert_key(
    session: Session,
    *,
    source: str,
    now: datetime,
    expires_in: timedelta | None,
    require_signature: bool,
    cipher: SecretCipher | None,
) -> IssuedKey:
    if require_signature and cipher is None:
        raise ValidationError(
            "KEY_ENCRYPTION_KEY",
            "must be set to create a key with a signing secret (signing secrets are stored "
            "encrypted with it)",
        )
    key_id = secrets.token_hex(KEY_ID_HEX_DIGITS // 2)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    signing_secret = SIGNING_SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES) if cipher else None
    expires_at = now + expires_in if expires_in is not None else None
    session.add(
        ApiKey(
            key_id=key_id,
            source=source,
            secret_hash=hash_secret(secret),
            signing_secret=cipher.encrypt(signing_secret) if cipher and signing_secret else None,
            signing_required=require_signature,
            created_at=now,
            expires_at=expires_at,
        )
    )
    session.flush()
    return IssuedKey(
        key_id=key_id,
        source=source,
        expires_at=expires_at,
        signing_required=require_signature,
        api_key=f"{KEY_PREFIX}{key_id}_{secret}",
        signing_secret=signing_secret,
    )


def create_key(
    session: Session,
    *,
    source: str,
    now: datetime,
    expires_in: timedelta | None = None,
    require_signature: bool = False,
    cipher: SecretCipher | None = None,
) -> IssuedKey:
    """Create a key bound to ``source``. A signing secret is made whenever ``cipher`` is given
    (so ``REQUIRE_SIGNED_REQUESTS`` can be switched on later); ``require_signature`` without a
    cipher raises ``ValidationError("KEY_ENCRYPTION_KEY", ...)``. ``ValidationError`` also for a
    malformed source or a non-positive ``expires_in``."""
    _check_source(source)
    _check_expiry(expires_in)
    return _insert_key(
        session,
        source=source,
        now=now,
        expires_in=expires_in,
        require_signature=require_signature,
        cipher=cipher,
    )


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(
        key_id=row.key_id,
        source=row.source,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        replaced_by=row.replaced_by,
        signing_required=row.signing_required,
        can_sign=row.signing_secret is not None,
    )


def list_keys(session: Session, *, source: str | None = None) -> list[KeyInfo]:
    """Every key (revoked and expired ones too), newest first; optionally one source's only."""
    stmt = select(ApiKey).order_by(ApiKey.created_at.desc(), ApiKey.key_id)
    if source is not None:
        stmt = stmt.where(ApiKey.source == source)
    return [_info(row) for row in session.scalars(stmt)]


def _locked(session: Session, key_id: str) -> ApiKey:
    row = session.scalars(
        select(ApiKey).where(ApiKey.key_id == key_id).with_for_update()
    ).one_or_none()
    if row is None:
        raise NotFound(f"key_id: no API key {key_id!r}")
    return row


def revoke_key(session: Session, key_id: str, *, now: datetime) -> tuple[KeyInfo, bool]:
    """Revoke a key at ``now``; returns its info and whether this call revoked it (False: it
    already was, and keeps its first ``revoked_at``). ``NotFound`` for an unknown id."""
    row = _locked(session, key_id)
    changed = row.revoked_at is None
    if changed:
        row.revoked_at = now
        session.flush()
    return _info(row), changed


def rotate_key(
    session: Session,
    key_id: str,
    *,
    now: datetime,
    grace: timedelta,
    expires_in: timedelta | None = None,
    cipher: SecretCipher | None = None,
) -> tuple[IssuedKey, KeyInfo]:
    """Create the successor of ``key_id`` (same source and signing requirement; a signing secret
    when ``cipher`` is given) and let the old key expire at ``now + grace`` (or earlier, if it
    already expired sooner); returns the new key and the old key's updated info. The old row is
    locked, so two concurrent rotations make one successor; the second raises
    ``ConflictError``, as does rotating a revoked or expired key. ``NotFound`` for an unknown id.
    """
    if grace < timedelta(0):
        raise ValidationError("grace", "must not be negative")
    _check_expiry(expires_in)
    old = _locked(session, key_id)
    if old.revoked_at is not None:
        raise ConflictError(f"key_id: key {key_id} is revoked; create a new key instead")
    if old.expires_at is not None and old.expires_at <= now:
        raise ConflictError(f"key_id: key {key_id} has expired; create a new key instead")
    if old.replaced_by is not None:
        raise ConflictError(
            f"key_id: key {key_id} was already rotated to {old.replaced_by}; rotate that one"
        )
    new = _insert_key(
        session,
        source=old.source,
        now=now,
        expires_in=expires_in,
        require_signature=old.signing_required,
        cipher=cipher,
    )
    end_of_grace = now + grace
    if old.expires_at is None or old.expires_at > end_of_grace:
        old.expires_at = end_of_grace
    old.replaced_by = new.key_id
    session.flush()
    return new, _info(old)


def load_key(session: Session, key_id: str) -> StoredKey | None:
    """The snapshot used to authenticate ``key_id``, or None for an unknown id."""
    row = session.get(ApiKey, key_id)
    if row is None:
        return None
    return StoredKey(
        key_id=row.key_id,
        source=row.source,
        secret_hash=row.secret_hash,
        signing_secret=row.signing_secret,
        signing_required=row.signing_required,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


_UNKNOWN_HASH = hash_secret("no such key")


def check_key(stored: StoredKey | None, secret: str, *, now: datetime) -> StoredKey:
    """Return ``stored`` if ``secret`` is its secret and the key is live, else raise
    :class:`AuthRejected` on ``X-API-Key``. The hash comparison is constant-time, and done for
    unknown ids too."""
    presented = hash_secret(secret)
    matches = hmac.compare_digest(stored.secret_hash if stored else _UNKNOWN_HASH, presented)
    if stored is None or not matches:
        raise AuthRejected("X-API-Key", "unknown API key")
    if stored.revoked_at is not None:
        when = stored.revoked_at.isoformat(timespec="seconds")
        raise AuthRejected("X-API-Key", f"key {stored.key_id} was revoked at {when}")
    if stored.expires_at is not None and stored.expires_at <= now:
        when = stored.expires_at.isoformat(timespec="seconds")
        raise AuthRejected("X-API-Key", f"key {stored.key_id} expired at {when}")
    return stored


class KeyCache:
    """Per-process cache of :class:`StoredKey` snapshots by key id, each kept ``ttl_s`` seconds.

    Only found keys are cached, so a key is usable as soon as it is committed. A revocation or a
    changed expiry reaches a process at most ``ttl_s`` after it committed (the snapshot is then
    reloaded); expiry itself is checked against the clock on every request. ``ttl_s = 0``
    disables caching. Thread-safe.

    ``clock`` (seconds, default :func:`time.monotonic`) stamps and ages the entries; it is a
    public attribute so a test can move the cache's time instead of waiting out the TTL. Replace
    it only while the cache is empty: entries keep the stamp of the clock that put them.
    """

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock: Callable[[], float] = clock
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, StoredKey]] = {}

    def get(self, key_id: str) -> StoredKey | None:
        """The cached snapshot, or None when absent or older than the TTL."""
        if self.ttl_s <= 0:
            return None
        with self._lock:
            entry = self._entries.get(key_id)
            if entry is None:
                return None
            if self.clock() - entry[0] >= self.ttl_s:
                del self._entries[key_id]
                return None
            return entry[1]

    def put(self, stored: StoredKey) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            if len(self._entries) >= 10_000:  # bounded: drop everything rather than grow
                self._entries.clear()
            self._entries[stored.key_id] = (self.clock(), stored)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
