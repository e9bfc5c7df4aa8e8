"""Fixtures of the reliability suite: the e2e pipeline, the size switch and the figures.

Every scenario runs at two sizes: the short one inside ``make test``, the full one (the sizes
the issue names: 500 orders under kills, a 1,000-order burst, ...) under
``make test-reliability``, which sets ``RELIABILITY_FULL=1``. Each scenario records what was
injected, what the invariant checker found and how long recovery took through the ``figures``
fixture; the terminal summary prints them and writes them as JSON to
``RELIABILITY_RESULTS`` (default ``.orderflow/reliability-results.json``) for
docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from settings import PROJECT_ROOT
from tests.e2e.conftest import (  # noqa: F401 - shared fixtures
    pipeline_env,
    start_pipeline,
    wechatpay_key_mode,
)

FULL = os.environ.get("RELIABILITY_FULL") == "1"
_RESULTS: list[dict[str, Any]] = []


def size(short: int, full: int) -> int:
    """The scenario's size: ``full`` under ``make test-reliability``, else ``short``."""
    return full if FULL else short


class Figures:
    """What one scenario records: orders, what was injected, the invariant counts, recovery."""

    def __init__(self, scenario: str) -> None:
        self.row: dict[str, Any] = {"scenario": scenario, "size": "full" if FULL else "short"}
        self._t0: float | None = None

    def injected(self, what: str, **details: Any) -> None:
        """Note the fault and start the recovery clock (call it when the fault lands)."""
        self.row["injected"] = what
        self.row.update(details)
        self._t0 = time.monotonic()

    def recovered(self, verdict: dict[str, Any], **details: Any) -> None:
        """Stop the recovery clock: every order settled and the invariants hold."""
        if self._t0 is not None:
            self.row["recovery_s"] = round(time.monotonic() - self._t0, 1)
        self.row.update({k: v for k, v in verdict.items() if k != "statuses"})
        self.row["statuses"] = verdict["statuses"]
        self.row.update(details)
        _RESULTS.append(self.row)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Callable[[], Figures]]:
    yield lambda: Figures(request.node.name.removeprefix("test_"))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _RESULTS:
        return
    path = Path(os.environ.get("RELIABILITY_RESULTS", PROJECT_ROOT / ".orderflow"
                                / "reliability-results.json"))  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_RESULTS, indent=2, default=str) + "\n")
    tr = terminalreporter
    tr.section("reliability figures")
    for r in _RESULTS:
        tr.write_line(
            f"{r['scenario']}: {r.get('accepted')} orders, injected {r.get('injected')}; "
            f"lost {r.get('lost')}, charged twice {r.get('charged_twice')}, "
            f"stock moved twice {r.get('stock_moved_twice')}; "
            f"recovery {r.get('recovery_s', '-')} s"
        )
    tr.write_line(f"(written to {path})")
