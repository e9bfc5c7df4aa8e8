"""One transaction per unit of work. Services receive the session; tasks and the API open it.

Services never commit themselves: the caller's ``unit_of_work()`` block commits on success and
rolls back on any exception, so a failure leaves nothing half-written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from sqlalchemy.orm import Session

from models.db import session_factory

#: What a use case that commits between steps receives: ``with uow() as session: ...``.
UnitOfWork = Callable[[], AbstractContextManager[Session]]


@contextmanager
def unit_of_work() -> Iterator[Session]:
    """A session inside a transaction: committed when the block ends, rolled back on error."""
    with session_factory()() as session, session.begin():
        yield session
