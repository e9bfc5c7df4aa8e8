"""``orderflow up``: the API, a worker per queue, beat, Flower and the provider simulators on
this machine, until Ctrl-C or SIGTERM.

A run, in order. Whatever a step started is undone on every way out (Ctrl-C or SIGTERM at any
point, a process that dies, an exception), in reverse order:

1. Refuse before starting anything when another ``up`` runs on this ``STATE_DIR`` (its
   ``up.env`` names a live process), or when a port the run would listen on is taken: the
   API's (``--api-port``), Flower's (``--flower-port``), the API's metrics listener
   (``METRICS_PORT``, when set). The message names each port and what moves it. The
   simulators and the embedded Redis listen on ports the system picks, PostgreSQL on a unix
   socket: nothing there can be taken.
2. The embedded PostgreSQL and Redis when their URLs are unset; the simulators, with keys
   generated into ``STATE_DIR/up-keys`` (directory 0700, files 0600).
3. ``STATE_DIR/up.env`` (0600): every setting generated for the run (simulator URLs and key
   files, embedded servers' URLs, Flower credentials when generated). ``orderflow`` commands in
   another shell with the same ``STATE_DIR`` read it while this process lives
   (:mod:`settings_up_env`), so they reach what ``up`` started.
4. Migrations, an emptied metrics directory (no series of an earlier run), then every process
   at once. "running" is printed only once all are ready: the API answers ``/healthz``, every
   worker answers a ping, Flower answers its health check with the credentials, beat logged
   that it started. A process that exits before stops the start: the others are stopped, the
   end of its log is printed and ``up`` exits 1.
5. Running: a process that exits stops everything the same way (a half-running stack only
   looks healthy; a supervisor restarts the whole set).
6. On the way out: the processes by pid, the simulators, the embedded servers, then
   ``up.env`` and the key directory (also those of an earlier ``up`` that was killed).
"""

from __future__ import annotations

import contextlib
import errno
import secrets
import shutil
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from cli.common import console, err_console
from settings import Settings, get_settings
from settings_up_env import read_up_env, up_env_path, write_up_env
from simulators.stack import ProviderStack
from workers.procs import Proc, ProcessDied, ProcessGroup, listen_error, wait_all_ready

if TYPE_CHECKING:
    from workers.embedded import EmbeddedServices

# One worker per queue: DB-bound orders work on prefork, network-bound stages on threads.
WORKERS = (
    ("worker-orders", "orders", 2, "prefork"),
    ("worker-payments", "payments", 8, "threads"),
    ("worker-shipping", "shipping,tracking", 8, "threads"),
    ("worker-maintenance", "maintenance", 1, "prefork"),
    ("worker-callbacks", "callbacks", 8, "threads"),
)
KEY_DIR_NAME = "up-keys"
#: Flower alone has needed a minute on a loaded two-core machine.
START_TIMEOUT_S = 180.0
LOG_TAIL_LINES = 30


@dataclass(frozen=True)
class Listener:
    """A port the run listens on, who listens there, and the option or setting that moves it."""

    port: int
    what: str
    moved_by: str
    host: str = "127.0.0.1"


def listeners(api_port: int, flower_port: int, settings: Settings) -> list[Listener]:
    wanted = [Listener(api_port, "the API", "--api-port"),
              Listener(flower_port, "Flower", "--flower-port")]  # fmt: skip
    if settings.metrics_port is not None:
        wanted.append(Listener(settings.metrics_port, "the API's metrics", "METRICS_PORT",
                               settings.metrics_bind))  # fmt: skip
    return wanted


def check_ports(wanted: Sequence[Listener]) -> None:
    """Raise :class:`RuntimeError` naming every port of ``wanted`` that cannot be listened on
    (taken, or set twice) and what moves it."""
    problems: list[str] = []
    seen: dict[int, Listener] = {}
    for item in wanted:
        if item.port in seen:
            first = seen[item.port]
            problems.append(f"port {item.port} is set for both {first.what} ({first.moved_by}) "
                            f"and {item.what} ({item.moved_by})")  # fmt: skip
        elif (error := listen_error(item.port, item.host)) is not None:
            problems.append(_listen_problem(item, error))
        seen.setdefault(item.port, item)
    if problems:
        raise RuntimeError("; ".join(problems) + "; nothing was started")


