"""Back-pressure at intake: refuse new orders while the work already accepted is too far behind.

An order accepted now is reserved only after every RECEIVED order before it; if the oldest of
those has waited ``max_wait_s`` (or there are ``max_backlog`` of them), a new order would reach
its reservation late, and in a flash sale its payment window could run out before it is even
reserved. Intake then answers 429 with ``Retry-After`` instead of storing it: the client keeps
the order and sends it again; nothing accepted is ever dropped (those orders are already in
PostgreSQL and go on through the pipeline).

The measure is read from PostgreSQL (the truth, whichever broker carries the work) at most once
per ``refresh_s`` per process, so the hot route pays one dictionary read, not a query.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from domain.errors import Overloaded
from domain.orders import OrderStatus
from models import Order
from services.unit_of_work import UnitOfWork, unit_of_work


@dataclass(frozen=True, slots=True)
class Limits:
    """``max_wait_s``: the oldest unreserved order may have waited this long (0: no bound);
    ``max_backlog``: at most this many unreserved orders (0: no bound)."""

    max_wait_s: float = 300.0
    max_backlog: int = 0
    retry_after_s: float = 5.0


@dataclass(frozen=True, slots=True)
class Backlog:
    """The RECEIVED orders: how many, and how long the oldest has waited."""

    orders: int
    oldest_wait_s: float


def measure(session: Session, *, now: datetime) -> Backlog:
    count, oldest = session.execute(
        select(func.count(), func.min(Order.created_at)).where(Order.status == OrderStatus.RECEIVED)
    ).one()
    wait = 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())
    return Backlog(int(count), wait)


def refusal(backlog: Backlog, limits: Limits) -> Overloaded | None:
    """The error to answer with, or None to accept. Pure."""
    if limits.max_wait_s and backlog.oldest_wait_s >= limits.max_wait_s:
        reason = f"the oldest accepted order has waited {backlog.oldest_wait_s:.0f} s"
    elif limits.max_backlog and backlog.orders >= limits.max_backlog:
        reason = f"{backlog.orders} accepted orders are waiting"
    else:
        return None
    retry = max(1, math.ceil(limits.retry_after_s))
    return Overloaded(f"intake is behind: {reason} to be reserved; retry later", retry)


class Gate:
    """Per process: ``check()`` raises :class:`Overloaded` while the backlog is over a limit.
    The backlog is measured at most once per ``refresh_s`` (by whichever request finds the
    reading stale); a failed reading lets orders in (intake's own errors then speak)."""

    def __init__(
        self,
        limits: Limits,
        *,
        refresh_s: float = 1.0,
        uow: UnitOfWork = unit_of_work,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime],
    ) -> None:
        self.limits, self.refresh_s, self.uow = limits, refresh_s, uow
        self.clock, self.now = clock, now
        self._lock = threading.Lock()
        self._read_at = -math.inf
        self._refusal: Overloaded | None = None

    def due(self) -> bool:
        """Whether :meth:`check` would read the backlog now (a query) rather than a cached
        answer; the async route runs only such a check off the event loop."""
        bounded = bool(self.limits.max_wait_s or self.limits.max_backlog)
        return bounded and self.clock() - self._read_at >= self.refresh_s

    def check(self) -> None:
        if not (self.limits.max_wait_s or self.limits.max_backlog):
            return
        if self.clock() - self._read_at >= self.refresh_s and self._lock.acquire(blocking=False):
            try:
                with self.uow() as session:
                    self._refusal = refusal(measure(session, now=self.now()), self.limits)
                self._read_at = self.clock()
            except Exception:  # noqa: BLE001 - never refuse because the measure failed
                self._refusal = None
            finally:
                self._lock.release()
        if self._refusal is not None:
            raise self._refusal
