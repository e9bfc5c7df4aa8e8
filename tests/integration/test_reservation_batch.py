"""reserve_batch on real PostgreSQL: many orders in one transaction, a savepoint each, decided
exactly as reserve_order decides, never deadlocking another batch or a single reservation."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime

from sqlalchemy import text

from producers.intake import accept_message
from services.reservation import reserve_batch, reserve_order
from services.unit_of_work import unit_of_work
from tests.conftest import order_message
from tests.helpers import assert_stock_consistent, reservations_per_order, status_counts, stock_of


def batch(ids: list[str], window: int = 600):
    with unit_of_work() as s:
        return reserve_batch(s, ids, now=datetime.now(UTC), payment_window_s=window)


def new_orders(n: int, lines) -> list[str]:
    return [accept_message(order_message(lines), channel="test").order_id for _ in range(n)]


def statuses(ids: list[str]) -> list[str]:
    with unit_of_work() as s:
        rows = dict(s.execute(text("SELECT id, status FROM orders WHERE id = ANY(:ids)"),
                              {"ids": ids}).all())  # fmt: skip
    return [rows[i] for i in ids]


def test_stock_runs_out_mid_batch_first_come_first_served(catalog):
    """50 two-line orders share a hot SKU with stock for 30: the first 30 *in the order given*
    (not id order) are reserved, the other 20 rejected out of stock holding nothing."""
    catalog({"HOT": 30, "B": 500})
    ids = new_orders(50, [("HOT", 1), ("B", 2)])
    random.Random(3).shuffle(ids)
    outcomes = batch(ids)
    assert [o.order_id for o in outcomes] == ids
    assert [o.status for o in outcomes] == ["RESERVED"] * 30 + ["REJECTED"] * 20
    assert {o.reason for o in outcomes[30:]} == {"out_of_stock"}
    assert all(o.changed and o.error is None for o in outcomes)
    assert statuses(ids) == [o.status for o in outcomes]  # committed
    assert stock_of("HOT") == (30, 30) and stock_of("B") == (500, 60)  # all lines or none
    assert set(reservations_per_order().values()) == {2}
    assert_stock_consistent()


def test_batch_decides_like_the_single_path(catalog):
    """Reject reasons and split allocation across warehouses, as reserve_order decides them."""
    catalog({"A": 3})
    catalog({"A": 2}, warehouse="east")
    catalog({"USD-1": 5}, currency="USD")
    ids = [
        accept_message(order_message(lines), channel="test").order_id
        for lines in ([("A", 4)], [("NOPE", 1)], [("USD-1", 1)], [("A", 1)], [("A", 1)])
    ]
    outcomes = batch(ids)
    assert [(o.status, o.reason) for o in outcomes] == [
        ("RESERVED", None), ("REJECTED", "unknown_sku"), ("REJECTED", "currency_mismatch"),
        ("RESERVED", None), ("REJECTED", "out_of_stock"),
    ]  # fmt: skip
    assert stock_of("A") == (3, 3) and stock_of("A", "east") == (2, 2)
    assert_stock_consistent()


def test_duplicates_in_a_batch_and_across_batches_are_no_ops(catalog):
    catalog({"A": 10})
    a, b = new_orders(2, [("A", 2)])
    outcomes = batch([a, a, b, a])
    assert [(o.order_id, o.status, o.changed) for o in outcomes] == [
        (a, "RESERVED", True), (b, "RESERVED", True)
    ]  # fmt: skip
    again = batch([b, a])
    assert [(o.status, o.changed) for o in again] == [("RESERVED", False)] * 2
    assert stock_of("A") == (10, 4)
    assert reservations_per_order() == {a: 1, b: 1}
    assert_stock_consistent()


def test_an_order_already_reserved_or_rejected_is_skipped(catalog):
    catalog({"A": 2})
    done, rejected, fresh = new_orders(3, [("A", 2)])
    with unit_of_work() as s:
        assert reserve_order(s, done, now=datetime.now(UTC), payment_window_s=600).changed
    with unit_of_work() as s:
        s.execute(text("UPDATE orders SET status = 'REJECTED', reason = 'x' WHERE id = :id"),
                  {"id": rejected})  # fmt: skip
    outcomes = batch([fresh, rejected, done])
    assert [(o.status, o.changed, o.reason) for o in outcomes] == [
        ("REJECTED", True, "out_of_stock"), ("REJECTED", False, "x"), ("RESERVED", False, None)
    ]  # fmt: skip
    assert stock_of("A") == (2, 2) and reservations_per_order() == {done: 1}
    assert_stock_consistent()


_FAIL_ONE = """
CREATE FUNCTION test_fail_one() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.order_id = '{order_id}' THEN RAISE EXCEPTION 'planted failure'; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER test_fail_one BEFORE INSERT ON reservations
  FOR EACH ROW EXECUTE FUNCTION test_fail_one();
