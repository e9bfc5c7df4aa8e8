"""Flash sale: many clients at once over few, scarce SKUs, through the HTTP API, to RESERVED.

The sale (:class:`FlashConfig`): ``orders`` orders from ``clients`` concurrent clients that send
as fast as they can (asyncio + httpx, one connection each) over ``skus`` SKUs; ``hot_share`` of
the orders go to the ``hot`` first SKUs, a ``two_line_share`` of orders also carry a second
(cold) line, so all-or-none reservation is exercised. Each SKU has stock for half the units
asked of it: about half the orders are REJECTED (out of stock).

Back-pressure is on (``INTAKE_MAX_WAIT_S``, see :mod:`services.backpressure`): a 429 is counted
as refused and the same message (same ``external_id``) is sent again after ``Retry-After``,
until accepted or ``retry_bound_s`` after its first attempt (then it counts as given up).

Payments run as far as creating the trade: the Alipay simulator is up and nobody pays, so a
reserved order ends AWAITING_PAYMENT (the trade is created in the reservation task since the
stages were fused, or by ``payments.create``, which has no worker here, before). The phase
starts its own API (2 uvicorn processes, with the phase's settings), one
``orders,maintenance`` prefork-2 worker and beat. What is measured is intake ->
RESERVED/REJECTED. Beat and the sweeper run at their production defaults except
``CREATE_REDRIVE_S``, raised past the phase: with no payments worker the sweeper would
otherwise re-drive ``payments.create`` every 20 s for each order still RESERVED. Tasks left
on queues nobody consumes here are purged after.

Checked afterwards, each must be zero (:attr:`FlashResult.failures`): 5xx answers; lost
orders (acknowledged but no row, or still RECEIVED once drained); oversold (a stock row with
reserved > on_hand, counters differing from the ledger or from the active reservations, an
order reserved twice, or more units reserved than the SKU was given); NEEDS_ATTENTION orders;
and any other 4xx (the bench's own messages are valid). Transport errors (a keep-alive
connection closed as it was reused) are reported beside them: the client resends the order.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
from sqlalchemy import text

from bench.common import CpuMeter, CpuUse, percentile, wait_for
from bench.environment import production_env, purge_queues, simulators
from bench.journey import park_earlier_work
from bench.pipeline import order_message
from models.db import get_engine
from workers.embedded import exported_env
from workers.procs import ProcessGroup, free_port, wait_worker_ready

SOURCE = "bench-flashsale"


@dataclass(frozen=True)
class FlashConfig:
    """The sale's size and the back-pressure limit its API runs with."""

    orders: int = 20_000
    clients: int = 64
    skus: int = 100
    hot: int = 10
    hot_share: float = 0.8
    two_line_share: float = 0.1
    max_wait_s: float = 30.0  # INTAKE_MAX_WAIT_S: refuse while the oldest waits this long
    retry_bound_s: float = 600.0
    drain_timeout_s: float = 1800.0
    seed: int = 17

    @classmethod
    def quick(cls) -> FlashConfig:
        # A 5 s limit so that the short sale, too, meets back-pressure.
        return cls(orders=1_000, clients=16, max_wait_s=5.0, retry_bound_s=60.0,
                   drain_timeout_s=90.0)  # fmt: skip

    def sku(self, i: int) -> str:
        return f"FLASH-{i:03d}"

    def env(self) -> dict[str, str]:
        return {
            "INTAKE_MAX_WAIT_S": str(self.max_wait_s),
            "INTAKE_MAX_BACKLOG": "0",
            "CREATE_REDRIVE_S": "3600",
        }


def sale_messages(cfg: FlashConfig) -> list[dict[str, Any]]:
    """The sale's orders, in a seeded random order of SKUs (one unit per line)."""
    rng = random.Random(cfg.seed)
    cold = range(cfg.hot, cfg.skus)
    messages = []
    for _ in range(cfg.orders):
        first = rng.randrange(cfg.hot) if rng.random() < cfg.hot_share else rng.choice(cold)
        msg = order_message(SOURCE, cfg.sku(first))
        if rng.random() < cfg.two_line_share:
            second = rng.choice([c for c in cold if c != first])
            msg["lines"].append({"sku": cfg.sku(second), "quantity": 1})
        messages.append(msg)
    return messages


