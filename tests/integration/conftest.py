"""Fixtures shared by the integration tests: a RabbitMQ vhost, the local HTTP receiver of the
status-callback tests (defined in callbacks_support.py) and the after-sale tests' shop
(returns_support.py)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from settings import get_settings
from tests.broker import broker_is_amqp, rabbitmq_reachable, rabbitmqctl, with_vhost
from tests.integration.callbacks_support import receiver  # noqa: F401 - the callback receiver
from tests.integration.returns_support import shop  # noqa: F401 - the after-sale tests' shop

LOCAL_RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"


@pytest.fixture
def rabbit() -> Iterator[tuple[str, str]]:
    """(vhost, broker URL on it) on this machine's RabbitMQ."""
    base = get_settings().broker_url if broker_is_amqp() else LOCAL_RABBITMQ
    assert base is not None
    if not rabbitmq_reachable(base):
        pytest.skip(
            f"RabbitMQ is not reachable at {base.split('@')[-1]} "
            "(start it with `rabbitmq-server -detached`)"
        )
    vhost = f"orderflow_it_{os.getpid()}_{secrets.token_hex(3)}"
    added = rabbitmqctl("add_vhost", vhost)
    if added is None or added.returncode != 0:
        pytest.skip(f"cannot create a RabbitMQ vhost with rabbitmqctl (run as root?): {added}")
    try:
        granted = rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        assert granted is not None and granted.returncode == 0, granted
        yield vhost, with_vhost(base, vhost)
    finally:
        rabbitmqctl("delete_vhost", vhost)
