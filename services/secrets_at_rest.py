"""Secrets the server must read back, stored encrypted at rest, and moving them to the newest key.

Which secrets
    * ``callback_endpoints.secret``: the HMAC key that signs status callbacks. Its format is in
      ``callback_endpoints.secret_format``: ``fernet`` (a Fernet token, what registration
      writes) or ``clear`` (rows written before migration 0009, or by code that predates it).
    * ``api_keys.signing_secret``: always a Fernet token, or NULL (a key that cannot sign).

Both use one :class:`~services.api_keys.SecretCipher` built from ``KEY_ENCRYPTION_KEY``
(comma-separated Fernet keys, newest first: the first encrypts, every key decrypts).

Contracts
    * :func:`cipher_from_setting` builds the cipher from the setting's value (callers read the
      setting; services read no settings themselves).
    * :func:`seal_callback_secret` encrypts a new callback secret; without a cipher it raises
      ``ValidationError("KEY_ENCRYPTION_KEY", ...)``: no new secret is ever stored in clear.
    * :func:`open_callback_secret` returns the secret to sign with: a ``clear`` row as stored
      (legacy rows keep working until :func:`reencrypt` moves them), a ``fernet`` row decrypted.
      A row no key decrypts, or a ``fernet`` row while no key is configured, raises
      :class:`SecretUnavailable`: a server setup error, never blamed on the receiver, and its
      message names the endpoint, never the secret or the token.
    * :func:`reencrypt` moves every stored secret to the cipher's first key: ``clear`` callback
      secrets are encrypted, tokens under an older key are re-encrypted, tokens already under
      the first key are left alone (so a second run moves nothing). A secret no key decrypts is
      reported by id and never overwritten. It works in batches of ``batch_size`` rows, one
      transaction each, locking the batch ``FOR UPDATE SKIP LOCKED`` so it never waits behind
      (or holds up for long) live traffic; rows another transaction held are done at the end,
      this time waiting for their lock, so no row is missed. Safe to run twice at once.

Rotation: put the new key first in ``KEY_ENCRYPTION_KEY`` on every process, run
``orderflow keys reencrypt``, and drop the old key once it reports nothing undecryptable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import InstrumentedAttribute, Session

from domain.errors import OrderflowError, ValidationError
from models import ApiKey, CallbackEndpoint
from services.api_keys import SecretCipher
from services.unit_of_work import UnitOfWork

CLEAR = "clear"
FERNET = "fernet"
DEFAULT_BATCH_SIZE = 500

Outcome = Literal["moved", "current", "undecryptable"]


class SecretUnavailable(OrderflowError):
    """A stored secret cannot be read with the configured ``KEY_ENCRYPTION_KEY``: the server's
    setup is wrong (a key missing from the setting), not the input or the receiver. Not
    retryable: a retry cannot bring the key back."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def cipher_from_setting(value: SecretStr | None) -> SecretCipher | None:
    """The cipher for a ``KEY_ENCRYPTION_KEY`` value, or None when it is unset; a malformed
    value raises ``ValidationError("KEY_ENCRYPTION_KEY", ...)`` saying what is wrong, never
    showing the value."""
    try:
        return SecretCipher.from_setting(value)
    except ValueError as exc:
        raise ValidationError(
            "KEY_ENCRYPTION_KEY", str(exc).removeprefix("KEY_ENCRYPTION_KEY: ")
        ) from None


# --- callback secrets ---------------------------------------------------------------------------


def seal_callback_secret(secret: SecretStr, cipher: SecretCipher | None) -> str:
    """The value to store for a callback secret (its format is :data:`FERNET`)."""
    if cipher is None:
        raise ValidationError(
            "KEY_ENCRYPTION_KEY",
            "must be set to register a callback endpoint (its secret is stored encrypted with it)",
        )
    return cipher.encrypt(secret.get_secret_value())


def open_callback_secret(endpoint: CallbackEndpoint, cipher: SecretCipher | None) -> SecretStr:
    """The secret that signs ``endpoint``'s callbacks; :class:`SecretUnavailable` when it
    cannot be decrypted."""
    if endpoint.secret_format == CLEAR:
        return SecretStr(endpoint.secret)
    where = f"callback endpoint {endpoint.id} ({endpoint.source})"
    if cipher is None:
        raise SecretUnavailable(
            "KEY_ENCRYPTION_KEY", f"is unset, so the secret of {where} cannot be decrypted"
        )
    plaintext = cipher.decrypt_or_none(endpoint.secret)
    if plaintext is None:
        raise SecretUnavailable(
            "KEY_ENCRYPTION_KEY",
            f"no key decrypts the secret of {where} (server setup: add back the key it was "
            "encrypted with)",
        )
    return SecretStr(plaintext)


