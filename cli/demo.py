"""``orderflow demo``: seed a catalog, start the API, a worker and beat, push orders over HTTP,
watch them move through the pipeline, print a summary, and stop everything it started.

It runs in its own database (``orderflow_demo``, dropped and recreated each run) on the embedded
servers by default, or on the configured ones, so it never touches other data.
"""

from __future__ import annotations

import os
import random
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import requests
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import create_engine, make_url, text

from cli.common import console
from settings import get_settings

DEMO_DB = "orderflow_demo"
# (sku, units in stock, active): demand is spread so some SKUs run out and are rejected.
CATALOG = [(f"SKU-{i:03d}", stock, True) for i, stock in enumerate([400] * 12 + [100] * 6)] + [
    ("SKU-OLD", 100, False)
]


@contextmanager
def _demo_database() -> Iterator[None]:
    base = get_settings().database_url
    assert base is not None
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{DEMO_DB}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{DEMO_DB}"'))
    saved = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = make_url(base).set(database=DEMO_DB).render_as_string(False)
    get_settings.cache_clear()
    try:
        yield
    finally:
        from models.db import dispose_engine

        dispose_engine()
        if saved is None:
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = saved
        get_settings.cache_clear()
        admin.dispose()


def _seed() -> None:
    from domain.money import Money
    from services.catalog import receive_stock, upsert_product
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        for sku, units, active in CATALOG:
            upsert_product(session, sku, f"Demo product {sku}", Money(1990, "CNY"), active)
            receive_stock(session, sku, "main", units, actor="demo", reason="demo seed")


def _message(i: int, rng: random.Random) -> dict[str, object]:
    roll = rng.random()
    if roll < 0.02:
        lines = [{"sku": "SKU-OLD", "quantity": 1}]  # inactive product
    elif roll < 0.04:
        lines = [{"sku": "SKU-NOPE", "quantity": 1}]  # unknown SKU
    else:
        skus = rng.sample([sku for sku, _, active in CATALOG if active], k=rng.randint(1, 3))
        lines = [{"sku": sku, "quantity": rng.randint(1, 3)} for sku in skus]
    return {
        "source": "demo-shop",
        "external_id": f"demo-{i:06d}",
        "customer_ref": f"customer-{rng.randint(1, 500)}",
        "lines": lines,
        "currency": "CNY",
        "payment_provider": rng.choice(["alipay", "wechatpay", "stripe"]),
        "shipping_address": {
            "name": "Demo Customer",
            "phone": "+86 138 0000 0000",
            "line1": f"{i} Demo Road",
            "city": "Hangzhou",
            "country": "CN",
        },
    }


def run_demo(*, orders: int, payment_window_s: int, concurrency: int) -> None:
    from workers.embedded import embedded_services

    key = f"demo-{secrets.token_hex(12)}"  # generated per run, never stored
    overrides = {
        "API_KEYS": key,
        "PAYMENT_WINDOW_S": str(payment_window_s),
        "SWEEP_INTERVAL_S": "1",
        "PAYMENT_POLL_INTERVAL_S": "1",
        "INTAKE_REDRIVE_S": "10",
    }
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    get_settings.cache_clear()
    try:
        with embedded_services(), _demo_database():
            _run(orders, payment_window_s, concurrency, key)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()


def _run(orders: int, payment_window_s: int, concurrency: int, key: str) -> None:
    from models.migrate import upgrade
    from services.queries import status_counts
    from services.unit_of_work import unit_of_work
    from workers.procs import ProcessGroup, free_port, wait_worker_ready

    def counts() -> dict[str, int]:
        with unit_of_work() as session:
            return status_counts(session)

    upgrade()
    _seed()
    group = ProcessGroup(log_dir=get_settings().state_dir / "demo-logs")
    try:
        port = free_port()
        console.print("[bold]orderflow demo[/]: starting API, worker and beat ...")
        group.api(port)
        worker = group.worker("worker-orders", "orders,maintenance", concurrency=2)
        group.beat()
        wait_worker_ready(worker)
        url = f"http://127.0.0.1:{port}/v1/orders"
        rng = random.Random(42)
        messages = [_message(i, rng) for i in range(orders)]
        columns = (TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn())  # fmt: skip
        session = requests.Session()
        session.headers["X-API-Key"] = key
        with Progress(*columns, console=console) as progress:
            t_intake = progress.add_task("intake", total=orders)
            t_stock = progress.add_task("reserved", total=orders)
            t_expiry = progress.add_task("expired", total=None)
            started = time.monotonic()

            def post(msg: dict[str, object]) -> int:
                code = session.post(url, json=msg, timeout=30).status_code
                progress.advance(t_intake)
                return code

            with ThreadPoolExecutor(concurrency) as pool:
                codes = list(pool.map(post, messages))
            intake_s = time.monotonic() - started
            bad = [c for c in codes if c not in (200, 202)]
            if bad:
                raise RuntimeError(f"{len(bad)} orders were refused by the API: {set(bad)}")
            while True:
                c = counts()
                done = orders - c.get("RECEIVED", 0)
                progress.update(t_stock, completed=done)
                if done >= orders:
                    break
                time.sleep(0.2)
            stage_s = time.monotonic() - started
            held = counts().get("RESERVED", 0)
            progress.update(t_expiry, total=held)
            while True:
                c = counts()
                progress.update(t_expiry, completed=c.get("EXPIRED", 0))
                if c.get("RESERVED", 0) == 0:
                    break
                time.sleep(0.5)
        _summary(orders, intake_s, stage_s, held, payment_window_s)
    finally:
        group.stop_all()
        console.print("stopped API, worker and beat")


def _summary(orders: int, intake_s: float, stage_s: float, held: int, window_s: int) -> None:
    from sqlalchemy import func, select

    from models import Order
    from services.queries import stock_drift
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        rows = session.execute(
            select(Order.status, Order.reason, func.count())
            .group_by(Order.status, Order.reason)
            .order_by(Order.status, Order.reason)
        ).all()
        drift = stock_drift(session)
    table = Table("status", "reason", "orders", title="outcome")
    for status, reason, n in rows:
        table.add_row(status, reason or "", str(n))
    console.print(table)
    rates = Table("figure", "value", title="rates")
    rates.add_row("orders pushed", str(orders))
    rates.add_row("intake (HTTP, stored)", f"{orders / intake_s:,.0f} orders/s")
    rates.add_row("intake -> reserved/rejected", f"{orders / stage_s:,.0f} orders/s")
    rates.add_row("reserved, then expired unpaid", f"{held} (window {window_s}s)")
    rates.add_row("stock counters vs ledger", "match" if not drift else f"{len(drift)} DRIFT")
    console.print(rates)
    if drift:
        raise RuntimeError("stock counters differ from the ledger")
