"""tasks.base.is_retryable: which failures a task retries and which it dead-letters."""

from __future__ import annotations

import psycopg2
import pytest
import redis
import sqlalchemy.exc

from domain.errors import ProviderRejected, ProviderUnavailable, ValidationError
from tasks.base import is_retryable


def _db_error(kind: type[sqlalchemy.exc.DBAPIError], *, lost: bool) -> BaseException:
    orig = psycopg2.DatabaseError("server closed the connection unexpectedly")
    return kind("SELECT 1", {}, orig, connection_invalidated=lost)


@pytest.mark.parametrize(
    ("exc", "retried"),
    [
        # The server went away mid-statement: psycopg2 raises a plain DatabaseError, which
        # SQLAlchemy marks as a disconnect. Found in the PostgreSQL-crash scenario.
        (_db_error(sqlalchemy.exc.DatabaseError, lost=True), True),
        (_db_error(sqlalchemy.exc.OperationalError, lost=True), True),
        (_db_error(sqlalchemy.exc.OperationalError, lost=False), True),  # deadlock, serialization
        (_db_error(sqlalchemy.exc.DatabaseError, lost=False), False),
        (_db_error(sqlalchemy.exc.IntegrityError, lost=False), False),  # a bug, not the weather
        (redis.exceptions.ConnectionError("gone"), True),
        (ProviderUnavailable("alipay", "timeout"), True),
        (ProviderRejected("alipay", "bad amount"), False),
        (ValidationError("sku", "unknown"), False),
        (ValueError("bad"), False),
    ],
)
def test_is_retryable(exc, retried):
    assert is_retryable(exc) is retried
