"""Ceilings measured in the same run: raw PostgreSQL and raw Celery (with and without a DB hop).

Raw PostgreSQL issues, through psycopg2, the statements intake and reservation execute for a
one-line order (two transactions, as in the pipeline): intake inserts the order (ON CONFLICT),
its line, the RECEIVED event and looks up the source's callback endpoint; reservation locks the
order, reads lines and products, locks the stock rows in key order (FOR UPDATE), updates stock,
inserts the ledger row and the reservation, prices the line, reads the stage age, updates the
order, inserts the RESERVED event and looks up the callback endpoint again.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psycopg2
import redis
from sqlalchemy import text

from bench.common import libpq_dsn, wait_for
from models.db import get_engine
from workers.procs import ProcessGroup, wait_worker_ready

ADDRESS = json.dumps(
    {"name": "Bench", "line1": "1 Bench Road", "city": "Hangzhou", "country": "CN"}
)

_INSERT_ORDER = """
INSERT INTO orders (id, source, external_id, body_hash, customer_ref, status, currency,
                    total_amount, payment_provider, shipping_address, stage_deadline)
VALUES (%s, %s, %s, 'bench', 'bench-customer', 'RECEIVED', 'CNY', 0, 'alipay', %s,
        now() + interval '30 seconds')
ON CONFLICT ON CONSTRAINT uq_orders_source_external_id DO NOTHING RETURNING id"""
_INSERT_LINE = "INSERT INTO order_lines (order_id, line_no, sku, quantity) VALUES (%s, 1, %s, %s)"
_INSERT_EVENT = """INSERT INTO order_events (order_id, kind, from_status, to_status, detail, actor)
VALUES (%s, 'transition', %s, %s, %s, 'system')"""
_ENDPOINT = "SELECT id, paused_at FROM callback_endpoints WHERE source = %s AND active"
_LOCK_ORDER = "SELECT status, currency FROM orders WHERE id = %s FOR UPDATE"
_LINES = "SELECT sku, quantity FROM order_lines WHERE order_id = %s"
_PRODUCTS = "SELECT sku, price_amount, currency, active FROM products WHERE sku = ANY(%s)"
_LOCK_STOCK = """SELECT sku, warehouse, on_hand, reserved FROM stock WHERE sku = ANY(%s)
ORDER BY sku, warehouse FOR UPDATE"""
_UPDATE_STOCK = "UPDATE stock SET reserved = reserved + %s WHERE sku = %s AND warehouse = %s"
_INSERT_MOVEMENT = """INSERT INTO stock_movements (sku, warehouse, kind, delta_reserved, order_id)
VALUES (%s, %s, 'reserve', %s, %s)"""
_INSERT_RESERVATION = """INSERT INTO reservations (order_id, sku, warehouse, quantity, expires_at)
VALUES (%s, %s, %s, %s, now() + interval '900 seconds')"""
_PRICE_LINE = "UPDATE order_lines SET unit_amount = %s WHERE order_id = %s AND sku = %s"
_STAGE_AGE = """SELECT extract(epoch FROM now() - (SELECT max(created_at) FROM order_events
WHERE order_id = %s AND kind = 'transition'))"""
_RESERVE_ORDER = """UPDATE orders SET status = 'RESERVED', total_amount = %s,
payment_deadline = now() + interval '900 seconds', stage_deadline = now() + interval '20 seconds',
stage_attempts = 0, updated_at = now() WHERE id = %s AND status = 'RECEIVED'"""


def raw_intake(cur: psycopg2.extensions.cursor, source: str, sku: str, qty: int) -> str:
    """The intake transaction's statements for a one-line order (caller commits)."""
    order_id = str(uuid.uuid4())
    cur.execute(_INSERT_ORDER, (order_id, source, uuid.uuid4().hex, ADDRESS))
    cur.execute(_INSERT_LINE, (order_id, sku, qty))
    cur.execute(_INSERT_EVENT, (order_id, None, "RECEIVED", '{"channel": "bench"}'))
    cur.execute(_ENDPOINT, (source,))
    cur.fetchall()
    return order_id