# --- re-encryption ------------------------------------------------------------------------------


@dataclass(slots=True)
class TableReport:
    """What :func:`reencrypt` did to one table's secrets; ``undecryptable`` holds row ids."""

    table: str
    moved: int = 0
    current: int = 0
    undecryptable: list[str] = field(default_factory=list)

    def count(self, row_id: object, outcome: Outcome) -> None:
        if outcome == "moved":
            self.moved += 1
        elif outcome == "current":
            self.current += 1
        else:
            self.undecryptable.append(str(row_id))


@dataclass(frozen=True, slots=True)
class ReencryptReport:
    tables: tuple[TableReport, ...]

    @property
    def undecryptable(self) -> int:
        return sum(len(t.undecryptable) for t in self.tables)


def _moved_token(token: str, cipher: SecretCipher) -> tuple[Outcome, str | None]:
    """What to do with ``token``, and its replacement when it is to be moved."""
    if cipher.is_current(token):
        return "current", None
    plaintext = cipher.decrypt_or_none(token)
    if plaintext is None:
        return "undecryptable", None
    return "moved", cipher.encrypt(plaintext)


def _move_endpoint(row: Any, cipher: SecretCipher) -> Outcome:
    endpoint: CallbackEndpoint = row
    if endpoint.secret_format == CLEAR:
        endpoint.secret, endpoint.secret_format = cipher.encrypt(endpoint.secret), FERNET
        return "moved"
    outcome, token = _moved_token(endpoint.secret, cipher)
    if token is not None:
        endpoint.secret = token
    return outcome


def _move_api_key(row: Any, cipher: SecretCipher) -> Outcome:
    key: ApiKey = row
    assert key.signing_secret is not None  # the query selects only keys that have one
    outcome, token = _moved_token(key.signing_secret, cipher)
    if token is not None:
        key.signing_secret = token
    return outcome


@dataclass(frozen=True, slots=True)
class _Table:
    """One table's secrets: its rows (``where``), their key, and how one row is moved."""

    name: str
    entity: type[Any]
    key: InstrumentedAttribute[Any]
    where: Sequence[Any]
    move: Callable[[Any, SecretCipher], Outcome]


_CAN_SIGN = (ApiKey.signing_secret.is_not(None),)
_TABLES = (
    _Table("callback_endpoints", CallbackEndpoint, CallbackEndpoint.id, (), _move_endpoint),
    _Table("api_keys", ApiKey, ApiKey.key_id, _CAN_SIGN, _move_api_key),
)


def _next_keys(session: Session, table: _Table, after: object, limit: int) -> list[Any]:
    stmt = select(table.key).where(*table.where).order_by(table.key).limit(limit)
    if after is not None:
        stmt = stmt.where(table.key > after)
    return list(session.scalars(stmt))


def _move_rows(
    session: Session,
    table: _Table,
    keys: Sequence[Any],
    cipher: SecretCipher,
    report: TableReport,
    *,
    skip_locked: bool,
) -> set[Any]:
    """Lock and move the rows of ``keys`` that still exist; returns the keys it handled."""
    rows = session.scalars(
        select(table.entity)
        .where(table.key.in_(keys), *table.where)
        .order_by(table.key)
        .with_for_update(skip_locked=skip_locked)
    ).all()
    key_name = table.key.key
    for row in rows:
        report.count(getattr(row, key_name), table.move(row, cipher))
    return {getattr(row, key_name) for row in rows}


def _reencrypt_table(
    uow: UnitOfWork, table: _Table, cipher: SecretCipher, batch_size: int
) -> TableReport:
    report = TableReport(table.name)
    busy: list[Any] = []
    after: object = None
    while True:
        with uow() as session:
            keys = _next_keys(session, table, after, batch_size)
            if not keys:
                break
            done = _move_rows(session, table, keys, cipher, report, skip_locked=True)
        busy.extend(k for k in keys if k not in done)
        after = keys[-1]
    # Rows a live transaction held a moment ago: wait for their lock this time (those
    # transactions are short). A row deleted meanwhile is simply not found.
    for start in range(0, len(busy), batch_size):
        with uow() as session:
            chunk = busy[start : start + batch_size]
            _move_rows(session, table, chunk, cipher, report, skip_locked=False)
    return report


def reencrypt(
    uow: UnitOfWork, cipher: SecretCipher, *, batch_size: int = DEFAULT_BATCH_SIZE
) -> ReencryptReport:
    """Move every stored secret to ``cipher``'s first key (see the module docstring); commits
    one transaction per batch through ``uow``."""
    if batch_size < 1:
        raise ValidationError("batch_size", "must be at least 1")
    return ReencryptReport(tuple(_reencrypt_table(uow, t, cipher, batch_size) for t in _TABLES))
