"""Stock administration against real PostgreSQL: receive, adjust, move through the ledger; 1,000
concurrent adjustments, moves and reservations keep counters equal to the ledger; the drift
repair proposes, and writes only when asked."""

from __future__ import annotations

import os
import queue
import random
import re
import subprocess
import sys
import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from domain.errors import NotFound, ValidationError
from models import StockMovement
from producers.intake import accept_message
from services import shipping, stock_admin
from services.catalog import ON_HAND_MAX
from services.queries import stock_drift
from services.reservation import reserve_order
from services.unit_of_work import unit_of_work
from tests.conftest import order_message
from tests.helpers import assert_stock_consistent, status_counts, stock_of


def ledger_kinds() -> list[str]:
    with unit_of_work() as s:
        return list(s.scalars(select(StockMovement.kind).order_by(StockMovement.id)))


def reserve(order_id: str) -> str:
    with unit_of_work() as s:
        return reserve_order(s, order_id, now=datetime.now(UTC), payment_window_s=600).status


def test_receive_adjust_move_write_ledger_rows(catalog):
    catalog({"A": 0})
    with unit_of_work() as s:
        assert stock_admin.receive(s, "A", "main", 10, actor="t", reason="PO-7").on_hand == 10
        assert stock_admin.adjust(s, "A", "main", -3, reason="water damage", actor="t").on_hand == 7
        src, dst = stock_admin.move(s, "A", "main", "east", 4, actor="t")
    assert (src.on_hand, dst.on_hand) == (3, 4)
    assert ledger_kinds() == ["receive", "adjust", "move", "move"]
    with unit_of_work() as s:
        reasons = list(s.scalars(select(StockMovement.reason).order_by(StockMovement.id)))
    assert reasons == ["PO-7", "water damage", "to east", "from main"]
    assert_stock_consistent()


def test_adjust_and_move_never_touch_reserved_units(catalog):
    catalog({"A": 5})
    assert reserve(accept_message(order_message("A", 4), channel="test").order_id) == "RESERVED"
    with unit_of_work() as s, pytest.raises(ValidationError) as info:
        stock_admin.adjust(s, "A", "main", -2, reason="count", actor="t")
    assert info.value.field == "delta" and "at most 1" in info.value.reason
    with unit_of_work() as s, pytest.raises(ValidationError) as moved:
        stock_admin.move(s, "A", "main", "east", 2, actor="t")
    assert moved.value.field == "quantity"
    with unit_of_work() as s, pytest.raises(NotFound):
        stock_admin.adjust(s, "A", "west", 1, reason="found", actor="t")
    assert stock_of("A") == (5, 4)
    assert ledger_kinds() == ["receive", "reserve"]  # the refusals wrote nothing
    assert_stock_consistent()


def test_on_hand_past_the_integer_column_is_refused_with_a_reason(catalog):
    # Each request is within MAX_QUANTITY; their sum is not within stock.on_hand's INTEGER.
    catalog({"A": 1})
    with unit_of_work() as s:
        s.execute(text("UPDATE stock SET on_hand = :n WHERE sku = 'A'"), {"n": ON_HAND_MAX - 5})
        s.execute(text("INSERT INTO stock (sku, warehouse, on_hand, reserved) VALUES "
                       "('A', 'east', :n, 0)"), {"n": ON_HAND_MAX - 1})  # fmt: skip
    refusals = {
        "quantity": lambda s: stock_admin.receive(s, "A", "main", 6, actor="t"),
        "delta": lambda s: stock_admin.adjust(s, "A", "main", 6, reason="count", actor="t"),
    }
    refusals["quantity "] = lambda s: stock_admin.move(s, "A", "main", "east", 2, actor="t")
    for field, call in refusals.items():
        with unit_of_work() as s, pytest.raises(ValidationError) as info:
            call(s)
        assert info.value.field == field.strip() and "at most 2147483647" in info.value.reason
    with unit_of_work() as s:
        assert (
            stock_admin.adjust(s, "A", "main", 5, reason="count", actor="t").on_hand == ON_HAND_MAX
        )
    assert stock_of("A") == (ON_HAND_MAX, 0) and stock_of("A", "east") == (ON_HAND_MAX - 1, 0)


