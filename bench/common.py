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
from rich.console import Console
from rich.table import Table
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


@dataclass(frozen=True)
class ProcCpu:
    """One process in one CpuMeter sample: its part of the stack, its parent, its own CPU
    seconds (user + system) and the CPU seconds of the children it has reaped (``cutime +
    cstime``: what its exited children used, the whole lifetime of each)."""

    part: str
    ppid: int
    own: float
    reaped: float = 0.0


#: A sampled process: (pid, create time), so a reused pid is another process.
ProcKey = tuple[int, float]


def cpu_used(
    before: Mapping[ProcKey, ProcCpu], after: Mapping[ProcKey, ProcCpu], *, reapers: set[int]
) -> dict[str, float]:
    """CPU seconds per part between two samples, processes that exited meanwhile included.

    1. A process in both samples counts ``after.own - before.own``; one born in between counts
       all of ``after.own``.
    2. A process in ``reapers`` (a pid whose reaped children are counted: the postmaster, a
       prefork parent, uvicorn's supervisor) also counts the growth of ``reaped``, in its own
       part: the children that exited and were reaped in between, born before or after the
       first sample.
    3. A process of the first sample that is gone from the second and whose parent is a reaper
       present in both samples was counted by rule 2 with its whole lifetime: its CPU before
       the first sample (``before.own``) is taken off again.
    A gone process whose parent is no reaper (e.g. the bench process's own children) counts
    nothing after the first sample: stop the meter before stopping those.
    """
    used: dict[str, float] = {}

    def add(part: str, seconds: float) -> None:
        used[part] = used.get(part, 0.0) + seconds

    after_pids = {pid for pid, _ in after}
    before_pids = {pid for pid, _ in before}
    for key, now in after.items():
        earlier = before.get(key)
        add(now.part, max(0.0, now.own - (earlier.own if earlier else 0.0)))
        if key[0] in reapers:
            add(now.part, max(0.0, now.reaped - (earlier.reaped if earlier else 0.0)))
    for key, gone in before.items():
        parent_stayed = gone.ppid in after_pids and gone.ppid in before_pids
        if key not in after and gone.ppid in reapers and parent_stayed:
            parent = next(p for k, p in after.items() if k[0] == gone.ppid)
            add(parent.part, -gone.own)
    return {part: max(0.0, seconds) for part, seconds in used.items()}


class CpuMeter:
    """Samples the CPU time of every process of the stack on this machine: those of a
    :class:`~workers.procs.ProcessGroup` (children included: prefork and uvicorn workers) by
    their name, PostgreSQL and Redis server processes, and this process (the load generator and
    the in-process simulators).

    Processes that exit during the interval are counted through their parent (:func:`cpu_used`):
    PostgreSQL backends come and go as connection pools churn, prefork children are replaced,
    and once reaped their CPU shows only in the parent's ``children_user/children_system``.
    This process's own children (the group's processes) are not counted that way: stop the
    meter before stopping them."""

    def __init__(self, group: ProcessGroup, labels: Mapping[str, str] | None = None) -> None:
        self.group = group
        self.labels = dict(labels or {})
        self._before: dict[ProcKey, ProcCpu] = {}
        self._started = 0.0

    def start(self) -> None:
        self._before = self._sample()
        self._started = time.monotonic()

    def stop(self) -> CpuUse:
        after = self._sample()
        wall = time.monotonic() - self._started
        reapers = {pid for pid, _ in after if pid != os.getpid()}
        return CpuUse(cpu_used(self._before, after, reapers=reapers), wall)

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

    def _sample(self) -> dict[ProcKey, ProcCpu]:
        ours = self._ours()
        sample: dict[ProcKey, ProcCpu] = {}
        for p in psutil.process_iter(["name", "create_time", "cpu_times", "ppid"]):
            name = p.info["name"] or ""
            part = ours.get(p.pid) or (
                "postgres" if name.startswith("postgres")
                else "redis" if name.startswith("redis-server") else None
            )  # fmt: skip
            t = p.info["cpu_times"]
            if part is None or t is None:
                continue
            sample[(p.pid, p.info["create_time"])] = ProcCpu(
                part, p.info["ppid"] or 0, t.user + t.system, t.children_user + t.children_system
            )
        return sample


def print_table(figures: list[Figure], console: Console) -> None:
    """The run's figures as one table on ``console``."""
    table = Table("figure", "unit", "value", "ceiling", "ratio", title="orderflow bench")
    for f in figures:
        table.add_row(
            f.figure,
            f.unit,
            f"{f.value:,.1f}",
            "" if f.ceiling is None else f"{f.ceiling:,.1f}",
            "" if f.ratio is None else f"{f.ratio:.0%}",
        )
    console.print(table)
