"""Starting and stopping the processes of a local run (API, workers, beat, Flower) by their pid.

Used by ``orderflow demo`` / ``orderflow up`` and the end-to-end tests, so every process a run
starts is stopped by the same code: SIGTERM (Celery's warm shutdown), then SIGKILL after a grace
period.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

from settings import PROJECT_ROOT, get_settings


def free_port() -> int:
    """A port free on 127.0.0.1 now, for a server started next. Picked in ``FREE_PORT_RANGE``
    (below Linux's ephemeral range, 32768+), so that neither a client connection nor a server
    bound to port 0 can take it between this check and the bind; two test sessions side by side
    (pytest-xdist) are given disjoint ranges (tests/conftest.py)."""
    low, high = _port_range()
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(low, high)
        if _is_free(port):
            return port
    raise RuntimeError(f"no free port in {low}-{high}")


def _port_range() -> tuple[int, int]:
    low, _, high = get_settings().free_port_range.partition("-")
    return int(low), int(high)


def free_port_block(size: int, low: int = 20000, high: int = 32000) -> int:
    """A base port ``b`` with ``b+1 … b+size`` all free on 127.0.0.1 right now.

    Searched below Linux's ephemeral range (32768+) so client connections of a busy test run,
    which take ports from that range, cannot claim one between this check and the bind.
    """
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(low, high - size)
        if all(_is_free(base + n) for n in range(1, size + 1)):
            return base
    raise RuntimeError(f"no block of {size} free ports in {low}-{high}")


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def listen_error(port: int, host: str = "127.0.0.1") -> OSError | None:
    """Why a server could not listen on ``host:port`` now (``errno.EADDRINUSE``: another one
    listens there, on that address or on all of them), None when it could. Binds as uvicorn
    and tornado do, with SO_REUSEADDR: a port merely in TIME_WAIT after an earlier run is
    free for them too."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            s.listen(1)
        except OSError as exc:
            return exc
        return None


class ProcessDied(RuntimeError):
    """A process of a run exited while it should have been running; ``proc`` tells which."""

    def __init__(self, proc: Proc, when: str) -> None:
        self.proc = proc
        code = proc.popen.poll()
        where = f"; its log: {proc.log_path}" if proc.log_path else ""
        super().__init__(f"{proc.name} exited {when} (exit code {code}){where}")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace_s: float = 10.0) -> None:
        self.finish(self.terminate(), time.monotonic() + grace_s)

    def terminate(self) -> list[psutil.Process]:
        """Send SIGTERM (a warm shutdown: Celery finishes its running tasks); returns the
        process's children as they were, for :meth:`finish`. Nothing when it already exited."""
        if not self.alive():
            return []
        try:  # its children too, should they outlive a killed parent (uvicorn --workers N)
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            children = []
        self.popen.send_signal(signal.SIGTERM)
        return children

    def finish(self, children: list[psutil.Process], deadline: float) -> None:
        """Wait for the process until ``deadline`` (monotonic); then SIGKILL it and the
        children :meth:`terminate` saw."""
        try:
            self.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=5)
            for child in children:  # psutil refuses a pid reused by another process
                with contextlib.suppress(psutil.Error):
                    child.kill()

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class ProcessGroup:
    """Processes started for one run, stopped together (in reverse order)."""

    log_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)

    def start(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> Proc:
        """Start ``argv`` with the group's environment plus ``env`` (for secrets: unlike argv,
        a process's environment is not shown to other users by ``ps``)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        full_env = {**os.environ, **self.env, **(env or {}), "PYTHONUNBUFFERED": "1"}
        log = log_path.open("ab")
        popen = subprocess.Popen(  # noqa: S603 - argv is built by orderflow itself
            list(argv), cwd=PROJECT_ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def worker(
        self,
        name: str,
        queues: str,
        *,
        concurrency: int = 2,
        pool: str = "prefork",
        app: str = "workers.app",
        env: Mapping[str, str] | None = None,
    ) -> Proc:
        return self.start(
            name,
            [
                sys.executable, "-m", "celery", "-A", app, "worker",
                "-Q", queues, "-c", str(concurrency), "-P", pool, "-n", f"{name}@%h",
                "--without-gossip", "--without-mingle", "-l", "INFO",
            ],
            env=env,
        )  # fmt: skip

    def beat(self, name: str = "beat") -> Proc:
        schedule = self.log_dir / f"{name}-schedule"
        return self.start(
            name,
            [
                sys.executable, "-m", "celery", "-A", "workers.app", "beat",
                "-s", str(schedule), "-l", "INFO",
            ],
        )  # fmt: skip

    def api(self, port: int, name: str = "api", *, workers: int = 1, wait: bool = True) -> Proc:
        """uvicorn on 127.0.0.1:``port`` with ``workers`` processes (one supervisor above them
        when more than one: stopping the Proc stops them all); returns once ``/healthz``
        answers, or at once with ``wait=False``."""
        proc = self.start(
            name,
            [
                sys.executable, "-m", "uvicorn", "api.app:app", "--host", "127.0.0.1",
                "--port", str(port), "--log-level", "warning", "--workers", str(workers),
            ],
        )  # fmt: skip
        if wait:
            wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        return proc

    def flower(
        self, port: int, basic_auth: str, name: str = "flower", *, wait: bool = True
    ) -> Proc:
        """Flower on 127.0.0.1:``port`` through :mod:`workers.flower` (every page, API, /metrics
        and /healthcheck behind basic auth); ``basic_auth`` is ``user:password`` and travels in
        the environment. Returns once the port answers, or at once with ``wait=False``."""
        from workers.flower import AUTH_ENV, flower_argv

        proc = self.start(name, flower_argv(port), env={AUTH_ENV: basic_auth})
        if wait:
            wait_http(f"http://127.0.0.1:{port}/healthcheck", proc, timeout_s=90.0)
        return proc

    def stop_all(self, grace_s: float = 10.0) -> None:
        """SIGTERM every process (newest first), then wait for them together, each killed if
        it outlives ``grace_s``: stopping five workers takes the slowest one's warm shutdown
        (about 2 s), not the sum of all (about 5 s)."""
        stopping = [(proc, proc.terminate()) for proc in reversed(self.procs)]
        deadline = time.monotonic() + grace_s
        for proc, children in stopping:
            proc.finish(children, deadline)
        self.procs.clear()


def wait_http(url: str, proc: Proc | None = None, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited early:\n{proc.log_tail()}")
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout_s}s")


def wait_all_ready(
    procs: Sequence[Proc],
    checks: Mapping[str, Callable[[], bool]],
    *,
    stop: threading.Event,
    timeout_s: float,
    poll_s: float = 0.2,
) -> bool:
    """Poll every check of ``checks`` (what -> True once ready) until all have passed.

    Returns True then, False as soon as ``stop`` is set (Ctrl-C during start-up). Raises
    :class:`ProcessDied` for the first of ``procs`` that exits meanwhile (a process that dies
    before a check passes would otherwise only show as a timeout), :class:`TimeoutError`
    naming the checks still failing after ``timeout_s``. A check may block for its own short
    timeout; an exception raised by a check counts as "not yet".
    """
    pending = dict(checks)
    deadline = time.monotonic() + timeout_s
    while True:  # liveness is checked once more after the last check passed
        dead = next((p for p in procs if not p.alive()), None)
        if dead is not None:
            raise ProcessDied(dead, "during start-up")
        if stop.is_set():
            return False
        if not pending:
            return True
        if time.monotonic() > deadline:
            raise TimeoutError(f"not ready within {timeout_s:.0f} s: {', '.join(pending)}")
        for what, check in list(pending.items()):
            with contextlib.suppress(Exception):
                if check():
                    del pending[what]
        if pending:
            stop.wait(poll_s)


def wait_worker_ready(proc: Proc, timeout_s: float = 60.0) -> None:
    """Wait until the worker logged that it is ready to consume.

    The whole log is searched, not its tail: a worker may log a lot (e.g. failing stale
    messages) right after it became ready.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited early:\n{proc.log_tail()}")
        if proc.log_path is not None and b" ready." in proc.log_path.read_bytes():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{proc.name} not ready within {timeout_s}s:\n{proc.log_tail()}")
