"""The orderflow Celery app plus bench-only tasks for the raw Celery ceilings.

Started with ``celery -A bench.celery_app worker``. Each chain has as many hops, on the same
queues, as an order's journey has Celery tasks (orders.process -> payments.create ->
shipping.book -> shipping.subscribe); every hop publishes the next one by name, as the
pipeline's tasks do after their commit. With ``with_db`` each hop first runs one small
transaction (an UPDATE of the chain's row in ``bench_chain``). The last hop counts the chain as
done in Redis.
"""

from __future__ import annotations

from sqlalchemy import text

from models.db import get_engine
from workers.app import app
from workers.connections import redis_client

__all__ = ["app", "done_key"]

HOPS = ("orders.bench_hop", "payments.bench_hop", "shipping.bench_hop", "shipping.bench_hop_last")


def done_key(run: str) -> str:
    """Redis counter of finished chains of one measurement."""
    return f"bench:chains-done:{run}"


def _hop(index: int, chain_id: int, with_db: bool, run: str) -> None:
    if with_db:
        with get_engine().begin() as conn:
            conn.execute(
                text("UPDATE bench_chain SET hops = hops + 1 WHERE id = :id"), {"id": chain_id}
            )
    if index + 1 < len(HOPS):
        app.send_task(HOPS[index + 1], args=[chain_id, with_db, run])
    else:
        redis_client().incr(done_key(run))


@app.task(name="orders.bench_hop")
def orders_hop(chain_id: int, with_db: bool, run: str) -> None:
    """Hop 1 of 4 (orders queue)."""
    _hop(0, chain_id, with_db, run)


@app.task(name="payments.bench_hop")
def payments_hop(chain_id: int, with_db: bool, run: str) -> None:
    """Hop 2 of 4 (payments queue)."""
    _hop(1, chain_id, with_db, run)


@app.task(name="shipping.bench_hop")
def shipping_hop(chain_id: int, with_db: bool, run: str) -> None:
    """Hop 3 of 4 (shipping queue)."""
    _hop(2, chain_id, with_db, run)


@app.task(name="shipping.bench_hop_last")
def shipping_last_hop(chain_id: int, with_db: bool, run: str) -> None:
    """Hop 4 of 4 (shipping queue); counts the chain as done."""
    _hop(3, chain_id, with_db, run)