@pytest.mark.parametrize("code", ["main\n", "main\r", " main", "", "m" * 65, "ma in"])
def test_a_warehouse_code_must_be_the_whole_value(catalog, code):
    catalog({"A": 5})
    with unit_of_work() as s, pytest.raises(ValidationError) as info:
        stock_admin.receive(s, "A", code, 1, actor="t")
    assert info.value.field == "warehouse"
    assert stock_of("A") == (5, 0)


@pytest.mark.parametrize(
    ("field", "carrier", "waybill"),
    [("carrier", "zhongtong\n", "ZT5550000009"), ("waybill", "zhongtong", "ZT5550000009\n")],
)
def test_a_waybill_code_must_be_the_whole_value(db, field, carrier, waybill):
    # The API's model refuses these too; the CLI reaches the service with what was typed.
    with unit_of_work() as s, pytest.raises(ValidationError) as info:
        shipping.register_waybill(s, "no-such-order", carrier, waybill, now=datetime.now(UTC),
                                  actor="t", first_poll_s=1)  # fmt: skip
    assert info.value.field == field


def test_thousand_concurrent_adjustments_moves_and_reservations(catalog):
    """500 reservations and 500 stock changes (adjust up/down, move, receive) from 8 threads."""
    skus = [f"S{i}" for i in range(4)]
    catalog(dict.fromkeys(skus, 150))
    with unit_of_work() as s:
        for sku in skus:
            stock_admin.receive(s, sku, "east", 50, actor="setup")
    rng = random.Random(6)
    ops: list[tuple] = []
    for _ in range(500):
        lines = [(sku, rng.randint(1, 3)) for sku in rng.sample(skus, rng.randint(1, 2))]
        ops.append(("reserve", accept_message(order_message(lines), channel="test").order_id))
    for _ in range(500):
        sku, wh = rng.choice(skus), rng.choice(["main", "east"])
        kind = rng.choice(["adjust", "adjust", "move", "receive"])
        if kind == "adjust":
            ops.append(("adjust", sku, wh, rng.choice([-1, 1]) * rng.randint(1, 6)))
        elif kind == "move":
            ops.append(("move", sku, wh, "east" if wh == "main" else "main", rng.randint(1, 4)))
        else:
            ops.append(("receive", sku, wh, rng.randint(1, 5)))
    rng.shuffle(ops)
    work: queue.Queue[tuple] = queue.Queue()
    for op in ops:
        work.put(op)
    outcomes: Counter[str] = Counter()
    applied: Counter[str] = Counter()  # sku -> net units added by adjust/receive
    unexpected: list[BaseException] = []
    guard = threading.Lock()

    def run_one(op: tuple) -> str:
        with unit_of_work() as s:
            if op[0] == "reserve":
                return reserve_order(s, op[1], now=datetime.now(UTC), payment_window_s=600).status
            if op[0] == "adjust":
                stock_admin.adjust(s, op[1], op[2], op[3], reason="stock-take", actor="t")
            elif op[0] == "move":
                stock_admin.move(s, op[1], op[2], op[3], op[4], actor="t")
            else:
                stock_admin.receive(s, op[1], op[2], op[3], actor="t")
        if op[0] in ("adjust", "receive"):
            with guard:
                applied[op[1]] += op[3]
        return "applied"

    def worker() -> None:
        while True:
            try:
                op = work.get_nowait()
            except queue.Empty:
                return
            try:
                result = run_one(op)
            except ValidationError:
                result = "refused"  # not enough available units: an expected answer
            except BaseException as exc:  # deadlocks, CHECK violations: all fail the test
                with guard:
                    unexpected.append(exc)
                continue
            with guard:
                outcomes[f"{op[0]}:{result}"] += 1

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert unexpected == []
    assert sum(outcomes.values()) == 1000
    assert outcomes["reserve:RESERVED"] > 100 and outcomes["adjust:applied"] > 100
    counts = status_counts()
    assert counts.get("RECEIVED", 0) == 0
    assert counts["RESERVED"] + counts.get("REJECTED", 0) == 500
    with unit_of_work() as s:
        assert stock_drift(s) == []
        negative = s.execute(
            text("SELECT count(*) FROM stock WHERE on_hand < 0 OR reserved < 0 "
                 "OR reserved > on_hand")
        ).scalar_one()  # fmt: skip
        assert negative == 0
        totals = dict(s.execute(text("SELECT sku, sum(on_hand) FROM stock GROUP BY sku")).all())
    for sku in skus:  # moves only shift units; receipts and adjustments add up exactly
        assert totals[sku] == 200 + applied[sku], sku
    assert_stock_consistent()  # and reserved equals the active reservations
    with unit_of_work() as s:
        assert stock_admin.propose_repairs(s) == []


