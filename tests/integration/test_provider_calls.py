"""The real gate's timeline rows against real PostgreSQL and Redis: a noted call's row is
committed with the step's record transaction (one transaction less per provider call), and is
still written when that transaction fails."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from services.provider_calls import gate_for
from services.unit_of_work import unit_of_work
from tests.conftest import redis_client
from tests.integration.tracking_support import make_order


def _call_rows(order_id: str) -> list[tuple[str, int]]:
    """(outcome, xmin) of the order's provider_call rows: xmin names the writing transaction."""
    with unit_of_work() as s:
        rows = s.execute(
            text("SELECT detail->>'outcome', xmin::text::bigint FROM order_events "
                 "WHERE order_id = :o AND kind = 'provider_call' ORDER BY id"),
            {"o": order_id},
        )  # fmt: skip
        return [(outcome, int(xmin)) for outcome, xmin in rows]


def test_a_noted_call_is_committed_with_the_record_transaction(db):
    oid = make_order("PAID")
    gate = gate_for(redis_client())
    result, note = gate.call_noted("noted", "op", oid, lambda: {"ok": True}, request={"a": 1})
    assert result == {"ok": True}
    assert _call_rows(oid) == []  # nothing written until the step records
    with note.recorded(unit_of_work) as s:
        s.execute(text("UPDATE orders SET reason = 'recorded' WHERE id = :o"), {"o": oid})
        order_xmin = s.execute(text("SELECT xmin::text::bigint FROM orders WHERE id = :o"),
                               {"o": oid}).scalar_one()  # fmt: skip
    assert _call_rows(oid) == [("ok", int(order_xmin))]


def test_a_failed_recording_still_leaves_the_call_on_the_timeline(db):
    oid = make_order("PAID")
    _, note = gate_for(redis_client()).call_noted("noted", "op", oid, lambda: 1)
    with pytest.raises(RuntimeError), note.recorded(unit_of_work) as s:
        s.execute(text("UPDATE orders SET reason = 'lost' WHERE id = :o"), {"o": oid})
        raise RuntimeError("record failed")
    assert [outcome for outcome, _ in _call_rows(oid)] == ["ok"]
    with unit_of_work() as s:
        reason = s.execute(text("SELECT reason FROM orders WHERE id = :o"), {"o": oid}).scalar()
    assert reason != "lost"  # the step's own writes rolled back


def test_a_plain_call_writes_its_row_at_once(db):
    oid = make_order("PAID")
    assert gate_for(redis_client()).call("plain", "op", oid, lambda: 2) == 2
    assert [outcome for outcome, _ in _call_rows(oid)] == ["ok"]
