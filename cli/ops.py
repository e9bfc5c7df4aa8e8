"""``orderflow up`` (everything locally, stopped cleanly on Ctrl-C) and ``orderflow doctor``
(one line per check, non-zero exit when any fails)."""

from __future__ import annotations

import os
import secrets
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests
from amqp.exceptions import PreconditionFailed

from cli.common import console
from settings import get_settings
from simulators.stack import ProviderStack

# One worker per queue: DB-bound orders work on prefork, network-bound stages on threads.
WORKERS = (
    ("worker-orders", "orders", 2, "prefork"),
    ("worker-payments", "payments", 8, "threads"),
    ("worker-shipping", "shipping,tracking", 8, "threads"),
    ("worker-maintenance", "maintenance", 1, "prefork"),
    ("worker-callbacks", "callbacks", 8, "threads"),
)


def run_up(*, api_port: int, flower_port: int, simulators: bool) -> None:
    """Start the API, a worker per queue, beat, Flower (basic auth) and, optionally, the
    provider simulators; block until Ctrl-C / SIGTERM; stop everything by pid.

    Raises :class:`RuntimeError` (the CLI exits 1 with it) when a process it started dies on
    its own, after stopping all the others.
    """
    from workers.embedded import embedded_services

    stop = threading.Event()
    # Explicit handlers: a process started with SIGINT ignored (nohup, a background job of a
    # script) would otherwise never see Ctrl-C, and Python installs no KeyboardInterrupt then.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with embedded_services():
        stack = _start_simulators(api_port) if simulators else None
        try:
            _serve(api_port, flower_port, stop)
        finally:
            if stack is not None:
                stack.stop()


def _start_simulators(api_port: int) -> ProviderStack:
    key_dir = Path(tempfile.mkdtemp(prefix="orderflow-up-keys-"))
    stack = ProviderStack.start(f"http://127.0.0.1:{api_port}", key_dir)
    os.environ.update(stack.env)
    get_settings.cache_clear()
    console.print("provider simulators started (keys generated for this run)")
    return stack


def _serve(api_port: int, flower_port: int, stop: threading.Event) -> None:
    from models.migrate import upgrade
    from observability.metrics import prepare_multiproc_dir
    from workers.procs import ProcessGroup, wait_worker_ready

    upgrade()
    prepare_multiproc_dir()  # workers' metrics reach the API's /metrics through this directory
    s = get_settings()
    auth = s.flower_basic_auth.get_secret_value() if s.flower_basic_auth else None
    if auth is None:
        auth = f"admin:{secrets.token_urlsafe(12)}"
        console.print(f"Flower credentials for this run: [bold]{auth}[/] (set FLOWER_BASIC_AUTH)")
    group = ProcessGroup(log_dir=s.state_dir / "up-logs")
    try:
        group.api(api_port)
        workers = [group.worker(n, q, concurrency=c, pool=p) for n, q, c, p in WORKERS]
        group.beat()
        group.flower(flower_port, auth)
        for w in workers:
            wait_worker_ready(w)
        console.print(f"API      http://127.0.0.1:{api_port}  (logs in {group.log_dir})")
        console.print(f"Console  http://127.0.0.1:{api_port}/console  "
                      "(ADMIN_API_KEY, or `orderflow operators create`)")  # fmt: skip
        console.print(f"Flower   http://127.0.0.1:{flower_port}  (basic auth)")
        console.print("running; Ctrl-C stops everything")
        while not stop.is_set():
            dead = [p.name for p in group.procs if not p.alive()]
            if dead:  # a half-running stack only looks healthy: stop it all and exit 1
                raise RuntimeError(
                    f"stopped unexpectedly: {', '.join(dead)} (logs in {group.log_dir}); "
                    "everything else was stopped"
                )
            stop.wait(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        group.stop_all()
        console.print("stopped API, workers, beat and Flower")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _check(name: str, fn: Callable[[], str]) -> Check:
    try:
        return Check(name, True, fn())
    except Exception as exc:  # noqa: BLE001 - every failure becomes one readable line
        return Check(name, False, f"{type(exc).__name__}: {exc}"[:300])


def _database() -> str:
    from models.db import server_version

    return f"PostgreSQL {server_version()}"


def _migrations() -> str:
    from models.migrate import current_revision, head_revision

    current, head = current_revision(), head_revision()
    if current != head:
        raise RuntimeError(f"at {current}, head is {head}: run `orderflow db upgrade`")
    return f"at head ({head})"


def _broker() -> str:
    from workers.app import app
    from workers.broker import declare_task_queues, is_amqp

    url = get_settings().effective_broker_url
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=3)
    where = url.split("@")[-1]  # never print credentials
    if not is_amqp(url):
        return f"Redis {where}"
    # RabbitMQ refuses to redeclare a queue with other arguments (e.g. a classic queue left by
    # an older setup): declaring them as the workers do shows that here, not in a worker log.
    try:
        declare_task_queues(url, app.amqp.queues.values())
    except PreconditionFailed as exc:
        raise RuntimeError(
            f"{exc.reply_text}; drain and delete that queue, or use a new vhost "
            "(README: Choosing a broker)"
        ) from exc
    return f"RabbitMQ {where} (quorum queues, publisher confirms)"


