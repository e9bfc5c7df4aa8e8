"""What a bench run stands on: its throw-away database, the seeded catalog, the broker's queues,
the Redis connection and the provider simulators."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from settings import get_settings
from workers.embedded import exported_env

if TYPE_CHECKING:
    from simulators.stack import ProviderStack

SPREAD_SKUS = [f"BENCH-{i:05d}" for i in range(10_000)]
HOT_SKU = "BENCH-HOT"


@contextlib.contextmanager
def throwaway_database() -> Iterator[str]:
    """Create ``orderflow_bench_<pid>``, point DATABASE_URL at it, migrate; drop it after."""
    from models.db import scratch_database
    from models.migrate import upgrade

    name = f"orderflow_bench_{os.getpid()}_{secrets.token_hex(3)}"
    with scratch_database(name):
        upgrade()
        yield name


def seed_catalog() -> None:
    """10,000 spread SKUs (1,000 units each) and one hot SKU with ample stock."""
    from domain.money import Money
    from services.catalog import receive_stock, upsert_product
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        for sku, units in [(s, 1_000) for s in SPREAD_SKUS] + [(HOT_SKU, 10_000_000)]:
            upsert_product(session, sku, f"Bench {sku}", Money(1990, "CNY"), actor="bench")
            receive_stock(session, sku, "main", units, actor="bench", reason="bench seed")


def purge_queues() -> None:
    """Empty the pipeline's queues on the broker (leftovers of this or an earlier bench)."""
    from workers.broker import purge_task_queues

    # On a fresh channel per queue: on RabbitMQ a missing queue closes its channel.
    purge_task_queues(get_settings().effective_broker_url)


def redis_conn() -> redis.Redis:
    from workers.embedded import redis_client_url

    url = get_settings().redis_url
    assert url is not None
    return redis.Redis.from_url(redis_client_url(url), socket_timeout=5)


@contextlib.contextmanager
def simulators(port: int) -> Iterator[ProviderStack]:
    """The provider simulators (Alipay pays every trade at once), their env exported."""
    from simulators.stack import ProviderStack

    key_dir = Path(tempfile.mkdtemp(prefix="orderflow-bench-keys-"))
    stack = ProviderStack.start(f"http://127.0.0.1:{port}", key_dir, time_scale=36000)
    stack.alipay.configure(auto_pay_after_ms=0)
    try:
        with exported_env(stack.env):
            yield stack
    finally:
        stack.stop()
        shutil.rmtree(key_dir, ignore_errors=True)


#: The settings of beat's cadence and the sweeper's re-drive delays: what ``production_env``
#: pins to their production defaults (the test suite and ``orderflow demo`` shorten them).
CADENCE_SETTINGS = (
    "sweep_interval_s",
    "payment_poll_interval_s",
    "tracking_interval_s",
    "callback_dispatch_interval_s",
    "intake_redrive_s",
    "create_redrive_s",
    "shipping_redrive_s",
    "tracking_time_scale",
)


def production_env(names: tuple[str, ...] = CADENCE_SETTINGS) -> dict[str, str]:
    """``NAME=default`` for each settings field in ``names``: exported, it pins the processes
    started next to the production default, whatever the calling environment set."""
    from settings import Settings

    return {name.upper(): str(Settings.model_fields[name].default) for name in names}
