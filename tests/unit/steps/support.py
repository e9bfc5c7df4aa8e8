"""What the step tests share: the step's database work replaced by recorders.

A provider step (``services.payments.create`` and the rest) runs prepare -> call -> record,
each database part a function of its own module taking a session. These tests replace those
parts with :class:`Store` recorders, so what is tested is the step's own decisions — which
provider call it makes, through the gate or not, what each answer leads it to record, what it
returns for publishing — against the fakes of ``tests/fakes.py`` and a manual clock, with no
PostgreSQL. What the session functions themselves write is tested on real PostgreSQL in
``tests/integration/test_payment_services.py`` and beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest

from services.ports import Ports
from tests.fakes import FakeGate, ManualClock


@contextmanager
def no_session() -> Iterator[None]:
    """The unit of work: there is no database, and the replaced parts take no session."""
    yield None


@dataclass
class Store:
    """Replaces a step's database parts: ``calls`` holds ``(name, args, kwargs)`` in order;
    each replaced part returns what ``answers[name]`` holds (a value, or a callable of the
    part's arguments)."""

    monkeypatch: pytest.MonkeyPatch
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)
    answers: dict[str, Any] = field(default_factory=dict)

    def replace(self, module: ModuleType, *names: str) -> None:
        for name in names:
            self.monkeypatch.setattr(module, name, self._part(name))

    def _part(self, name: str) -> Callable[..., Any]:
        def part(_session: Any, *args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            answer = self.answers.get(name)
            return answer(*args, **kwargs) if callable(answer) else answer

        return part

    def names(self) -> list[str]:
        return [name for name, _, _ in self.calls]

    def args_of(self, name: str) -> tuple[Any, ...]:
        return next(args for n, args, _ in self.calls if n == name)


def ports(clock: ManualClock | None = None, gate: FakeGate | None = None) -> Ports:
    return Ports(gate=gate or FakeGate(), clock=clock or ManualClock(), uow=no_session)
