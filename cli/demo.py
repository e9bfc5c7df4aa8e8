"""``orderflow demo``: seed a catalog in two warehouses, start the API, a worker and beat, push
orders over HTTP, watch them move through the pipeline, print a summary (with the parcels each
warehouse booked and delivered: an order whose SKUs sit in both ships as two parcels), and stop
everything it started.

It runs in its own database (``orderflow_demo`` or ``--database``, dropped and recreated each
run) on the embedded servers by default, or on the configured ones, so it never touches other
data. If the pipeline stalls (no order changes status for ``--stall-after`` seconds while some
are not final), it names the stage they are stuck in, with counts, stops everything and exits
non-zero instead of waiting forever. A stall, not a total deadline: a slow or busy machine that
keeps moving orders finishes its demo; one whose pipeline stopped fails within the window.
"""

from __future__ import annotations

import random
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.orm import Session

from cli.common import console
from cli.demo_aftersale import AUTO_APPROVE_MAX, AfterSale
from domain.money import format_money
from models.db import scratch_database
from producers.http import intake_session
from settings import get_settings
from simulators.stack import ProviderStack

DEMO_DB = "orderflow_demo"
PROVIDERS = ("alipay", "wechatpay", "stripe")
#: The demo's two warehouses (each parcel is booked from one; the warehouse simulator takes any).
WAREHOUSES = ("main", "east")