def stock_for(messages: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Half the units asked of each SKU (at least one)."""
    asked = Counter(line["sku"] for m in messages for line in m["lines"])
    return {sku: max(1, n // 2) for sku, n in asked.items()}


def seed_sale(stock: dict[str, int]) -> None:
    """The sale's products, each with its stock in the ``main`` warehouse."""
    from domain.money import Money
    from services.catalog import receive_stock, upsert_product
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        for sku, units in sorted(stock.items()):
            upsert_product(session, sku, f"Flash {sku}", Money(9900, "CNY"), actor="bench")
            receive_stock(session, sku, "main", units, actor="bench", reason="flash sale")


# Earlier phases leave RECEIVED orders whose tasks were purged (the intake phase has no
# worker). Back-pressure measures every RECEIVED order: left as they are, they would refuse
# the whole sale. They hold no stock, so closing them changes no counter.
_RETIRE = """UPDATE orders SET status = 'CANCELLED', reason = 'bench: left by an earlier phase',
stage_deadline = NULL WHERE status = 'RECEIVED' AND source <> :source"""


def retire_earlier_intake() -> int:
    """Close the RECEIVED orders earlier phases left (see above); returns how many."""
    with get_engine().begin() as conn:
        return int(conn.execute(text(_RETIRE), {"source": SOURCE}).rowcount)


@dataclass
class LoadResult:
    """What the clients saw. ``accepted`` maps external_id -> order id (202 or 200)."""

    accepted: dict[str, str] = field(default_factory=dict)
    refused: int = 0  # 429 answers
    given_up: int = 0  # orders still refused retry_bound_s after their first attempt
    server_errors: int = 0  # 5xx answers
    client_errors: Counter[int] = field(default_factory=Counter)  # other 4xx
    transport_errors: int = 0
    elapsed_s: float = 0.0


async def _send(
    client: httpx.AsyncClient, msg: dict[str, Any], r: LoadResult, bound_s: float
) -> None:
    """One order until accepted, refused for too long, or answered with a client error."""
    give_up_at = time.monotonic() + bound_s
    while True:
        try:
            resp = await client.post("/v1/orders", json=msg)
        except httpx.TransportError:
            r.transport_errors += 1
            wait = 1.0
        else:
            if resp.status_code in (200, 202):
                r.accepted[msg["external_id"]] = resp.json()["id"]
                return
            if resp.status_code >= 500:
                r.server_errors += 1
                wait = 1.0
            elif resp.status_code == 429:
                r.refused += 1
                wait = float(resp.headers.get("Retry-After", "1"))
            else:
                r.client_errors[resp.status_code] += 1
                return
        if time.monotonic() + wait > give_up_at:
            r.given_up += 1
            return
        await asyncio.sleep(wait)  # the client honours Retry-After; this is no test


async def _load(
    base_url: str, key: str, messages: Sequence[dict[str, Any]], cfg: FlashConfig
) -> LoadResult:
    r = LoadResult()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for msg in messages:
        queue.put_nowait(msg)
    limits = httpx.Limits(max_connections=cfg.clients, max_keepalive_connections=cfg.clients)

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            await _send(client, queue.get_nowait(), r, cfg.retry_bound_s)

    started = time.monotonic()
    async with httpx.AsyncClient(
        base_url=base_url, headers={"X-API-Key": key}, limits=limits, timeout=30.0
    ) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(cfg.clients)))
    r.elapsed_s = time.monotonic() - started
    return r


def run_load(
    base_url: str, key: str, messages: Sequence[dict[str, Any]], cfg: FlashConfig
) -> LoadResult:
    """Send every message from ``cfg.clients`` concurrent clients (see the module docstring)."""
    return asyncio.run(_load(base_url, key, messages, cfg))


def received_left() -> int:
    with get_engine().connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM orders WHERE source = :s AND status = 'RECEIVED'"),
                {"s": SOURCE},
            ).scalar_one()
        )


def wait_drained(timeout_s: float) -> bool:
    """Until no order of the sale is RECEIVED (bounded)."""
    return wait_for(lambda: received_left() == 0, timeout_s, every_s=0.2)


