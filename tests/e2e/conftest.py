"""The running pipeline for payment tests: simulators, API, workers per queue and beat; and the
console browser tests' fixtures (``browser``, ``console_api``: tests/e2e/browser_support.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from settings import get_settings
from tests.e2e.browser_support import browser, console_api  # noqa: F401 - fixtures


@dataclass
class Pipeline:
    base_url: str
    api_key: str
    stack: Any
    procs: Any

    def post_order(self, message: dict[str, Any]) -> str:
        r = requests.post(f"{self.base_url}/v1/orders", json=message,
                          headers={"X-API-Key": self.api_key}, timeout=30)  # fmt: skip
        assert r.status_code in (200, 202), r.text
        return str(r.json()["id"])

    def get_order(self, order_id: str) -> dict[str, Any]:
        r = requests.get(f"{self.base_url}/v1/orders/{order_id}",
                         headers={"X-API-Key": self.api_key}, timeout=30)  # fmt: skip
        assert r.status_code == 200, r.text
        return dict(r.json())

    def post(self, path: str, body: dict[str, Any]) -> requests.Response:
        return requests.post(f"{self.base_url}{path}", json=body,
                             headers={"X-API-Key": self.api_key}, timeout=30)  # fmt: skip


@pytest.fixture
def wechatpay_key_mode() -> str:
    """WeChat Pay's key mode for the stack; a module overrides this fixture to change it."""
    return "public_key"


@pytest.fixture
def pipeline_env(services, tmp_path, monkeypatch, wechatpay_key_mode) -> Iterator[tuple[int, Any]]:
    """Simulators started and their settings exported (no orderflow process started yet)."""
    from adapters import registry
    from simulators.stack import ProviderStack
    from workers.procs import free_port

    port = free_port()
    # 1 s of test time is 10 h of parcel time: a whole trace (34 h) takes about 3.4 s.
    stack = ProviderStack.start(f"http://127.0.0.1:{port}", tmp_path / "keys", time_scale=36000,
                                wechatpay_key_mode=wechatpay_key_mode)  # fmt: skip
    for key, value in stack.env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    registry.reset()
    try:
        yield port, stack
    finally:
        stack.stop()
        registry.reset()


@pytest.fixture
def start_pipeline(pipeline_env, procs, db, api_key):
    """Call it (after any monkeypatched settings) to start API, workers and beat."""
    from workers.procs import wait_worker_ready

    port, stack = pipeline_env

    def start(
        *,
        orders_concurrency: int = 2,
        payments_concurrency: int = 8,
        payments_pool: str = "threads",
        shipping: bool = False,
        payments: bool = True,
    ) -> Pipeline:
        """``shipping=False`` leaves PAID orders where they are (payment tests look at PAID);
        ``payments=False`` starts no payments worker (a backlog builds up on its queue)."""
        get_settings.cache_clear()
        procs.api(port)
        workers = [procs.worker("orders", "orders,maintenance", concurrency=orders_concurrency)]
        if payments:
            workers.append(procs.worker("payments", "payments", concurrency=payments_concurrency,
                                        pool=payments_pool))  # fmt: skip
        if shipping:
            workers.append(procs.worker("shipping", "shipping,tracking", concurrency=8,
                                        pool="threads"))  # fmt: skip
        procs.beat()
        for w in workers:
            wait_worker_ready(w)
        return Pipeline(f"http://127.0.0.1:{port}", api_key, stack, procs)

    return start