def _stocked(i: int, units: int) -> dict[str, int]:
    """Where SKU number ``i`` is stocked: 4 of the 18 in both warehouses (half each), the
    others in one, alternately. An order mixing a SKU only ``main`` holds with one only
    ``east`` holds ships as two parcels: about a third of the orders of two or three lines."""
    main, east = WAREHOUSES
    if i % 9 < 2:
        return {main: units // 2, east: units - units // 2}
    return {main: units} if i % 2 == 0 else {east: units}


# (sku, units in stock per warehouse, active): demand is spread so some SKUs run out and are
# rejected.
CATALOG = [
    (f"SKU-{i:03d}", _stocked(i, units), True) for i, units in enumerate([400] * 12 + [100] * 6)
] + [("SKU-OLD", {WAREHOUSES[0]: 100}, False)]
#: Two units left, and order 11 of every 50 asks for three: out of stock even in a tiny demo.
SCARCE = ("SKU-LAST", {WAREHOUSES[0]: 2}, True)


def default_stall_s(payment_window_s: int) -> int:
    """How long no order may change status before the demo calls the pipeline stuck: a minute,
    or half a minute past the payment window (abandoned orders wait that long to expire)."""
    return max(60, payment_window_s + 30)


class DemoStalled(RuntimeError):
    """No order changed status for the stall window; the message names the stuck stage."""


def _seed() -> None:
    from domain.money import Money
    from services.catalog import receive_stock, upsert_product
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        for sku, stocked, active in [*CATALOG, SCARCE]:
            upsert_product(session, sku, f"Demo product {sku}", Money(1990, "CNY"), active)
            for warehouse, units in stocked.items():
                receive_stock(session, sku, warehouse, units, actor="demo", reason="demo seed")


def _message(i: int, rng: random.Random) -> dict[str, object]:
    """Order ``i``: fixed by its index where the outcome matters (so even a small demo shows
    every outcome), random elsewhere. 2 % inactive product, 2 % unknown SKU, 2 % more than the
    stock left, providers in turn; the rest may still be rejected when a SKU runs out."""
    if i % 50 == 3:
        lines = [{"sku": "SKU-OLD", "quantity": 1}]  # inactive product
    elif i % 50 == 28:
        lines = [{"sku": "SKU-NOPE", "quantity": 1}]  # unknown SKU
    elif i % 50 == 11:
        lines = [{"sku": SCARCE[0], "quantity": sum(SCARCE[1].values()) + 1}]  # out of stock
    else:
        skus = rng.sample([sku for sku, _, active in CATALOG if active], k=rng.randint(1, 3))
        lines = [{"sku": sku, "quantity": rng.randint(1, 3)} for sku in skus]
    return {
        "source": "demo-shop",
        "external_id": f"demo-{i:06d}",
        "customer_ref": f"customer-{rng.randint(1, 500)}",
        "lines": lines,
        "currency": "CNY",
        "payment_provider": PROVIDERS[i % len(PROVIDERS)],
        "shipping_address": {
            "name": "Demo Customer",
            "phone": "+86 138 0000 0000",
            "line1": f"{i} Demo Road",
            "city": "Hangzhou",
            "country": "CN",
        },
    }


def run_demo(
    *,
    orders: int,
    payment_window_s: int,
    concurrency: int,
    stall_s: float | None = None,
    database: str = DEMO_DB,
) -> None:
    """Run the demo; raises :class:`DemoStalled` (after stopping everything it started) when
    no order changed status for ``stall_s`` seconds while some are not final (default:
    :func:`default_stall_s`), and ``RuntimeError`` when a correctness check fails."""
    from workers.embedded import embedded_services, exported_env

    stall = float(stall_s if stall_s is not None else default_stall_s(payment_window_s))
    key = f"demo-{secrets.token_hex(12)}"  # generated per run, never stored
    overrides = {
        "API_KEYS": key,
        "PAYMENT_WINDOW_S": str(payment_window_s),
        "SWEEP_INTERVAL_S": "1",
        "PAYMENT_POLL_INTERVAL_S": "1",
        "INTAKE_REDRIVE_S": "10",
        "CREATE_REDRIVE_S": "10",
        "TRACKING_INTERVAL_S": "0.5",
        # Receipt in seconds, not days: a third of the customers confirm it themselves
        # (_Customers.confirm_receipts), the rest are received by the clock.
        "AUTO_RECEIVE_S": "3",
        "AFTERSALE_WINDOW_S": "2",
        "RETURN_AUTO_APPROVE_MAX": AUTO_APPROVE_MAX,  # cli.demo_aftersale's returns settle alone
    }
    with exported_env(overrides):
        owns_broker = get_settings().broker_url is None and get_settings().redis_url is None
        with (
            embedded_services(),
            scratch_database(database, keep=True),
            _simulators() as (stack, port),
        ):
            _run(orders, concurrency, key, stack, port=port, owns_broker=owns_broker,
                 stall_s=stall)  # fmt: skip


@contextmanager
def _simulators() -> Iterator[tuple[ProviderStack, int]]:
    """Alipay, WeChat Pay and Stripe simulators with keys generated for this run."""
    from workers.embedded import exported_env
    from workers.procs import free_port

    port = free_port()
    key_dir = Path(tempfile.mkdtemp(prefix="orderflow-demo-keys-"))
    # One second of demo time is ten hours of parcel time: a 34-hour trace takes ~3.4 s.
    stack = ProviderStack.start(
        f"http://127.0.0.1:{port}",
        key_dir,
        time_scale=36000,
        wechatpay_key_mode=get_settings().wechatpay_key_mode,  # WECHATPAY_KEY_MODE picks it
    )
    try:
        with exported_env(stack.env):
            yield stack, port
    finally:
        stack.stop()
        shutil.rmtree(key_dir, ignore_errors=True)


def _customer_decision(external_id: str) -> str:
    """What the customer of order ``demo-NNNNNN`` does once asked to pay: 85 % pay, 5 % cancel,
    10 % walk away (the order expires). By index, so every 20 orders show all three."""
    roll = int(external_id.rsplit("-", 1)[1]) % 20
    return "cancel" if roll == 7 else "abandon" if roll in (13, 19) else "pay"


class _Customers:
    """Plays the customers: pays at the provider's simulator, cancels through the API, confirms
    the receipt of a third of the delivered orders through the API, and returns a few
    (:class:`cli.demo_aftersale.AfterSale`, which also plays the warehouse receiving them)."""

    def __init__(self, stack: ProviderStack, base_url: str, key: str) -> None:
        self.stack = stack
        self.base_url = base_url
        self.http = intake_session(key)  # waits out a 429 (back-pressure) and resends
        self.handled: set[str] = set()
        self.confirmed: set[str] = set()
        self.too_late = 0
        self.aftersale = AfterSale(self.http, base_url)

    def act(self) -> None:
        from services import run_report
        from services.unit_of_work import unit_of_work

        with unit_of_work() as session:
            waiting = run_report.awaiting_payment(session)
            delivered = run_report.delivered(session)
            awaiting = run_report.awaiting_parcel(session)
        self.aftersale.act(delivered, awaiting)
        self.confirm_receipts(delivered)
        for order_id, external_id, provider, trade in waiting:
            if order_id in self.handled:
                continue
            self.handled.add(order_id)
            decision = _customer_decision(external_id)
            if decision == "pay":
                try:
                    self.stack.pay(provider, trade)
                except Exception:  # noqa: BLE001 - each simulator has its own error type
                    self.too_late += 1  # the trade expired before this customer paid
            elif decision == "cancel":
                url = f"{self.base_url}/v1/orders/{order_id}/cancel"
                self.http.post(url, json={"reason": "customer changed their mind"}, timeout=30)

    def confirm_receipts(self, delivered: list[tuple[str, str]]) -> None:
        for order_id, external_id in delivered:
            if order_id in self.confirmed or int(external_id.rsplit("-", 1)[1]) % 3:
                continue
            self.confirmed.add(order_id)
            url = f"{self.base_url}/v1/orders/{order_id}/receipt"
            self.http.post(url, timeout=30).raise_for_status()


# The stages of the progress bars, with the statuses in which an order waits to pass each.
STAGE_WAITING = (
    ("reserved/rejected", ("RECEIVED",)),
    ("payment started", ("RESERVED",)),
    ("paid or closed", ("AWAITING_PAYMENT",)),
    ("shipped", ("PAID", "PARTIALLY_SHIPPED")),
    (
        "completed",
        ("SHIPPED", "IN_TRANSIT", "PARTIALLY_DELIVERED", "DELIVERED", "RECEIPT_CONFIRMED"),
    ),
)


def stuck_report(counts: dict[str, int], orders: int, stall_s: float) -> str:
    """Which stage holds the orders that are not final yet (the earliest stage first)."""
    waiting = [
        (stage, {st: counts[st] for st in statuses if counts.get(st)})
        for stage, statuses in STAGE_WAITING
    ]
    stuck = [(stage, held) for stage, held in waiting if held]
    pending = sum(sum(held.values()) for _, held in stuck)
    where = "; ".join(
        f"stage {stage!r}: " + ", ".join(f"{n} {st}" for st, n in held.items())
        for stage, held in stuck
    )
    everything = ", ".join(f"{st} {n}" for st, n in sorted(counts.items()))
    where = where or "no stage (orders missing?)"
    return (
        f"no order changed status for {stall_s:.0f} s with {pending} of {orders} orders not "
        "final; "
        f"stuck at {where}. All statuses: {everything}"
    )


def _ports(port: int, stack: ProviderStack) -> str:
    sims = sorted({urlsplit(v).port for v in stack.env.values() if v.startswith("http")} - {None})
    return f"API on port {port}, simulators on ports {', '.join(map(str, sims))}"


def _run(
    orders: int,
    concurrency: int,
    key: str,
    stack: ProviderStack,
    *,
    port: int,
    owns_broker: bool,
    stall_s: float,
) -> None:
    from models.migrate import upgrade
    from observability.metrics import prepare_multiproc_dir
    from services.queries import status_counts
    from services.unit_of_work import unit_of_work
    from workers.procs import ProcessGroup, wait_worker_ready

    def counts() -> dict[str, int]:
        with unit_of_work() as session:
            return status_counts(session)

    upgrade()
    _seed()
    prepare_multiproc_dir()
    if owns_broker:
        _purge_stale_tasks()
    group = ProcessGroup(log_dir=get_settings().state_dir / "demo-logs")
    try:
        console.print("[bold]orderflow demo[/]: starting API, workers, beat and simulators ...")
        group.api(port)
        workers = [
            group.worker("worker-orders", "orders,maintenance", concurrency=2),
            group.worker("worker-payments", "payments", concurrency=8, pool="threads"),
            group.worker("worker-shipping", "shipping,tracking", concurrency=8, pool="threads"),
        ]
        group.beat()
        for w in workers:
            wait_worker_ready(w)
        console.print(_ports(port, stack), highlight=False)
        base = f"http://127.0.0.1:{port}"
        customers = _Customers(stack, base, key)
        rng = random.Random(42)
        messages = [_message(i, rng) for i in range(orders)]
        columns = (TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn())  # fmt: skip
        with Progress(*columns, console=console) as progress:
            stages = ("intake", "reserved/rejected", "payment started", "paid or closed",
                      "shipped", "completed")  # fmt: skip
            bars = {name: progress.add_task(name, total=orders) for name in stages}
            started = time.monotonic()

            def post(msg: dict[str, object]) -> int:
                code = customers.http.post(f"{base}/v1/orders", json=msg, timeout=30).status_code
                progress.advance(bars["intake"])
                return code

            with ThreadPoolExecutor(concurrency) as pool:
                codes = list(pool.map(post, messages))
            marks = {"intake": time.monotonic() - started}
            bad = [c for c in codes if c not in (200, 202)]
            if bad:
                raise RuntimeError(f"{len(bad)} orders were refused by the API: {set(bad)}")
            last_counts, last_change = {}, time.monotonic()
            final = {"REJECTED", "COMPLETED", "EXPIRED", "CANCELLED", "NEEDS_ATTENTION"}
            shipped = {
                "SHIPPED",
                "IN_TRANSIT",
                "PARTIALLY_DELIVERED",
                "DELIVERED",
                "RECEIPT_CONFIRMED",
                "COMPLETED",
            }
            after_pay = {"PAID", "PARTIALLY_SHIPPED", *shipped}
            while True:
                customers.act()
                c = counts()
                stocked = orders - c.get("RECEIVED", 0)
                started_pay = stocked - c.get("RESERVED", 0)
                done = sum(n for status, n in c.items() if status in final)
                closed = sum(n for st, n in c.items() if st in final | after_pay)
                progress.update(bars["reserved/rejected"], completed=stocked)
                progress.update(bars["payment started"], completed=started_pay)
                progress.update(bars["paid or closed"], completed=closed)
                paid_so_far = sum(c.get(st, 0) for st in after_pay)
                for bar, count in (("shipped", sum(c.get(st, 0) for st in shipped)),
                                   ("completed", c.get("COMPLETED", 0))):  # fmt: skip
                    progress.update(bars[bar], completed=count, total=max(paid_so_far, 1))
                if stocked >= orders and "reserved" not in marks:
                    marks["reserved"] = time.monotonic() - started
                if done >= orders:
                    marks["final"] = time.monotonic() - started
                    break
                if c != last_counts:
                    last_counts, last_change = c, time.monotonic()
                elif time.monotonic() - last_change > stall_s:
                    raise DemoStalled(stuck_report(c, orders, stall_s))
                time.sleep(0.2)
        _summary(orders, marks, stack)
    finally:
        group.stop_all()
        console.print("stopped API, workers, beat and simulators")


def _summary(orders: int, marks: dict[str, float], stack: ProviderStack) -> None:
    from services import run_report
    from services.queries import stock_drift
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        rows = run_report.outcome_counts(session)
        paid_here = run_report.captured_by_provider(session)
        drift = stock_drift(session)
        created = _stage_rate(session, "AWAITING_PAYMENT")
        shipped_rate = _stage_rate(session, "SHIPPED")
        parcels = run_report.parcels_by_warehouse(session)
        split = run_report.orders_by_parcels(session, "COMPLETED")
        receipts = run_report.receipts_by(session)
        returns = run_report.returns_summary(session)
    table = Table("status", "reason", "provider", "orders", title="outcome")
    for status, reason, provider, n in rows:
        table.add_row(status, reason or "", provider, str(n))
    console.print(table)
    by_warehouse = Table("warehouse", "booked", "delivered", title="parcels per warehouse")
    for warehouse, booked, delivered in parcels:
        by_warehouse.add_row(warehouse, str(booked), str(delivered))
    console.print(by_warehouse)
    after = Table("kind", "status", "returns", "refunded", title="returns and exchanges")
    for kind, status, n, refunded in returns:
        after.add_row(kind, status, str(n), format_money(refunded, "CNY"))
    console.print(after)
    charges = stack.charges()
    doubled = sum(1 for n in charges.values() if n > 1)
    paid_statuses = ("PAID", "PARTIALLY_SHIPPED", "SHIPPED", "IN_TRANSIT", "PARTIALLY_DELIVERED",
                     "DELIVERED", "RECEIPT_CONFIRMED", "COMPLETED")  # fmt: skip
    paid = sum(n for status, _r, _p, n in rows if status in paid_statuses)
    completed = sum(n for status, _r, _p, n in rows if status == "COMPLETED")
    rates = Table("figure", "value", title="rates and checks")
    rates.add_row("orders pushed", str(orders))
    rates.add_row("intake (HTTP, stored)", f"{orders / marks['intake']:,.0f} orders/s")
    rates.add_row("intake -> reserved/rejected", f"{orders / marks['reserved']:,.0f} orders/s")
    rates.add_row("intake -> final (completed/expired/...)",
                  f"{orders / marks['final']:,.0f} orders/s ({marks['final']:.0f} s)")  # fmt: skip
    rates.add_row("paid orders", f"{paid} ({paid / marks['final']:,.0f}/s incl. customer time)")
    rates.add_row("completed (delivered, received, window passed)", str(completed))
    rates.add_row("receipt confirmed by the buyer / by the clock",
                  f"{receipts['buyer']} / {receipts['clock']}")  # fmt: skip
    rates.add_row("charges at the simulators", f"{sum(charges.values())} "
                  f"(by provider here: {dict(sorted(paid_here.items()))})")  # fmt: skip
    rates.add_row("payment stage: payments created", created)
    rates.add_row("shipping stage: orders shipped", shipped_rate)
    for n, count in split.items():
        rates.add_row(f"completed orders in {n} parcel{'s' if n > 1 else ''}", str(count))
    rates.add_row("orders charged twice", str(doubled))
    rates.add_row("stock counters vs ledger", "match" if not drift else f"{len(drift)} DRIFT")
    console.print(rates)
    if drift or doubled:
        raise RuntimeError("a correctness check failed (see the table above)")


def _stage_rate(session: Session, status: str) -> str:
    """How many orders entered ``status`` and how fast, from the timeline's timestamps."""
    from services import run_report

    n, first, last = run_report.entered(session, status)
    if not n or first is None or last is None or last <= first:
        return str(n)
    span = (last - first).total_seconds()
    return f"{n} in {span:.1f} s ({n / span:,.0f}/s)"


def _purge_stale_tasks() -> None:
    """Drop task messages left in the broker by an earlier demo: they name orders of a demo
    database that no longer exists. Called only on the embedded Redis, which the demo owns; a
    configured broker may carry real work, so it is left alone."""
    from workers.broker import purge_task_queues

    purge_task_queues(get_settings().effective_broker_url)
