"""Shared pieces of the benchmark: the figure record, percentiles, bounded waits, URLs."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import make_url

from settings import PROJECT_ROOT, get_settings


@dataclass
class Figure:
    """One row of the result table; ``ratio`` is ``value / ceiling`` when a ceiling exists."""

    figure: str
    unit: str
    value: float
    ceiling: float | None = None
    configuration: str = ""
    git_revision: str = ""

    @property
    def ratio(self) -> float | None:
        if self.ceiling is None or self.ceiling == 0:
            return None
        return self.value / self.ceiling

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for an empty sample."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def wait_for(predicate: Callable[[], bool], timeout_s: float, every_s: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout_s`` passed; returns whether it became true."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return predicate()


def libpq_dsn() -> str:
    """The configured DATABASE_URL as a plain libpq URL for psycopg2.connect."""
    url = get_settings().database_url
    assert url is not None
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def git_revision() -> str:
    """``git describe --always --dirty`` of the project, or ``unknown``."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()