_TO_RESERVED = """
SELECT extract(epoch FROM e.created_at - o.created_at)
FROM orders o JOIN order_events e ON e.order_id = o.id
WHERE o.source = :s AND e.kind = 'transition' AND e.to_status = 'RESERVED'"""
_STATUSES = "SELECT status, count(*) FROM orders WHERE source = :s GROUP BY status"
_EXTERNAL_IDS = "SELECT external_id, id FROM orders WHERE source = :s"
_STOCK_WRONG = """
SELECT st.sku FROM stock st
LEFT JOIN (SELECT sku, warehouse, sum(quantity) q FROM reservations
           WHERE status = 'ACTIVE' GROUP BY sku, warehouse) r
  ON r.sku = st.sku AND r.warehouse = st.warehouse
WHERE st.sku LIKE 'FLASH-%' AND (st.reserved > st.on_hand OR st.reserved < 0
      OR st.reserved <> coalesce(r.q, 0))"""
_RESERVED_UNITS = """
SELECT l.sku, sum(l.quantity) FROM orders o JOIN order_lines l ON l.order_id = o.id
WHERE o.source = :s AND o.status = 'RESERVED' GROUP BY l.sku"""
_DOUBLE_RESERVE = """
SELECT count(*) FROM (SELECT m.order_id FROM stock_movements m JOIN orders o ON o.id = m.order_id
WHERE o.source = :s AND m.kind = 'reserve' GROUP BY m.order_id, m.sku, m.warehouse
HAVING count(*) > 1) x"""


@dataclass(frozen=True)
class FlashResult:
    """The sale's outcome, read from the clients and then from PostgreSQL."""

    load: LoadResult
    drain_s: float  # first POST until no accepted order is RECEIVED
    drained: bool
    statuses: dict[str, int]
    to_reserved: list[float]  # seconds, intake -> RESERVED per reserved order
    lost: int
    oversold: list[str]
    cpu: CpuUse | None = None

    @property
    def failures(self) -> dict[str, int]:
        """Every count that must be zero, by name. A transport error (a keep-alive connection
        the server closed as the client reused it, a client timeout) is not among them: the
        client resends the same order, and a lost one would show up as lost; it is reported
        beside them."""
        return {
            "5xx": self.load.server_errors,
            "lost": self.lost,
            "oversold": len(self.oversold),
            "NEEDS_ATTENTION": self.statuses.get("NEEDS_ATTENTION", 0),
            "other 4xx": sum(self.load.client_errors.values()),
        }

    def p(self, q: float) -> float:
        return percentile(self.to_reserved, q)


def judge(load: LoadResult, stock: dict[str, int], drain_s: float, drained: bool) -> FlashResult:
    """Read the outcome: statuses, latencies, lost and oversold (see the module docstring)."""
    from services.queries import stock_drift
    from services.unit_of_work import unit_of_work

    params = {"s": SOURCE}
    with get_engine().connect() as conn:
        statuses = {s: int(n) for s, n in conn.execute(text(_STATUSES), params).all()}
        rows: dict[str, str] = {e: i for e, i in conn.execute(text(_EXTERNAL_IDS), params)}
        latencies = [float(d) for (d,) in conn.execute(text(_TO_RESERVED), params).all()]
        wrong = [f"stock {sku}" for (sku,) in conn.execute(text(_STOCK_WRONG)).all()]
        units = {sku: int(n) for sku, n in conn.execute(text(_RESERVED_UNITS), params)}
        doubled = int(conn.execute(text(_DOUBLE_RESERVE), params).scalar_one())
    with unit_of_work() as session:
        # This phase's SKUs only: the raw phase's seed-style loop moves BENCH-* counters with no
        # ledger rows by design (it is the naive baseline).
        drift = [f"drift {d}" for d in stock_drift(session) if d["sku"].startswith("FLASH-")]
    over = [f"{sku}: {n} reserved of {stock.get(sku, 0)}" for sku, n in units.items()
            if n > stock.get(sku, 0)]  # fmt: skip
    missing = len([ext for ext, oid in load.accepted.items() if rows.get(ext) != oid])
    lost = missing + statuses.get("RECEIVED", 0)
    oversold = wrong + drift + over + ([f"{doubled} orders reserved twice"] if doubled else [])
    return FlashResult(load, drain_s, drained, statuses, latencies, lost, oversold)


WORKER = "bench-flashsale-orders"


