"""Fixtures for the security tests: the running pipeline of tests/e2e (simulators with generated
keys, API, workers, beat), small database probes shared by the fuzzers and the seeded API the API
fuzzers (test_fuzz_api_*.py) run against."""

from __future__ import annotations

import pytest
import requests
from sqlalchemy import text

from services.unit_of_work import unit_of_work
from settings import get_settings
from tests.conftest import order_message
from tests.console_helpers import admin_key, app, clock  # noqa: F401 (the console tests' fixtures)
from tests.e2e.conftest import pipeline_env, start_pipeline, wechatpay_key_mode
from tests.security.fuzz_api_support import ADMIN_KEY, SKUS, Target

__all__ = ["pipeline_env", "row_counts", "start_pipeline", "wechatpay_key_mode"]

#: Tables a request could write to. A refused request (4xx) must leave every count unchanged.
WRITABLE_TABLES = (
    "orders", "order_lines", "order_events", "reservations", "payments", "refunds",
    "processed_notifications", "shipments", "tracking_events", "products", "product_prices",
    "stock", "stock_movements", "users", "user_sessions", "callback_endpoints",
    "callback_deliveries", "dead_letters",
)  # fmt: skip


def row_counts() -> dict[str, int]:
    """Row count per table in :data:`WRITABLE_TABLES`, in one statement."""
    select = ", ".join(f"(SELECT count(*) FROM {t}) AS {t}" for t in WRITABLE_TABLES)
    with unit_of_work() as s:
        row = s.execute(text(f"SELECT {select}")).mappings().one()
    return {t: int(row[t]) for t in WRITABLE_TABLES}


def _login(base: str, email: str, password: str) -> str:
    r = requests.post(f"{base}/v1/sessions", json={"email": email, "password": password},
                      timeout=30)  # fmt: skip
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


@pytest.fixture
def target(pipeline_env, procs, db, api_key, catalog, monkeypatch) -> Target:
    """The API alone (no workers: nothing moves an order behind the fuzzer's back), seeded with
    two products, one order and a user with two session tokens."""
    port, stack = pipeline_env
    monkeypatch.setenv("ADMIN_API_KEY", ADMIN_KEY)
    # The registration limit (20 per address) would turn most generated registrations into
    # 429s after the first few; lift it so positive cases keep reaching the database.
    monkeypatch.setenv("REGISTER_MAX_PER_ADDRESS", "100000")
    get_settings.cache_clear()
    catalog({sku: 1000 for sku in SKUS})
    procs.api(port)
    base = f"http://127.0.0.1:{port}"
    r = requests.post(f"{base}/v1/orders", json=order_message("SKU-1", 1),
                      headers={"X-API-Key": api_key}, timeout=30)  # fmt: skip
    assert r.status_code == 202, r.text
    order_id = str(r.json()["id"])
    email, password = "fuzz@example.com", "fuzz-Password-1"
    r = requests.post(f"{base}/v1/users", json={"email": email, "password": password}, timeout=30)
    assert r.status_code == 201, r.text
    return Target(base, api_key, stack, order_id, _login(base, email, password),
                  _login(base, email, password))  # fmt: skip
