"""What every provider step receives besides its provider port: the gate it calls through, the
clock, and the unit of work it commits in. Tasks pass the real ones (:func:`ports`-style
helpers in ``tasks/``); unit tests pass :class:`tests.fakes.FakeGate` and a ``ManualClock``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from services.followup import Followup
from services.provider_calls import ProviderGate
from services.unit_of_work import UnitOfWork, unit_of_work

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The real clock (aware, UTC)."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Ports:
    """``gate`` for every provider call, ``clock`` for every "now", ``uow`` for every commit."""

    gate: ProviderGate
    clock: Clock
    uow: UnitOfWork = unit_of_work


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one step did (``result``: a short word the task returns and Flower shows) and the
    tasks to publish now that its transactions have committed."""

    result: str
    followups: tuple[Followup, ...] = ()

    @classmethod
    def of(cls, result: str, followups: list[Followup] | None = None) -> Outcome:
        return cls(result, tuple(followups or ()))
