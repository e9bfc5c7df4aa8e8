"""The reservation stage and the sweepers on real PostgreSQL, with real concurrent transactions."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy.exc
from sqlalchemy import text

from domain.allocation import DEFAULT_POLICY, Policy, Strategy, parse_warehouses
from producers.intake import accept_message
from services.reservation import reserve_order
from services.sweeper import sweep
from services.unit_of_work import unit_of_work
from tests.conftest import order_message
from tests.helpers import assert_stock_consistent, reservations_per_order, status_counts, stock_of


def now():
    return datetime.now(UTC)


def reserve(order_id, window=600, policy: Policy = DEFAULT_POLICY):
    with unit_of_work() as s:
        return reserve_order(s, order_id, now=now(), payment_window_s=window, policy=policy)


def reserve_in_threads(
    ids: list[str], threads: int = 8, reverse_odd: bool = False, policy: Policy = DEFAULT_POLICY
) -> list:
    """Reserve ``ids`` from ``threads`` threads that start together (every ``threads``-th id
    each) under ``policy``; returns every error raised, deadlocks included (a test expects
    none)."""
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def run(chunk: list[str]) -> None:
        barrier.wait()
        for oid in reversed(chunk) if reverse_odd and len(chunk) % 2 else chunk:
            try:
                reserve(oid, policy=policy)
            except BaseException as exc:  # any error fails the calling test
                errors.append(exc)

    workers = [threading.Thread(target=run, args=(ids[i::threads],)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return errors


def test_all_lines_or_none(catalog):
    catalog({"A": 5, "B": 1})
    ok = accept_message(order_message([("A", 2), ("B", 1)]), channel="test").order_id
    short = accept_message(order_message([("A", 2), ("B", 1)]), channel="test").order_id
    assert reserve(ok).status == "RESERVED"
    out = reserve(short)
    assert (out.status, out.reason) == ("REJECTED", "out_of_stock")
    assert stock_of("A") == (5, 2) and stock_of("B") == (1, 1)  # nothing held for the reject
    assert_stock_consistent()


def test_reject_reasons(catalog):
    catalog({"A": 5})
    from domain.money import Money
    from services.catalog import upsert_product

    with unit_of_work() as s:
        upsert_product(s, "OLD", "old", Money(100, "CNY"), active=False)
        upsert_product(s, "USD-1", "usd", Money(100, "USD"))
    cases = {"NOPE": "unknown_sku", "OLD": "inactive_product", "USD-1": "currency_mismatch"}
    for sku, reason in cases.items():
        oid = accept_message(order_message(sku), channel="test").order_id
        assert reserve(oid).reason == reason


def test_an_order_discount_is_charged_and_split_over_the_lines(catalog):
    """The discount comes off the catalog total and each line stores its share (largest
    remainder, ties to the larger line): 3 x 1000 + 1 x 1000 less 1001 = 2999, split 2249 + 750.
    A discount of the whole total or more is refused: nothing would be charged."""
    from models import Order

    catalog({"A": 10, "B": 10}, price=1000)
    msg = {**order_message([("A", 3), ("B", 1)]), "discount": 1001}
    oid = accept_message(msg, channel="test").order_id
    assert reserve(oid).status == "RESERVED"
    with unit_of_work() as s:
        order = s.get_one(Order, oid)
        assert (order.discount_amount, order.total_amount) == (1001, 2999)
        assert [(ln.sku, ln.charged_amount) for ln in order.lines] == [("A", 2249), ("B", 750)]
    plain = accept_message(order_message("A", 1), channel="test").order_id
    assert reserve(plain).status == "RESERVED"
    with unit_of_work() as s:  # no discount: nothing stored, the line is charged its list amount
        order = s.get_one(Order, plain)
        assert (order.total_amount, order.lines[0].charged_amount) == (1000, None)
    free = accept_message({**order_message("B", 1), "discount": 1000}, channel="test").order_id
    out = reserve(free)
    assert (out.status, out.reason) == ("REJECTED", "discount_too_large")
    assert stock_of("B") == (10, 1)  # only the first order's B is held
    assert_stock_consistent()


def test_duplicate_task_reserves_once(catalog):
    catalog({"A": 5})
    oid = accept_message(order_message("A", 2), channel="test").order_id
    first, second = reserve(oid), reserve(oid)
    assert first.changed and not second.changed and second.status == "RESERVED"
    assert stock_of("A") == (5, 2)
    assert reservations_per_order() == {oid: 1}


def test_concurrent_multi_sku_no_deadlock_and_ledger_matches(catalog):
    """8 threads reserve random multi-SKU orders at once: no deadlock error reaches a caller."""
    skus = [f"S{i}" for i in range(6)]
    catalog(dict.fromkeys(skus, 40))
    rng = random.Random(7)
    ids = [
        accept_message(
            order_message([(s, rng.randint(1, 4)) for s in rng.sample(skus, rng.randint(1, 4))]),
            channel="test",
        ).order_id
        for _ in range(160)
    ]
    # Odd-sized chunks go in reverse, so threads meet the same orders from both ends.
    assert reserve_in_threads(ids, reverse_odd=True) == []
    counts = status_counts()
    assert counts.get("RECEIVED", 0) == 0
    assert counts["RESERVED"] + counts.get("REJECTED", 0) == 160
    assert_stock_consistent()


def test_hot_sku_eight_threads_200_orders_stock_50(catalog):
    """200 one-unit orders for one SKU with 50 in stock, reserved by 8 threads at once on
    PostgreSQL: exactly 50 reserved, 150 rejected out of stock, never an oversell."""
    catalog({"HOT": 50})
    ids = [accept_message(order_message("HOT"), channel="test").order_id for _ in range(200)]
    assert reserve_in_threads(ids) == []
    assert status_counts() == {"RESERVED": 50, "REJECTED": 150}
    assert stock_of("HOT") == (50, 50)
    assert set(reservations_per_order().values()) == {1}
    assert_stock_consistent()


@pytest.mark.parametrize(
    ("strategy", "near_held", "far_held"),
    # priority: near's 5 go first (the third order splits 1 + 1), then far until 1 is left.
    # fewest_parcels: each order from the one warehouse with the most free; far runs dry
    # while near still has 1, which no order of 2 can use alone.
    [("priority", 5, 25), ("fewest_parcels", 4, 26)],
)
def test_one_warehouse_runs_out_while_another_has_stock_never_oversold(
    catalog, strategy, near_held, far_held
):
    """40 orders of HOT x2 from 8 threads at once; HOT is 5 in near (priority 1) and 26 in
    far (priority 2): one warehouse runs dry while the other still has stock. Each reservation
    sees what the ones before it left (its stock rows locked first), so none is oversold: 15
    reserved (30 of 31 units), 25 rejected out of stock, each warehouse held as the strategy
    says, each reserved order holding exactly its 2 units."""
    catalog({"HOT": 5}, warehouse="near")
    catalog({"HOT": 26}, warehouse="far")
    policy = Policy(Strategy(strategy), parse_warehouses("near:1,far:2"))
    ids = [accept_message(order_message("HOT", 2), channel="test").order_id for _ in range(40)]
    assert reserve_in_threads(ids, policy=policy) == []
    assert status_counts() == {"RESERVED": 15, "REJECTED": 25}
    assert stock_of("HOT", "near") == (5, near_held)
    assert stock_of("HOT", "far") == (26, far_held)
    with unit_of_work() as s:
        per_order = s.execute(text(
            "SELECT o.status, coalesce(sum(r.quantity), 0) FROM orders o "
            "LEFT JOIN reservations r ON r.order_id = o.id AND r.status = 'ACTIVE' "
            "GROUP BY o.id, o.status")).all()  # fmt: skip
    assert sorted({tuple(r) for r in per_order}) == [("REJECTED", 0), ("RESERVED", 2)]
    assert_stock_consistent()


def test_two_sweepers_expire_each_order_once(catalog):
    catalog({"A": 200})
    ids = [accept_message(order_message("A", 1), channel="test").order_id for _ in range(100)]
    for oid in ids:
        reserve(oid, window=1)
    assert stock_of("A") == (200, 100)
    later = now() + timedelta(seconds=5)
    results: list[list[str]] = []

    def run_sweeper():
        while True:
            with unit_of_work() as s:
                got = sweep(s, now=later, redrive_after_s=30, limit=7).expired
            if not got:
                return
            results.append(got)

    threads = [threading.Thread(target=run_sweeper) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expired = [oid for batch in results for oid in batch]
    assert sorted(expired) == sorted(ids)  # each exactly once
    assert stock_of("A") == (200, 0)
    assert status_counts() == {"EXPIRED": 100}
    assert_stock_consistent()


def test_stalled_orders_are_redriven_and_leased(catalog):
    catalog({"A": 5})
    oid = accept_message(order_message("A"), channel="test").order_id
    with unit_of_work() as s:
        assert sweep(s, now=now(), redrive_after_s=30, limit=10).followups == []
    later = now() + timedelta(minutes=5)
    with unit_of_work() as s:
        got = sweep(s, now=later, redrive_after_s=30, limit=10)
    # RECEIVED orders go out in orders.reserve_batch chunks, not one followup each
    assert (got.reserve, got.followups) == ([oid], [])
    with unit_of_work() as s:  # deadline moved forward: not claimed again right away
        assert sweep(s, now=later, redrive_after_s=30, limit=10).reserve == []


def test_reserved_order_without_payment_is_redriven_to_payment_stage(catalog):
    catalog({"A": 5})
    oid = accept_message(order_message("A"), channel="test").order_id
    reserve(oid, window=600)
    with unit_of_work() as s:
        got = sweep(s, now=now() + timedelta(seconds=60), redrive_after_s=30, limit=10)
    assert [(f.task, f.arg) for f in got.followups] == [("payments.create", oid)]
    assert got.expired == []


def _dead_letter(order_id: str, task: str) -> int:
    from services import dead_letters

    with unit_of_work() as s:
        return dead_letters.record(
            s, task_name=task, task_id="t-1", args=[order_id], kwargs={}, queue="orders",
            error=RuntimeError("keeps failing"), attempts=4, order_id=order_id,
        )  # fmt: skip


def test_a_dead_lettered_task_is_held_not_resent_until_an_operator_acts(catalog):
    """The sweeper does not re-send a task that waits in the dead-letter queue for the order
    (it would fail through every retry again and add a dead letter each time); replaying or
    discarding the dead letter lets it re-drive again."""
    from services import dead_letters

    catalog({"A": 5})
    oid = accept_message(order_message("A"), channel="test").order_id
    dl_id = _dead_letter(oid, "orders.process")
    later = now() + timedelta(minutes=5)
    with unit_of_work() as s:
        held = sweep(s, now=later, redrive_after_s=30, limit=10)
    assert held.followups == [] and held.reserve == [] and held.held == [oid]
    with unit_of_work() as s:  # the lease moved on: not claimed again on the next tick
        assert sweep(s, now=later, redrive_after_s=30, limit=10).held == []
    with unit_of_work() as s:
        dead_letters.discard(s, dl_id, now=later, actor="test")
    with unit_of_work() as s:
        got = sweep(s, now=later + timedelta(minutes=1), redrive_after_s=30, limit=10)
    assert got.reserve == [oid]


def test_a_dead_lettered_payment_create_still_expires_at_the_deadline(catalog):
    catalog({"A": 5})
    oid = accept_message(order_message("A", 2), channel="test").order_id
    reserve(oid, window=600)
    _dead_letter(oid, "payments.create")
    with unit_of_work() as s:  # before the payment deadline: held
        before = sweep(s, now=now() + timedelta(seconds=60), redrive_after_s=30, limit=10)
    assert before.followups == [] and before.held == [oid]
    with unit_of_work() as s:  # past it: the hold does not keep the stock
        after = sweep(s, now=now() + timedelta(seconds=700), redrive_after_s=30, limit=10)
    assert after.expired == [oid]
    assert status_counts() == {"EXPIRED": 1} and stock_of("A") == (5, 0)
    assert_stock_consistent()


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE stock_movements SET delta_reserved = 0 WHERE kind = 'reserve'",
        "DELETE FROM stock_movements WHERE kind = 'reserve'",
    ],
    ids=["update", "delete"],
)
def test_ledger_refuses_update_and_delete(catalog, statement):
    """Migration 0007: the database keeps stock_movements append-only, whoever asks."""
    catalog({"A": 5})
    reserve(accept_message(order_message("A", 2), channel="test").order_id)
    refused = pytest.raises(sqlalchemy.exc.IntegrityError, match="stock_movements is append-only")
    with refused, unit_of_work() as s:
        s.execute(text(statement))
    with unit_of_work() as s:
        rows = s.execute(text("SELECT kind, delta_reserved FROM stock_movements ORDER BY id"))
        assert [tuple(r) for r in rows] == [("receive", 0), ("reserve", 2)]
    assert_stock_consistent()


def test_database_check_refuses_an_oversell_the_application_did_not_stop(catalog):
    """CHECK (0 <= reserved AND reserved <= on_hand) is the last guard: raw SQL that skips the
    application's allocation still cannot reserve more than is on hand, or go below zero."""
    catalog({"A": 5})
    for statement in (
        "UPDATE stock SET reserved = reserved + 6 WHERE sku = 'A'",
        "UPDATE stock SET reserved = -1 WHERE sku = 'A'",
        "UPDATE stock SET on_hand = 0, reserved = 1 WHERE sku = 'A'",
    ):
        refused = pytest.raises(sqlalchemy.exc.IntegrityError, match="reserved_within_on_hand")
        with refused, unit_of_work() as s:
            s.execute(text(statement))
    assert stock_of("A") == (5, 0)
