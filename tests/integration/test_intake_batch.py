"""services.intake.accept_orders on real PostgreSQL: a batch in a fixed number of statements,
each order answered on its own, and the one-by-one fallback when the batch statement fails."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime

from sqlalchemy import event, func, select
from sqlalchemy.exc import DBAPIError

from domain.errors import ConflictError, ValidationError
from models import Order, OrderEvent, OrderLine
from models.db import get_engine
from services.intake import IntakeResult, NewOrder, accept_orders
from services.unit_of_work import unit_of_work


def _order(n: int, **changes: object) -> NewOrder:
    order = NewOrder(
        source="web", external_id=f"b-{n}", body_hash=f"h-{n}", currency="CNY",
        payment_provider="alipay", lines=[("SKU-1", 1), ("SKU-2", n + 1)],
        shipping_address={"name": "Li Lei", "city": "Shanghai"},
    )  # fmt: skip
    return replace(order, **changes)  # type: ignore[arg-type]


def _accept(orders: list[NewOrder]) -> list[IntakeResult | Exception]:
    with unit_of_work() as session:
        return accept_orders(session, orders, now=datetime.now(UTC), redrive_after_s=30,
                             channel="http")  # fmt: skip


@contextmanager
def _statements() -> Iterator[list[str]]:
    seen: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        seen.append(statement)

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)


def _stored() -> tuple[int, int, int]:
    with unit_of_work() as s:
        return (
            s.scalar(select(func.count()).select_from(Order)) or 0,
            s.scalar(select(func.count()).select_from(OrderLine)) or 0,
            s.scalar(select(func.count()).select_from(OrderEvent)) or 0,
        )


def test_the_statements_do_not_grow_with_the_batch(db):
    with _statements() as small:
        assert all(isinstance(r, IntakeResult) for r in _accept([_order(i) for i in range(2)]))
    with _statements() as big:
        assert all(isinstance(r, IntakeResult) for r in _accept([_order(i) for i in range(2, 42)]))
    assert len(big) == len(small)
    assert _stored() == (42, 84, 42)  # every order with its two lines and its RECEIVED event


def test_each_order_gets_its_own_answer(db):
    (first,) = _accept([_order(1)])
    assert isinstance(first, IntakeResult)
    results = _accept([
        _order(2),
        _order(1),  # a repeat of a stored order
        _order(1, body_hash="other"),  # the same key, another body
        _order(3, user_id=424242),  # no such user
        _order(4), _order(4),  # the same key twice in this batch
    ])  # fmt: skip
    assert isinstance(results[0], IntakeResult) and results[0].created
    assert results[1] == IntakeResult(first.order_id, False, "RECEIVED")
    assert isinstance(results[2], ConflictError)
    assert isinstance(results[3], ValidationError) and results[3].field == "user_id"
    assert isinstance(results[4], IntakeResult) and results[4].created
    assert results[5] == IntakeResult(results[4].order_id, False, "RECEIVED")
    assert _stored() == (3, 6, 3)


def test_a_value_the_database_refuses_fails_alone(db):
    """The batch statement fails (a currency longer than its column): the orders are stored one
    by one, each in its own savepoint, and only the one at fault fails."""
    results = _accept([_order(1), _order(2, currency="NOTACURRENCY"), _order(3)])
    assert isinstance(results[0], IntakeResult) and results[0].created
    assert isinstance(results[1], DBAPIError)
    assert isinstance(results[2], IntakeResult) and results[2].created
    assert _stored() == (2, 4, 2)


def test_a_batch_announces_each_new_order_to_its_source(db):
    """One RECEIVED callback row per created order of a source with an endpoint; none for a
    repeat, none for a source without one."""
    from models import CallbackDelivery
    from tests.integration.callbacks_support import register

    register("web", "http://127.0.0.1:9/hooks")  # loopback: allow-listed for the tests, no DNS
    (stored,) = _accept([_order(1)])
    results = _accept([_order(1), _order(2), _order(3), _order(4, source="pos")])
    with unit_of_work() as s:
        rows = s.execute(select(CallbackDelivery.order_id, CallbackDelivery.payload)).all()
    assert sorted(r.order_id for r in rows) == sorted(
        [stored.order_id, results[1].order_id, results[2].order_id]  # type: ignore[union-attr]
    )
    assert {r.payload["order"]["status"] for r in rows} == {"RECEIVED"}