# --- drift repair ------------------------------------------------------------------------------


def corrupt(sql: str) -> None:
    with unit_of_work() as s:
        s.execute(text(sql))


def ledger_rows() -> int:
    with unit_of_work() as s:
        return s.scalar(select(func.count()).select_from(StockMovement))


def test_repair_is_proposed_not_applied_until_asked(catalog):
    catalog({"A": 7})
    reserve(accept_message(order_message("A", 2), channel="test").order_id)
    corrupt("UPDATE stock SET on_hand = 9 WHERE sku = 'A'")  # behind the ledger's back
    before = ledger_rows()
    with unit_of_work() as s:
        [p] = stock_admin.propose_repairs(s)
    assert (p.counter_on_hand, p.ledger_on_hand, p.active_reserved) == (9, 7, 2)
    assert (p.delta_on_hand, p.delta_reserved, p.target_on_hand, p.target_reserved) == (2, 0, 9, 2)
    assert p.blocked is None
    assert ledger_rows() == before and stock_of("A") == (9, 2)  # nothing written

    with unit_of_work() as s:
        [done] = stock_admin.apply_repairs(s, actor="t")
    assert done == p
    assert stock_of("A") == (9, 2)
    assert ledger_kinds()[-1] == "repair"
    assert_stock_consistent()


def test_repair_trusting_the_ledger_fixes_the_counter(catalog):
    catalog({"A": 7})
    corrupt("UPDATE stock SET on_hand = 9 WHERE sku = 'A'")
    with unit_of_work() as s:
        [p] = stock_admin.apply_repairs(s, trust="ledger", actor="t")
    assert (p.delta_on_hand, p.target_on_hand) == (0, 7)
    assert stock_of("A") == (7, 0)
    assert ledger_kinds() == ["receive", "repair"]  # the counter fix is on the record too
    assert_stock_consistent()


def test_reserved_counter_follows_active_reservations(catalog):
    catalog({"A": 7})
    reserve(accept_message(order_message("A", 3), channel="test").order_id)
    corrupt("UPDATE stock SET reserved = 0 WHERE sku = 'A'")
    with unit_of_work() as s:
        [p] = stock_admin.apply_repairs(s, actor="t")
    assert (p.counter_reserved, p.ledger_reserved, p.target_reserved, p.delta_reserved) == (
        0, 3, 3, 0,
    )  # fmt: skip
    assert stock_of("A") == (7, 3)
    assert_stock_consistent()


def test_impossible_repair_is_blocked_and_left_alone(catalog):
    catalog({"A": 7})
    reserve(accept_message(order_message("A", 5), channel="test").order_id)
    corrupt("INSERT INTO stock_movements (sku, warehouse, kind, delta_on_hand) "
            "VALUES ('A', 'main', 'bogus', -4)")  # fmt: skip
    with unit_of_work() as s:
        [p] = stock_admin.apply_repairs(s, trust="ledger", actor="t")
    assert p.blocked and "5 units are reserved" in p.blocked
    assert stock_of("A") == (7, 5) and "repair" not in ledger_kinds()