def _redis() -> str:
    from workers.connections import redis_client

    # Required with either broker: circuit breakers, delivery counters, heartbeats, limits.
    redis_client().ping()
    return (get_settings().redis_url or "").split("@")[-1]


def _workers() -> str:
    """Every task queue has at least one consuming worker (a worker that answers a ping but
    listens to other queues leaves a stage stalled: that is a failure too)."""
    from workers.app import app
    from workers.broker import QUEUE_NAMES

    replies = app.control.inspect(timeout=2.0).active_queues() or {}
    if not replies:
        raise RuntimeError("no worker answered within 2 s")
    consumers = {
        queue: [w for w, queues in replies.items() if any(q["name"] == queue for q in queues)]
        for queue in QUEUE_NAMES
    }
    missing = [queue for queue, workers in consumers.items() if not workers]
    if missing:
        raise RuntimeError(
            f"no worker consumes queue {', '.join(missing)} "
            f"({len(replies)} alive: {', '.join(sorted(replies))})"
        )
    return f"{len(replies)} alive; consumers per queue: " + ", ".join(
        f"{queue} {len(workers)}" for queue, workers in consumers.items()
    )


def _beat() -> str:
    from services.sweeper import HEARTBEAT_KEY
    from workers.connections import redis_client

    s = get_settings()
    last = redis_client().get(HEARTBEAT_KEY)
    if last is None:
        raise RuntimeError("no sweep has run yet: is beat running (and a maintenance worker)?")
    age = time.time() - float(last)
    if age > max(3 * s.sweep_interval_s, 30):
        raise RuntimeError(f"last sweep {age:.0f} s ago: beat or the maintenance worker is down")
    return f"last sweep {age:.1f} s ago"


def _providers() -> str:
    s = get_settings()
    targets = {
        "alipay": s.alipay_gateway_url if s.alipay_app_id else None,
        "wechatpay": s.wechatpay_base_url if s.wechatpay_mchid else None,
        "stripe": s.stripe_api_base if s.stripe_secret_key else None,
        "kuaidi100": s.kuaidi100_query_url if s.kuaidi100_customer else None,
        "warehouse": s.warehouse_booking_url if s.warehouse_api_key else None,
    }
    configured = {k: v for k, v in targets.items() if v}
    if not configured:
        return "none configured"
    down = []
    for name, url in configured.items():
        try:
            requests.get(url, timeout=3)  # any HTTP answer means reachable
        except requests.RequestException as exc:
            down.append(f"{name} ({type(exc).__name__})")
    if down:
        raise RuntimeError("unreachable: " + ", ".join(down))
    return "reachable: " + ", ".join(configured)


def run_doctor() -> bool:
    """Run every check and print one line each; True when all passed."""
    checks = [
        _check("database", _database),
        _check("migrations", _migrations),
        _check("broker", _broker),
        _check("redis", _redis),
        _check("workers", _workers),
        _check("beat", _beat),
        _check("providers", _providers),
    ]
    for c in checks:
        mark = "[green]ok  [/]" if c.ok else "[red]FAIL[/]"
        console.print(f"{mark} {c.name:<11} {c.detail}", highlight=False)
    return all(c.ok for c in checks)
