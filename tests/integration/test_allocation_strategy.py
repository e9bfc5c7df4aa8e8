"""ALLOCATION_STRATEGY and WAREHOUSES on real PostgreSQL: the reservation stage (the task's own
unit of work and the policy it builds from settings) holds stock where the strategy says, for
the region stored in the order's shipping address."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import text

from producers.intake import accept_message
from services.unit_of_work import unit_of_work
from settings import get_settings
from tests.conftest import order_message
from tests.helpers import assert_stock_consistent, stock_of


@pytest.fixture
def configure(db: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Set ALLOCATION_STRATEGY / WAREHOUSES for this test (settings re-read; undone after)."""

    def set_env(strategy: str, warehouses: str) -> None:
        monkeypatch.setenv("ALLOCATION_STRATEGY", strategy)
        monkeypatch.setenv("WAREHOUSES", warehouses)
        get_settings.cache_clear()

    yield set_env
    monkeypatch.delenv("ALLOCATION_STRATEGY", raising=False)
    monkeypatch.delenv("WAREHOUSES", raising=False)
    get_settings.cache_clear()


def held(order_id: str) -> list[tuple[str, str, int]]:
    with unit_of_work() as s:
        rows = s.execute(
            text("SELECT sku, warehouse, quantity FROM reservations WHERE order_id = :id "
                 "AND status = 'ACTIVE' ORDER BY sku, warehouse"), {"id": order_id},
        )  # fmt: skip
        return [tuple(r) for r in rows]


def new_order(lines: list[tuple[str, int]], region: str | None = None) -> str:
    message = order_message(lines)
    if region is not None:
        message["shipping_address"]["region"] = region
    return accept_message(message, channel="test").order_id


def strategy_event(order_id: str) -> str:
    with unit_of_work() as s:
        return s.execute(
            text("SELECT detail->>'allocation_strategy' FROM order_events WHERE order_id = :id "
                 "AND to_status = 'RESERVED'"), {"id": order_id},
        ).scalar_one()  # fmt: skip


@pytest.mark.parametrize("strategy", ["fewest_parcels", "priority"])
def test_priority_holds_stock_in_the_priority_warehouse(catalog, configure, strategy):
    """backup can fill the whole order, preferred only part of it: fewest_parcels takes it all
    from backup (one parcel), priority takes what preferred has first."""
    from tasks.orders import _reserve

    configure(strategy, "backup:2,preferred:1")
    catalog({"A": 5, "B": 5}, warehouse="backup")
    catalog({"A": 1}, warehouse="preferred")
    oid = new_order([("A", 2), ("B", 1)])
    assert _reserve(oid).status == "RESERVED"
    if strategy == "priority":
        assert held(oid) == [("A", "backup", 1), ("A", "preferred", 1), ("B", "backup", 1)]
        assert stock_of("A", "preferred") == (1, 1)
    else:
        assert held(oid) == [("A", "backup", 2), ("B", "backup", 1)]
        assert stock_of("A", "preferred") == (1, 0)
    assert strategy_event(oid) == strategy
    assert_stock_consistent()


def test_nearest_reads_the_region_of_the_stored_shipping_address_in_a_batch(catalog, configure):
    """The batch path: each order is served from the warehouse in its own shipping region;
    an order with no region gets fewest_parcels' choice (the most units free)."""
    from tasks.orders import _reserve_many

    configure("nearest", "hz:1:Zhejiang,bj:1:Beijing")
    catalog({"A": 3}, warehouse="hz")
    catalog({"A": 9}, warehouse="bj")
    to_hz, to_bj, unknown = (
        new_order([("A", 1)], "zhejiang"),
        new_order([("A", 1)], "Beijing"),
        new_order([("A", 1)]),
    )
    assert [o.status for o in _reserve_many([to_hz, to_bj, unknown])] == ["RESERVED"] * 3
    assert held(to_hz) == [("A", "hz", 1)]
    assert held(to_bj) == [("A", "bj", 1)] and held(unknown) == [("A", "bj", 1)]
    assert stock_of("A", "hz") == (3, 1) and stock_of("A", "bj") == (9, 2)
    assert_stock_consistent()
