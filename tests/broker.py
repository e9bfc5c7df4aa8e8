"""The Celery broker of a test run: Redis (default) or RabbitMQ (``BROKER_URL=amqp://…``).

A session on RabbitMQ gets a virtual host of its own (``rabbitmqctl add_vhost``), deleted at the
end, so concurrent runs never see each other's messages; each test starts with empty queues
(:func:`purge_task_queues`), as :meth:`redis.Redis.flushdb` gives it on Redis.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from settings import get_settings
from workers.broker import is_amqp, is_redis, purge_task_queues

_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", ""}
_SESSION_VHOST = re.compile(r"orderflow_test_(\d+)_[0-9a-f]{6}")


def broker_url() -> str:
    return get_settings().effective_broker_url


def broker_is_redis() -> bool:
    """True unless ``BROKER_URL`` names another broker (read at collection time too)."""
    url = get_settings().broker_url
    return url is None or is_redis(url)


def broker_is_amqp() -> bool:
    url = get_settings().broker_url
    return url is not None and is_amqp(url)


def rabbitmq_reachable(url: str, port: int | None = None, timeout_s: float = 2.0) -> bool:
    """A TCP connection to the RabbitMQ of ``url`` (or to ``port`` on its host) succeeds."""
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", port or parts.port or 5672), timeout=timeout_s
        ):
            return True
    except OSError:
        return False


def rabbitmq_management_reachable() -> bool:
    """The management plugin's HTTP port (15672) answers on the configured RabbitMQ's host."""
    url = get_settings().broker_url
    return url is not None and is_amqp(url) and rabbitmq_reachable(url, port=15672)


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str] | None:
    """Run ``rabbitmqctl`` against the local node; None when it is not installed."""
    exe = shutil.which("rabbitmqctl")
    if exe is None:
        return None
    return subprocess.run(
        [exe, "-q", *args], capture_output=True, text=True, timeout=120, check=False
    )


def with_vhost(url: str, vhost: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + quote(vhost, safe="")))


@contextmanager
def amqp_session_vhost() -> Iterator[str | None]:
    """With an ``amqp://`` ``BROKER_URL``: export a ``BROKER_URL`` on a new vhost for this
    session and delete the vhost afterwards; yields the vhost (None with another broker).

    Needs ``rabbitmqctl`` on a local RabbitMQ (this machine's runs as root). Without it the
    configured vhost is shared and only purged, with a warning.
    """
    url = get_settings().broker_url
    if url is None or not is_amqp(url):
        yield None
        return
    parts = urlsplit(url)
    user = unquote(parts.username or "guest")
    vhost = f"orderflow_test_{os.getpid()}_{secrets.token_hex(3)}"
    created = False
    if (parts.hostname or "") in _LOCAL_HOSTS:
        _delete_vhosts_of_dead_sessions()
        added = rabbitmqctl("add_vhost", vhost)
        if added is not None and added.returncode == 0:
            created = True
            granted = rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
            if granted is None or granted.returncode != 0:
                rabbitmqctl("delete_vhost", vhost)
                raise RuntimeError(f"rabbitmqctl set_permissions failed: {granted}")
    saved = os.environ.get("BROKER_URL")
    if created:
        os.environ["BROKER_URL"] = with_vhost(url, vhost)
    else:
        warnings.warn(
            "no local rabbitmqctl: this test session shares the broker's vhost and purges its "
            "task queues; do not run two sessions against it at once",
            stacklevel=2,
        )
        purge_task_queues(url)
    get_settings.cache_clear()
    try:
        yield vhost if created else None
    finally:
        if saved is None:
            os.environ.pop("BROKER_URL", None)
        else:
            os.environ["BROKER_URL"] = saved
        get_settings.cache_clear()
        if created:
            rabbitmqctl("delete_vhost", vhost)


def _delete_vhosts_of_dead_sessions() -> None:
    """Vhosts left by a session that was killed before its cleanup (its pid is gone)."""
    listed = rabbitmqctl("list_vhosts", "name", "--no-table-headers")
    if listed is None or listed.returncode != 0:
        return
    for name in listed.stdout.split():
        match = _SESSION_VHOST.fullmatch(name)
        if match and not _pid_alive(int(match.group(1))):
            rabbitmqctl("delete_vhost", name)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def purge_broker_for_test() -> None:
    """Empty the task queues when the broker is not the Redis db the test already flushed."""
    s = get_settings()
    if s.broker_url and s.broker_url != s.redis_url:
        purge_task_queues(s.broker_url)