#: The installed console script (pyproject's [project.scripts]), i.e. what an operator runs.
ORDERFLOW = str(Path(sys.executable).with_name("orderflow"))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    assert os.access(ORDERFLOW, os.X_OK), f"{ORDERFLOW} missing: pip install -e ."
    return subprocess.run(
        [ORDERFLOW, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_stock_cli_receive_adjust_move_and_repair(catalog):
    catalog({"A": 0})
    run = cli("stock", "receive", "A", "10", "--reason", "PO-1")
    assert run.returncode == 0 and "on hand 10" in run.stdout, run.stderr
    assert cli("stock", "adjust", "A", "--delta", "-2", "--reason", "broken").returncode == 0
    no_reason = cli("stock", "adjust", "A", "--delta", "-2")
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
    too_many = cli("stock", "adjust", "A", "--delta=-50", "--reason", "x")
    assert too_many.returncode == 1 and "delta: at most 8 units can be removed" in too_many.stderr
    moved = cli("stock", "move", "A", "3", "--from", "main", "--to", "east")
    assert moved.returncode == 0 and "A @ east: on hand 3" in moved.stdout
    unknown = cli("stock", "receive", "NOPE", "1")
    assert unknown.returncode == 1 and "product NOPE" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    clean = cli("stock", "repair")
    assert clean.returncode == 0 and "counters match" in clean.stdout
    corrupt("UPDATE stock SET on_hand = 9 WHERE sku = 'A' AND warehouse = 'main'")
    before = ledger_rows()
    shown = cli("stock", "repair")
    assert shown.returncode == 1
    assert "9/0" in shown.stdout and "5/0" in shown.stdout and "+4/+0" in shown.stdout
    assert "nothing was written" in shown.stdout
    assert ledger_rows() == before
    applied = cli("stock", "repair", "--apply")
    assert applied.returncode == 0 and "repaired 1 row(s)" in applied.stdout, applied.stdout
    assert stock_of("A") == (9, 0)
    assert_stock_consistent()


def report_row(out: str, sku: str, warehouse: str) -> list[str]:
    """The cells of one row of a rich table in ``out``."""
    for line in out.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line)]
        if cells[1:3] == [sku, warehouse]:
            return cells[1:-1]
    raise AssertionError(f"no row {sku} @ {warehouse} in:\n{out}")


def test_stock_report_cli_shows_levels_and_proposes_without_writing(catalog):
    catalog({"A": 10, "B": 4})
    reserve(accept_message(order_message("A", 3), channel="test").order_id)
    clean = cli("stock", "report")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    header = next(line for line in clean.stdout.splitlines() if "on hand" in line)
    assert [c.strip() for c in re.split(r"[│┃|]", header)][1:-1] == [
        "sku", "warehouse", "on hand", "reserved", "available",
    ]  # fmt: skip
    assert report_row(clean.stdout, "A", "main") == ["A", "main", "10", "3", "7"]
    assert report_row(clean.stdout, "B", "main") == ["B", "main", "4", "0", "4"]
    assert "counters match the ledger" in clean.stdout

    corrupt("UPDATE stock SET on_hand = 12 WHERE sku = 'A'")  # behind the ledger's back
    before = ledger_rows()
    drifted = cli("stock", "report")
    assert drifted.returncode == 1, drifted.stdout + drifted.stderr
    assert report_row(drifted.stdout, "A", "main") == ["A", "main", "12", "3", "9"]
    assert "counters differ from the ledger" in drifted.stdout
    assert "repair ledger row" in drifted.stdout  # the proposal table ...
    proposal = report_row(drifted.stdout.split("counters differ")[1], "A", "main")
    assert proposal[2:7] == ["12/3", "10/3", "3", "+2/+0", "12/3"]
    assert ledger_rows() == before and stock_of("A") == (12, 3)  # ... and nothing written
