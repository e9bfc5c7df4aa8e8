"""Shared pieces of the benchmark: the figure record, percentiles, bounded waits, URLs."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import psutil
from sqlalchemy import make_url

from settings import PROJECT_ROOT, get_settings

if TYPE_CHECKING:
    from workers.procs import ProcessGroup


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


@dataclass
class CpuUse:
    """CPU seconds each part of the stack used over ``wall_s`` seconds of one measurement."""

    by_part: dict[str, float]
    wall_s: float

    def describe(self, per: int, unit: str = "order") -> str:
        """``"cores used 1.9 of 2; CPU ms per order: api 9.1, postgres 12.0, ..."``."""
        total = sum(self.by_part.values())
        parts = ", ".join(
            f"{part} {seconds * 1000 / max(per, 1):.1f}"
            for part, seconds in sorted(self.by_part.items(), key=lambda kv: -kv[1])
            if seconds * 1000 / max(per, 1) >= 0.05
        )
        cores = os.cpu_count() or 0
        return (
            f"cores used {total / self.wall_s if self.wall_s else 0:.2f} of {cores}; "
            f"CPU ms per {unit}: {parts}"
        )


class CpuMeter:
    """Samples the CPU time of every process of the stack on this machine: those of a
    :class:`~workers.procs.ProcessGroup` (children included: prefork and uvicorn workers) by
    their name, PostgreSQL and Redis server processes, and this process (the load generator and
    the in-process simulators). A process that exits between the samples is not counted, so
    stop the meter before stopping the processes."""

    def __init__(self, group: ProcessGroup, labels: Mapping[str, str] | None = None) -> None:
        self.group = group
        self.labels = dict(labels or {})
        self._before: dict[tuple[int, float], tuple[str, float]] = {}
        self._started = 0.0

    def start(self) -> None:
        self._before = self._sample()
        self._started = time.monotonic()

    def stop(self) -> CpuUse:
        after = self._sample()
        wall = time.monotonic() - self._started
        used: dict[str, float] = {}
        for key, (part, seconds) in after.items():
            earlier = self._before.get(key, (part, 0.0))[1]
            used[part] = used.get(part, 0.0) + max(0.0, seconds - earlier)
        return CpuUse(used, wall)

    def _ours(self) -> dict[int, str]:
        ours: dict[int, str] = {os.getpid(): "bench (load + simulators)"}
        for proc in self.group.procs:
            if not proc.alive():
                continue
            label = self.labels.get(proc.name, proc.name)
            ours[proc.pid] = label
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(proc.pid).children(recursive=True):
                    ours[child.pid] = label
        return ours

    def _sample(self) -> dict[tuple[int, float], tuple[str, float]]:
        ours = self._ours()
        sample: dict[tuple[int, float], tuple[str, float]] = {}
        for p in psutil.process_iter(["name", "create_time", "cpu_times"]):
            name = p.info["name"] or ""
            part = ours.get(p.pid) or (
                "postgres" if name.startswith("postgres")
                else "redis" if name.startswith("redis-server") else None
            )  # fmt: skip
            times = p.info["cpu_times"]
            if part is None or times is None:
                continue
            sample[(p.pid, p.info["create_time"])] = (part, times.user + times.system)
        return sample