def _listen_problem(item: Listener, error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return (f"port {item.port} ({item.what}) is already in use: stop what listens there "
                f"or choose another with {item.moved_by}")  # fmt: skip
    return f"cannot listen on {item.host}:{item.port} ({item.what}, {item.moved_by}): {error}"


def run_up(*, api_port: int, flower_port: int, simulators: bool) -> None:
    """Run everything until Ctrl-C / SIGTERM (see the module docstring for the steps).

    Returns on Ctrl-C / SIGTERM, also during start-up. Raises :class:`RuntimeError` (the CLI
    exits 1 with it) for a refused start, a process that died, or a start-up timeout; by
    then everything started was stopped and the files of the run removed.
    """
    from workers.embedded import embedded_services, exported_env

    stop = threading.Event()
    # Explicit handlers: a process started with SIGINT ignored (nohup, a background job of a
    # script) would otherwise never see Ctrl-C, and Python installs no KeyboardInterrupt then.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    settings = get_settings()
    state_dir = settings.state_dir
    _refuse_second_up(state_dir)
    check_ports(listeners(api_port, flower_port, settings))
    with contextlib.ExitStack() as undo:
        _remove_run_files(state_dir)  # of an `up` that was killed: it could not remove them
        undo.callback(_remove_run_files, state_dir)
        embedded = undo.enter_context(embedded_services())
        generated = _embedded_urls(embedded)
        if simulators and not stop.is_set():
            stack = _start_simulators(
                api_port, state_dir / KEY_DIR_NAME, settings.wechatpay_key_mode
            )
            undo.callback(stack.stop)
            generated |= stack.env
        auth = _flower_auth(settings, generated)
        undo.enter_context(exported_env(generated))
        write_up_env(up_env_path(state_dir), generated)
        if not stop.is_set():
            _serve(api_port, flower_port, auth, stop)
    console.print("removed the settings file and the key files of this run")


def _embedded_urls(embedded: EmbeddedServices | None) -> dict[str, str]:
    """The URLs of the embedded servers started (or reused) for the run, if any."""
    if embedded is None:
        return {}
    urls = {"DATABASE_URL": embedded.database_url, "REDIS_URL": embedded.redis_url}
    return {k: v for k, v in urls.items() if v}


def _refuse_second_up(state_dir: Path) -> None:
    other = read_up_env(up_env_path(state_dir))
    if other is not None:
        raise RuntimeError(
            f"another `orderflow up` (pid {other.pid}) runs with STATE_DIR {state_dir}: "
            "stop it, or give this one another STATE_DIR; nothing was started"
        )


def _remove_run_files(state_dir: Path) -> None:
    up_env_path(state_dir).unlink(missing_ok=True)
    shutil.rmtree(state_dir / KEY_DIR_NAME, ignore_errors=True)


def _start_simulators(api_port: int, key_dir: Path, wechatpay_key_mode: str) -> ProviderStack:
    """The simulators; WeChat Pay in the key mode orderflow is configured for."""
    key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    stack = ProviderStack.start(
        f"http://127.0.0.1:{api_port}", key_dir, wechatpay_key_mode=wechatpay_key_mode
    )
    console.print("provider simulators started (keys generated for this run)")
    return stack


def _flower_auth(settings: Settings, generated: dict[str, str]) -> str:
    """The configured Flower credentials, else new ones for this run (added to
    ``generated``, so `python -m workers.flower healthcheck` in another shell has them)."""
    if settings.flower_basic_auth:
        return settings.flower_basic_auth.get_secret_value()
    auth = f"admin:{secrets.token_urlsafe(12)}"
    generated["FLOWER_BASIC_AUTH"] = auth
    console.print(f"Flower credentials for this run: [bold]{auth}[/] (set FLOWER_BASIC_AUTH)")
    return auth


def _serve(api_port: int, flower_port: int, auth: str, stop: threading.Event) -> None:
    from models.migrate import upgrade
    from observability.metrics import prepare_multiproc_dir

    upgrade()
    prepare_multiproc_dir()  # workers' metrics reach the API's /metrics through this directory
    group = ProcessGroup(log_dir=get_settings().state_dir / "up-logs")
    try:
        group.api(api_port, wait=False)
        for name, queues, concurrency, pool in WORKERS:
            group.worker(name, queues, concurrency=concurrency, pool=pool)
        group.beat()
        group.flower(flower_port, auth, wait=False)
        checks = _readiness(group, api_port, flower_port, auth)
        if not _started(group, checks, stop):
            console.print("interrupted during start-up")
            return
        _print_running(api_port, flower_port, group.log_dir)
        _watch(group, stop)
    finally:
        group.stop_all()
        console.print("stopped API, workers, beat and Flower")


def _readiness(
    group: ProcessGroup, api_port: int, flower_port: int, auth: str
) -> dict[str, Callable[[], bool]]:
    """What "ready" means for each process of the run: what -> check."""
    from celery.utils.nodenames import host_format

    from workers.app import app

    user, _, password = auth.split(",")[0].partition(":")
    beat = next(p for p in group.procs if p.name == "beat")
    nodes = {host_format(f"{name}@%h") for name, *_ in WORKERS}
    answered: set[str] = set()

    def workers() -> bool:
        missing = sorted(nodes - answered)
        replies = app.control.ping(destination=missing, timeout=1.0, limit=len(missing))
        answered.update(node for reply in replies for node in reply)
        return answered >= nodes

    def answers(url: str, auth: tuple[str, str] | None = None) -> Callable[[], bool]:
        return lambda: requests.get(url, auth=auth, timeout=1).status_code == 200

    return {
        "the API (/healthz)": answers(f"http://127.0.0.1:{api_port}/healthz"),
        "every worker (ping)": workers,
        "Flower (/healthcheck)": answers(
            f"http://127.0.0.1:{flower_port}/healthcheck", auth=(user, password)
        ),
        "beat (started)": lambda: (
            beat.log_path is not None and b"beat: Starting" in beat.log_path.read_bytes()
        ),
    }


def _started(
    group: ProcessGroup, checks: dict[str, Callable[[], bool]], stop: threading.Event
) -> bool:
    """True once everything is ready, False on Ctrl-C; a process that died raises."""
    try:
        return wait_all_ready(group.procs, checks, stop=stop, timeout_s=START_TIMEOUT_S)
    except ProcessDied as exc:
        raise _stopped(exc.proc, "during start-up") from None


def _watch(group: ProcessGroup, stop: threading.Event) -> None:
    while not stop.is_set():
        dead = next((p for p in group.procs if not p.alive()), None)
        if dead is not None:  # a half-running stack only looks healthy: stop it all, exit 1
            raise _stopped(dead, "while running")
        stop.wait(1.0)


def _stopped(proc: Proc, when: str) -> RuntimeError:
    """The error `up` exits with when ``proc`` died, after printing the end of its log (the
    others are stopped on the way out)."""
    _print_tail(proc)
    return RuntimeError(
        f"stopped unexpectedly: {ProcessDied(proc, when)}; everything else was stopped"
    )


def _print_tail(proc: Proc) -> None:
    """The end of a dead process's log, verbatim (never read as rich markup)."""
    head = f"--- {proc.name} exited (code {proc.popen.poll()}); the end of {proc.log_path}:"
    for text in (head, proc.log_tail(LOG_TAIL_LINES)):
        err_console.print(text, markup=False, highlight=False, soft_wrap=True)


def _print_running(api_port: int, flower_port: int, log_dir: Path) -> None:
    console.print(f"API      http://127.0.0.1:{api_port}  (logs in {log_dir})")
    console.print(f"Console  http://127.0.0.1:{api_port}/console  "
                  "(ADMIN_API_KEY, or `orderflow operators create`)")  # fmt: skip
    console.print(f"Flower   http://127.0.0.1:{flower_port}  (basic auth)")
    console.print(f"Settings {up_env_path(get_settings().state_dir)}  (read by `orderflow` "
                  "commands in other shells with the same STATE_DIR)")  # fmt: skip
    console.print("running; Ctrl-C stops everything")
