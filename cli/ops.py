"""``orderflow doctor`` (one line per check, non-zero exit when any fails); ``orderflow up``
lives in :mod:`cli.up`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import requests
from amqp.exceptions import PreconditionFailed

from cli.common import console
from cli.up import WORKERS, run_up
from settings import get_settings
from settings_up_env import read_up_env, up_env_path

__all__ = ["WORKERS", "run_doctor", "run_up"]


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
    from services.sweeper import heartbeat_age
    from workers.connections import redis_client

    s = get_settings()
    age = heartbeat_age(redis_client())  # by Redis's clock: this host's may differ
    if age is None:
        raise RuntimeError("no sweep has run yet: is beat running (and a maintenance worker)?")
    if age > max(3 * s.sweep_interval_s, 30):
        raise RuntimeError(f"last sweep {age:.0f} s ago: beat or the maintenance worker is down")
    return f"last sweep {age:.1f} s ago"


def _providers() -> str:
    s = get_settings()
    configured = _configured_providers(s.kuaidi100_query_url)
    up = read_up_env(up_env_path(s.state_dir))
    source = f" (settings of `orderflow up` pid {up.pid}, {up.path})" if up else ""
    if not configured:
        return "none configured" + source
    down = []
    for name, url in configured.items():
        try:
            requests.get(url, timeout=3)  # any HTTP answer means reachable
        except requests.RequestException as exc:
            down.append(f"{name} ({type(exc).__name__})")
    if down:
        raise RuntimeError("unreachable: " + ", ".join(down))
    return "reachable: " + ", ".join(configured) + source


def _webhooks() -> str:
    s = get_settings()
    notifying = _configured_providers(s.kuaidi100_subscribe_url)
    notifying.pop("warehouse", None)  # the warehouse answers; it never calls us back
    return webhooks_reachable(s.public_base_url, notifying)


def _configured_providers(kuaidi100_url: str) -> dict[str, str]:
    """The URL of each provider whose keys are set (Kuaidi100: the query or subscribe one)."""
    s = get_settings()
    targets = {
        "alipay": s.alipay_gateway_url if s.alipay_app_id else None,
        "wechatpay": s.wechatpay_base_url if s.wechatpay_mchid else None,
        "stripe": s.stripe_api_base if s.stripe_secret_key else None,
        "kuaidi100": kuaidi100_url if s.kuaidi100_customer else None,
        "warehouse": s.warehouse_booking_url if s.warehouse_api_key else None,
    }
    return {k: v for k, v in targets.items() if v}


def webhooks_reachable(public_base_url: str, providers: dict[str, str]) -> str:
    """Whether the providers can reach our webhooks: a provider off this machine cannot call
    a loopback PUBLIC_BASE_URL (its default), which the workers put in every payment and
    subscription. Raises RuntimeError naming the providers; a local one (a simulator) is fine."""
    if not _loopback(public_base_url):
        return f"providers notify {public_base_url}"
    remote = sorted(name for name, url in providers.items() if not _loopback(url))
    if remote:
        raise RuntimeError(
            f"PUBLIC_BASE_URL is {public_base_url}: {', '.join(remote)} cannot reach its "
            "webhooks; set it to the API's public address (docs/deploy.md)"
        )
    return f"providers notify {public_base_url} (all on this machine)"


def _loopback(url: str) -> bool:
    from ipaddress import ip_address
    from urllib.parse import urlsplit

    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


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
        _check("webhooks", _webhooks),
    ]
    for c in checks:
        mark = "[green]ok  [/]" if c.ok else "[red]FAIL[/]"
        console.print(f"{mark} {c.name:<11} {c.detail}", highlight=False)
    return all(c.ok for c in checks)