"""


def test_a_failing_order_rolls_back_alone(catalog):
    """A planted database error in one order's savepoint (after its stock and ledger rows were
    written): that order is left RECEIVED with the error, holding nothing; the stock it would
    have taken goes to the next order; the rest of the batch commits. A missing id is an error
    outcome too, not a failure of the batch."""
    catalog({"A": 2})
    first, failing, third = new_orders(3, [("A", 1)])
    with unit_of_work() as s:
        s.execute(text(_FAIL_ONE.format(order_id=failing)))
    try:
        outcomes = batch([first, failing, "no-such-order", third])
    finally:
        with unit_of_work() as s:
            s.execute(text("DROP TRIGGER test_fail_one ON reservations; "
                           "DROP FUNCTION test_fail_one()"))  # fmt: skip
    assert [(o.status, o.changed) for o in outcomes] == [
        ("RESERVED", True), ("RECEIVED", False), ("", False), ("RESERVED", True)
    ]  # fmt: skip
    assert "planted failure" in str(outcomes[1].error)
    assert type(outcomes[2].error).__name__ == "NotFound"
    assert statuses([first, failing, third]) == ["RESERVED", "RECEIVED", "RESERVED"]
    assert stock_of("A") == (2, 2) and reservations_per_order() == {first: 1, third: 1}
    with unit_of_work() as s:  # nothing of the failed savepoint survived
        events = s.execute(text("SELECT count(*) FROM order_events WHERE order_id = :id "
                                "AND kind = 'transition' AND to_status <> 'RECEIVED'"),
                           {"id": failing}).scalar_one()  # fmt: skip
    assert events == 0
    assert_stock_consistent()
    retried = batch([failing])  # the retry decides it: the stock went to the others
    assert (retried[0].status, retried[0].reason) == ("REJECTED", "out_of_stock")


def test_concurrent_batches_in_reverse_order_and_singles_never_deadlock(catalog):
    """Two batches over the same multi-SKU orders, one given in reverse order, plus a thread
    of single reservations over the same SKUs, all at once, several rounds: no deadlock, each
    order reserved at most once, stock equals the ledger."""
    skus = [f"S{i}" for i in range(6)]
    catalog(dict.fromkeys(skus, 60))
    rng = random.Random(11)
    errors: list[BaseException] = []
    all_ids: list[str] = []
    for _ in range(4):
        ids = [accept_message(order_message(
            [(s, rng.randint(1, 3)) for s in rng.sample(skus, rng.randint(2, 4))]),
            channel="test").order_id for _ in range(45)]  # fmt: skip
        all_ids += ids
        shared, singles = ids[:40], ids[40:]
        barrier = threading.Barrier(3)

        def run(fn, arg, barrier=barrier) -> None:
            barrier.wait()
            try:
                fn(arg)
            except BaseException as exc:  # any error (a deadlock) fails the test below
                errors.append(exc)

        def one_by_one(chunk: list[str]) -> None:
            for oid in reversed(chunk):
                with unit_of_work() as s:
                    reserve_order(s, oid, now=datetime.now(UTC), payment_window_s=600)

        work = [(batch, shared), (batch, shared[::-1] + singles),
                (one_by_one, singles + shared[::7])]  # fmt: skip
        threads = [threading.Thread(target=run, args=w) for w in work]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    counts = status_counts()
    assert counts.get("RECEIVED", 0) == 0
    assert counts["RESERVED"] + counts.get("REJECTED", 0) == len(all_ids)
    assert len(reservations_per_order()) == counts["RESERVED"]
    with unit_of_work() as s:
        doubled = s.execute(text(
            "SELECT order_id, sku FROM stock_movements WHERE kind = 'reserve' "
            "GROUP BY order_id, sku HAVING count(*) > 1")).all()  # fmt: skip
    assert doubled == []
    assert_stock_consistent()