def run_flash_sale(group: ProcessGroup, key: str, cfg: FlashConfig) -> FlashResult:
    """Seed the sale, start the simulators (nobody pays) and the sale's API, worker and beat
    (production cadence, ``cfg.env()``), send the orders, wait until none is RECEIVED, and
    judge. The processes are stopped whatever happens; CPU is metered from the first POST until
    drained."""
    messages = sale_messages(cfg)
    stock = stock_for(messages)
    park_earlier_work()
    retire_earlier_intake()
    seed_sale(stock)
    purge_queues()
    port = free_port()
    with simulators(port) as stack, exported_env({**production_env(), **cfg.env()}):
        stack.alipay.configure(auto_pay_after_ms=None)
        procs = [group.worker(WORKER, "orders,maintenance", concurrency=2)]
        procs.append(group.beat("beat-flashsale"))
        meter = CpuMeter(group, {WORKER: "worker orders prefork 2", "api-flashsale": "api"})
        try:
            procs.append(group.api(port, "api-flashsale", workers=2))
            wait_worker_ready(procs[0])
            meter.start()
            started = time.monotonic()
            load = run_load(f"http://127.0.0.1:{port}", key, messages, cfg)
            remaining = max(1.0, cfg.drain_timeout_s - (time.monotonic() - started))
            drained = wait_drained(remaining)
            drain_s = time.monotonic() - started
            cpu = meter.stop()
        finally:
            for proc in reversed(procs):
                proc.stop()
            purge_queues()  # payments.create / payments.query tasks nobody consumes here
    return replace(judge(load, stock, drain_s, drained), cpu=cpu)


#: (figure, unit, value, ceiling, configuration) rows of :meth:`bench.run.Bench.add`.
Row = tuple[str, str, float, float | None, str]


def figures(r: FlashResult, cfg: FlashConfig, intake_ceiling: float | None) -> list[Row]:
    """The sale's rows: accepted/s (against the raw intake SQL), 429s, time to drain, p99
    intake -> RESERVED, and the counts that must be zero (ceiling 0)."""
    load = r.load
    where = "; ".join(f"{k} {v}" for k, v in sorted(r.statuses.items()))
    cpu = r.cpu.describe(max(1, len(load.accepted))) if r.cpu else "CPU not sampled"
    cfg_s = (
        f"{cfg.orders:,} orders ({cfg.two_line_share:.0%} with a second line), {cfg.clients} "
        f"clients (httpx, asyncio), {cfg.skus} SKUs, {cfg.hot} hot with {cfg.hot_share:.0%} of "
        f"the orders, stock half the units asked; API 2 uvicorn processes, orders+maintenance "
        f"prefork 2, beat at production cadence, trades created, nobody pays; INTAKE_MAX_WAIT_S="
        f"{cfg.max_wait_s:g}, 429s retried after Retry-After for up to {cfg.retry_bound_s:g} s "
        f"({load.given_up} given up); sending took {load.elapsed_s:.1f} s; final {where}; {cpu}"
        + ("" if r.drained else "; TIMED OUT draining")
    )
    accepted = len(load.accepted)
    rows: list[Row] = [
        ("flash sale accepted", "orders/s", accepted / load.elapsed_s if load.elapsed_s else 0.0,
         intake_ceiling, f"{accepted:,} accepted; {cfg_s}"),
        ("flash sale refused (429)", "answers", float(load.refused), None, cfg_s),
        ("flash sale time to drain", "s", r.drain_s, None,
         "first POST until no accepted order is RECEIVED; " + cfg_s),
        ("flash sale intake -> RESERVED p99", "ms", r.p(99) * 1000, None,
         f"orders.created_at to the RESERVED event, {len(r.to_reserved):,} orders; p50 "
         f"{r.p(50) * 1000:,.0f} ms, max {max(r.to_reserved, default=0) * 1000:,.0f} ms; "
         + cfg_s),
    ]  # fmt: skip
    detail = {"oversold": "; ".join(r.oversold[:5]), "other 4xx": str(dict(load.client_errors))}
    for name, n in r.failures.items():
        rows.append((f"flash sale {name}", "count", float(n), 0.0,
                     f"must be 0; {detail.get(name, '')}"))  # fmt: skip
    rows.append(("flash sale transport errors, resent", "count", float(load.transport_errors),
                 None, "the client resent the same order; not a failure: " + cfg_s))  # fmt: skip
    return rows


class FlashSaleFailed(RuntimeError):
    """The flash sale saw a 5xx, lost or oversold an order, or left one NEEDS_ATTENTION."""


def ensure_clean(r: FlashResult) -> None:
    """Raise :class:`FlashSaleFailed` unless every must-be-zero count is zero and it drained."""
    bad = {name: n for name, n in r.failures.items() if n}
    if bad or not r.drained:
        raise FlashSaleFailed(f"flash sale: {bad or 'did not drain'}; {r.oversold[:5]}")
