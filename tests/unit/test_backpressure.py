"""Back-pressure at intake (``services.backpressure``): when to refuse, and how often the
backlog is read. No database: the reading is replaced, the clock is a counter."""

from __future__ import annotations

from contextlib import nullcontext

import pytest

from domain.errors import Overloaded
from services import backpressure
from services.backpressure import Backlog, Gate, Limits, refusal
from tests.fakes import ManualClock


@pytest.mark.parametrize(
    ("backlog", "limits", "refused"),
    [
        (Backlog(0, 0.0), Limits(max_wait_s=60), False),
        (Backlog(500, 59.9), Limits(max_wait_s=60), False),
        (Backlog(500, 60.0), Limits(max_wait_s=60), True),  # the oldest waited the bound
        (Backlog(99, 1.0), Limits(max_wait_s=60, max_backlog=100), False),
        (Backlog(100, 1.0), Limits(max_wait_s=60, max_backlog=100), True),
        (Backlog(10**6, 10**6), Limits(max_wait_s=0, max_backlog=0), False),  # both off
    ],
)
def test_refuses_only_past_a_bound(backlog, limits, refused):
    assert (refusal(backlog, limits) is not None) is refused


def test_a_refusal_says_why_and_when_to_come_back():
    error = refusal(Backlog(3, 75.2), Limits(max_wait_s=60, retry_after_s=2.5))
    assert isinstance(error, Overloaded) and error.retry_after_s == 3
    assert "75 s" in str(error)


class Readings:
    """Stands in for the database: each reading returns the next backlog and is counted."""

    def __init__(self, *backlogs: Backlog) -> None:
        self.backlogs, self.reads = list(backlogs), 0

    def __call__(self, _session, *, now):
        self.reads += 1
        return self.backlogs.pop(0)


def _gate(monkeypatch, readings: Readings, seconds: list[float]) -> Gate:
    monkeypatch.setattr(backpressure, "measure", readings)
    return Gate(Limits(max_wait_s=60), refresh_s=1.0, uow=lambda: nullcontext(None),
                clock=lambda: seconds[0], now=ManualClock())  # fmt: skip


def test_the_backlog_is_read_at_most_once_per_refresh(monkeypatch):
    seconds = [100.0]
    readings = Readings(Backlog(5, 61.0), Backlog(0, 0.0))
    gate = _gate(monkeypatch, readings, seconds)
    for _ in range(3):
        with pytest.raises(Overloaded):
            gate.check()
    assert readings.reads == 1
    seconds[0] += 1.0  # the reading is stale: the next request reads again, and the backlog
    gate.check()  # has been worked off
    gate.check()
    assert readings.reads == 2


def test_a_failed_reading_lets_orders_in(monkeypatch):
    def broken(_session, *, now):
        raise ConnectionError("database unreachable")

    monkeypatch.setattr(backpressure, "measure", broken)
    gate = Gate(Limits(max_wait_s=60), uow=lambda: nullcontext(None), now=ManualClock())
    gate.check()  # intake's own error answers, not a 429