def raw_reserve(cur: psycopg2.extensions.cursor, order_id: str, source: str) -> bool:
    """The reservation transaction's statements (caller commits); False if out of stock."""
    cur.execute(_LOCK_ORDER, (order_id,))
    cur.fetchone()
    cur.execute(_LINES, (order_id,))
    lines = cur.fetchall()
    skus = sorted({sku for sku, _ in lines})
    cur.execute(_PRODUCTS, (skus,))
    prices = {sku: price for sku, price, _cur, _active in cur.fetchall()}
    cur.execute(_LOCK_STOCK, (skus,))
    stock = {sku: (wh, on_hand - reserved) for sku, wh, on_hand, reserved in cur.fetchall()}
    if any(stock[sku][1] < qty for sku, qty in lines):
        return False
    for sku, qty in lines:
        cur.execute(_UPDATE_STOCK, (qty, sku, stock[sku][0]))
        cur.execute(_INSERT_MOVEMENT, (sku, stock[sku][0], qty, order_id))
        cur.execute(_INSERT_RESERVATION, (order_id, sku, stock[sku][0], qty))
        cur.execute(_PRICE_LINE, (prices[sku], order_id, sku))
    cur.execute(_STAGE_AGE, (order_id,))
    cur.fetchone()
    total = sum(prices[sku] * qty for sku, qty in lines)
    cur.execute(_RESERVE_ORDER, (total, order_id))
    cur.execute(_INSERT_EVENT, (order_id, "RECEIVED", "RESERVED", '{"bench": true}'))
    cur.execute(_ENDPOINT, (source,))
    cur.fetchall()
    return True


def _raw_worker(
    skus: Sequence[str], offset: int, stride: int, reserve: bool, stop_at: float, cap: int
) -> int:
    """One thread: its own connection, orders until ``stop_at`` or ``cap``; returns the count."""
    conn = psycopg2.connect(libpq_dsn())
    source = "bench-raw-full" if reserve else "bench-raw-intake"
    done = 0
    try:
        with conn.cursor() as cur:
            while done < cap and time.monotonic() < stop_at:
                sku = skus[(offset + done * stride) % len(skus)]
                order_id = raw_intake(cur, source, sku, 1)
                conn.commit()
                if reserve:
                    raw_reserve(cur, order_id, source)
                    conn.commit()
                done += 1
    finally:
        conn.close()
    return done


@dataclass(frozen=True)
class RawResult:
    """Best orders/s over the thread counts tried, and each count's rate."""

    best: float
    best_threads: int
    by_threads: dict[int, float]


def raw_postgres(
    skus: Sequence[str], *, reserve: bool, threads: Sequence[int] = (1, 2, 4), seconds: float = 4.0
) -> RawResult:
    """Orders/s of the raw SQL (intake only, or intake + reservation) from N threads."""
    rates: dict[int, float] = {}
    for n in threads:
        started = time.monotonic()
        stop_at = started + seconds
        with ThreadPoolExecutor(n) as pool:
            futures = [
                pool.submit(_raw_worker, skus, i * 7919, n, reserve, stop_at, 50_000)
                for i in range(n)
            ]
            total = sum(f.result() for f in futures)
        rates[n] = total / (time.monotonic() - started)
    best_n = max(rates, key=lambda k: rates[k])
    return RawResult(rates[best_n], best_n, rates)


def prepare_chain_table(rows: int) -> None:
    """``bench_chain``: one row per chain, updated once per hop by the DB variant."""
    with get_engine().begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS bench_chain"))
        conn.execute(text("CREATE TABLE bench_chain (id int PRIMARY KEY, hops int NOT NULL)"))
        conn.execute(
            text("INSERT INTO bench_chain SELECT g, 0 FROM generate_series(0, :n - 1) g"),
            {"n": rows},
        )


def raw_celery_chains(
    group: ProcessGroup, rdb: redis.Redis, *, chains: int, with_db: bool, timeout_s: float
) -> tuple[float, int]:
    """Chains/s of 4-hop bench chains on a prefork-2 worker consuming the pipeline's queues.

    Returns (chains/s, chains finished); the rate counts only chains done within the bound.
    """
    from bench.celery_app import HOPS, app, done_key

    name = "bench-chain-db" if with_db else "bench-chain-noop"
    worker = group.worker(name, "orders,payments,shipping", concurrency=2, app="bench.celery_app")
    try:
        wait_worker_ready(worker)
        run = uuid.uuid4().hex
        started = time.monotonic()
        with app.producer_or_acquire() as producer:
            for i in range(chains):
                app.send_task(HOPS[0], args=[i, with_db, run], producer=producer)
        key = done_key(run)
        wait_for(lambda: int(rdb.get(key) or 0) >= chains, timeout_s, every_s=0.02)
        elapsed = time.monotonic() - started
        finished = int(rdb.get(key) or 0)
        rdb.delete(key)
    finally:
        worker.stop()
    return finished / elapsed, finished
