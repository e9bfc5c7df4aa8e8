"""Stripe disputes end to end: the Stripe simulator opens, moves and closes a dispute on a paid
order and sends the signed ``charge.dispute.*`` events over real HTTP to the running API.

Judged in the database: the disputes row (status, evidence deadline, funds, outcome), the
order's status and timeline, and stock, which a dispute never moves.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from sqlalchemy import select

from models import Dispute, OrderEvent
from services.payments.disputes import open_disputes
from services.unit_of_work import unit_of_work
from tests.conftest import order_message, wait_until
from tests.e2e.test_payments import out_trade_no, wait_status
from tests.helpers import assert_stock_consistent, stock_of

pytestmark = pytest.mark.e2e

PRICE = 2500


def _control(stripe: Any, body: dict[str, Any]) -> dict[str, Any]:
    r = requests.post(f"{stripe.url}/_sim/dispute", json=body, timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _dispute(dispute_id: str) -> Dispute | None:
    with unit_of_work() as s:
        row = s.scalar(select(Dispute).where(Dispute.provider_dispute_id == dispute_id))
        if row is not None:
            s.expunge(row)
        return row


def _wait_dispute(dispute_id: str, **expected: Any) -> Dispute:
    def check() -> Dispute | None:
        row = _dispute(dispute_id)
        ok = row is not None and all(getattr(row, k) == v for k, v in expected.items())
        return row if ok else None

    def show() -> object:
        row = _dispute(dispute_id)
        return row and {k: v for k, v in vars(row).items() if not k.startswith("_")}

    return wait_until(check, 60, show=show)


def _dispute_events(order_id: str) -> list[dict[str, Any]]:
    with unit_of_work() as s:
        rows = s.scalars(
            select(OrderEvent.detail)
            .where(OrderEvent.order_id == order_id, OrderEvent.kind == "dispute")
            .order_by(OrderEvent.id)
        )
        return [dict(d or {}) for d in rows]


def _paid_stripe_order(p: Any, sku: str) -> tuple[str, tuple[int, int]]:
    oid = p.post_order(order_message(sku, 2, provider="stripe"))
    wait_status(p, oid, "AWAITING_PAYMENT")
    p.stack.pay("stripe", out_trade_no(oid))
    wait_status(p, oid, "PAID")
    return oid, stock_of(sku)


def test_a_dispute_opened_then_won(start_pipeline, catalog):
    catalog({"DW": 5}, price=PRICE)
    p = start_pipeline()
    oid, stock_before = _paid_stripe_order(p, "DW")
    opened = _control(p.stack.stripe, {"action": "open", "out_trade_no": out_trade_no(oid)})
    dp = opened["id"]

    view = wait_status(p, oid, "NEEDS_ATTENTION")
    assert view["reason"] == "dispute"
    row = _wait_dispute(dp, funds_withdrawn=2 * PRICE)
    due = datetime.fromtimestamp(opened["evidence_details"]["due_by"], UTC)
    assert (row.status, row.amount, row.reason, row.outcome) == (
        "needs_response", 2 * PRICE, "fraudulent", None,
    )  # fmt: skip
    assert row.evidence_due_by == due and row.order_id == oid
    with unit_of_work() as s:
        listed = open_disputes(s, now=datetime.now(UTC))
    assert [(d["dispute_id"], d["evidence_due_by"], d["overdue"]) for d in listed] == [
        (dp, due, False)
    ]

    _control(p.stack.stripe, {"action": "update", "id": dp, "status": "under_review"})
    _wait_dispute(dp, status="under_review", has_evidence=True)
    _control(p.stack.stripe, {"action": "close", "id": dp, "outcome": "won"})
    row = _wait_dispute(dp, outcome="won", funds_reinstated=2 * PRICE)
    assert row.status == "won" and row.funds_withdrawn == 2 * PRICE

    view = p.get_order(oid)
    assert view["status"] == "NEEDS_ATTENTION"  # a won dispute moves nothing back
    assert view["payment"]["status"] == "PAID"
    events = _dispute_events(oid)
    # Each event once; the simulator's notifier may deliver the first two in either order.
    assert sorted(e["type"] for e in events) == [
        "charge.dispute.closed", "charge.dispute.created", "charge.dispute.funds_reinstated",
        "charge.dispute.funds_withdrawn", "charge.dispute.updated",
    ]  # fmt: skip
    moves = [e for e in view["timeline"] if e["kind"] == "transition"]
    assert [m["to"] for m in moves][-1] == "NEEDS_ATTENTION"
    assert sum(m["to"] == "NEEDS_ATTENTION" for m in moves) == 1
    assert stock_of("DW") == stock_before
    assert_stock_consistent()
    with unit_of_work() as s:
        assert open_disputes(s, now=datetime.now(UTC)) == []


def _deliver(stripe: Any, url: str, event: dict[str, Any]) -> None:
    """Send one of the simulator's events ourselves, signed by it, over real HTTP."""
    body = json.dumps(event, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "Stripe-Signature": stripe.sign(body)}
    r = requests.post(url, data=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text


def _acked(stripe: Any) -> int:
    return sum(status == 200 for _url, status, _attempt in stripe.notifier.deliveries)


def test_a_dispute_lost_out_of_order_and_duplicated_applies_once(start_pipeline, catalog):
    catalog({"DL": 5}, price=PRICE)
    p = start_pipeline()
    stripe = p.stack.stripe
    oid, stock_before = _paid_stripe_order(p, "DL")
    webhook_url, stripe.webhook_url = stripe.webhook_url, None  # kept in the ledger, unsent
    dp = _control(stripe, {"action": "open", "out_trade_no": out_trade_no(oid)})["id"]
    _control(stripe, {"action": "update", "id": dp, "status": "under_review"})
    created, withdrawn, updated = [
        e for e in stripe.ledger()["events"] if e["type"].startswith("charge.dispute.")
    ]
    assert updated["type"] == "charge.dispute.updated"

    _deliver(stripe, webhook_url, updated)  # the newest first
    _wait_dispute(dp, status="under_review")
    for late in (created, withdrawn, created):  # older ones late, one of them twice
        _deliver(stripe, webhook_url, late)
    row = _wait_dispute(dp, funds_withdrawn=2 * PRICE)
    assert row.status == "under_review"  # the late needs_response did not regress it
    events = _dispute_events(oid)
    # The repeated created event was deduplicated: three events, three timeline rows.
    assert [(e["type"], e["applied"]) for e in events] == [
        ("charge.dispute.updated", True), ("charge.dispute.created", False),
        ("charge.dispute.funds_withdrawn", False),
    ]  # fmt: skip
    assert wait_status(p, oid, "NEEDS_ATTENTION")["reason"] == "dispute"

    stripe.webhook_url, stripe.webhook_copies = webhook_url, 3  # each event delivered 3 times
    acked_before = _acked(stripe)
    _control(stripe, {"action": "close", "id": dp, "outcome": "lost"})
    wait_until(lambda: _acked(stripe) == acked_before + 3, show=lambda: stripe.notifier.deliveries)
    row = _wait_dispute(dp, outcome="lost")
    assert row.status == "lost" and row.funds_reinstated == 0
    closed = [e for e in stripe.ledger()["events"] if e["type"] == "charge.dispute.closed"]
    assert len(closed) == 1
    assert [e["event_id"] for e in _dispute_events(oid)].count(closed[0]["id"]) == 1
    view = p.get_order(oid)
    assert view["status"] == "NEEDS_ATTENTION" and view["payment"]["status"] == "PAID"
    assert stock_of("DL") == stock_before
    assert_stock_consistent()
