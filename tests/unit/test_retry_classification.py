"""tasks.base.is_retryable and is_unreachable: which failures a task retries, which it
dead-letters once its retries are spent, and which it retries for as long as they last."""

from __future__ import annotations

import kombu.exceptions
import psycopg2
import pytest
import redis
import sqlalchemy.exc
from psycopg2 import errors as pg_errors

from domain.errors import ProviderRejected, ProviderUnavailable, ValidationError
from tasks.base import is_retryable, is_unreachable


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


def _wrapped(kind: type[sqlalchemy.exc.DBAPIError], orig: Exception) -> BaseException:
    return kind("SELECT 1", {}, orig)


SHUTTING_DOWN = psycopg2.OperationalError(
    'connection to server at "10.77.1.10", port 5432 failed: FATAL:  the database system is '
    "shutting down"
)


@pytest.mark.parametrize(
    ("exc", "unreachable"),
    [
        # libpq's own errors, no SQLSTATE: the server cannot be reached at all.
        (_wrapped(sqlalchemy.exc.OperationalError, SHUTTING_DOWN), True),
        (_wrapped(sqlalchemy.exc.OperationalError, psycopg2.OperationalError("refused")), True),
        (_wrapped(sqlalchemy.exc.InterfaceError, psycopg2.InterfaceError("already closed")), True),
        (_db_error(sqlalchemy.exc.DatabaseError, lost=True), True),  # lost mid-statement
        (redis.exceptions.ConnectionError("Error 111 connecting"), True),
        (redis.exceptions.TimeoutError("Timeout reading from socket"), True),
        (kombu.exceptions.OperationalError("Error 111 connecting to broker"), True),
        # The server answered: its errors carry an SQLSTATE, and retries end in a dead letter.
        (_wrapped(sqlalchemy.exc.OperationalError, pg_errors.DeadlockDetected()), False),
        (_wrapped(sqlalchemy.exc.OperationalError, pg_errors.SerializationFailure()), False),
        (_wrapped(sqlalchemy.exc.OperationalError, pg_errors.QueryCanceled()), False),
        (sqlalchemy.exc.TimeoutError("QueuePool limit reached"), False),  # busy, not down
        (ProviderUnavailable("alipay", "timeout"), False),  # a provider's outage: a dead letter
        (ValueError("bad"), False),
    ],
)
def test_is_unreachable(exc, unreachable):
    assert is_unreachable(exc) is unreachable
