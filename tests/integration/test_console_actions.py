"""The console as a place to act (issue 19) against real PostgreSQL and Redis: cancel, refund,
retry and resolve on orders the pipeline itself put in NEEDS_ATTENTION (the payment and
shipping services driven with the fakes), and dead letters replayed or discarded by filter.

Each action is checked by its outcome: the order's status, the stock ledger, the refund rows,
the task waiting on the broker, the timeline and audit rows naming the person; and each refusal
(a viewer, an order in another state, a missing note) by what did not change.
"""

from __future__ import annotations

import base64
import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import func, select, text, update

from adapters.logistics.base import TrackingEvent, TrackingResult
from api.catalog import admin_api_key_setting
from api.console_auth import console_clock
from domain.money import Money
from domain.operators import Role
from domain.tracking import ShipmentStatus
from models import (
    ConsoleAudit,
    DeadLetter,
    Order,
    OrderEvent,
    Payment,
    Refund,
    Shipment,
    StockMovement,
)
from producers.intake import accept_message
from services import dead_letter_bulk, dead_letters, operators, payments, shipping, tracking
from services.payments import PaymentConfig
from services.ports import Ports
from services.reservation import reserve_order
from services.shipping import ShippingConfig
from services.unit_of_work import unit_of_work
from tests.conftest import order_message, redis_client
from tests.console_helpers import csrf_of
from tests.fakes import FakeGate, FakePaymentProvider
from tests.fakes.logistics import FakeBookingService
from tests.helpers import assert_stock_consistent, stock_of

PASSWORD = "Correct-Horse-42"
OPERATOR, VIEWER = "operator:ops", "operator:watcher"
CONFIG = PaymentConfig(notify_base_url="http://127.0.0.1:9", create_redrive_s=30, first_query_s=5)


# --- the app and its people (as tests/security/test_console_sessions.py) ------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def app(db):
    from api.app import create_app

    key = f"adm-{secrets.token_urlsafe(24)}"
    app = create_app()
    app.dependency_overrides[admin_api_key_setting] = lambda: SecretStr(key)
    app.dependency_overrides[console_clock] = Clock()
    return app


def log_in(app, name: str, role: Role) -> tuple[TestClient, str]:
    """A client logged in as a new account with ``role``, and its CSRF token."""
    with unit_of_work() as s:
        operators.create(s, name, PASSWORD, role)
    c = TestClient(app, follow_redirects=False)
    r = c.post("/console/login", data={"name": name, "password": PASSWORD})
    assert r.status_code == 303, r.text
    return c, csrf_of(c.get("/console/attention").text)


@pytest.fixture
def ops(app):
    return log_in(app, "ops", Role.OPERATOR)


@pytest.fixture
def viewer(app):
    return log_in(app, "watcher", Role.VIEWER)


# --- orders the pipeline put in NEEDS_ATTENTION ------------------------------------------------


def now() -> datetime:
    return datetime.now(UTC)


def ports() -> Ports:
    return Ports(gate=FakeGate(), clock=now)


def awaiting_payment(fake: FakePaymentProvider) -> tuple[str, str]:
    """An order reserved (2 of P) with its trade created at the fake: (order id, trade no)."""
    oid = accept_message(order_message("P", 2), channel="test").order_id
    with unit_of_work() as s:
        assert reserve_order(s, oid, now=now(), payment_window_s=600).status == "RESERVED"
    assert payments.create(oid, lambda _: fake, ports(), CONFIG).result == "created"
    with unit_of_work() as s:
        trade_no = s.scalar(select(Payment.out_trade_no).where(Payment.order_id == oid))
    return oid, trade_no


def pay(fake: FakePaymentProvider, trade_no: str, amount: Money | None = None) -> None:
    fake.pay(trade_no, amount)
    note = fake.parse_notification({}, fake.outbox[-1])
    with unit_of_work() as s:
        payments.apply_notification(s, "alipay", note, now=now())


def booking_rejected() -> str:
    """Paid, then the warehouse refused the parcel: NEEDS_ATTENTION booking_rejected:…"""
    fake = FakePaymentProvider()
    oid, trade_no = awaiting_payment(fake)
    pay(fake, trade_no)
    warehouse = FakeBookingService()
    warehouse.reject_next("address_unreachable")
    assert shipping.book(oid, warehouse, ports(), ShippingConfig()).result == "rejected"
    assert order_of(oid)[:2] == ("NEEDS_ATTENTION", "booking_rejected:address_unreachable")
    return oid


def amount_mismatch() -> str:
    fake = FakePaymentProvider()
    oid, trade_no = awaiting_payment(fake)
    pay(fake, trade_no, Money(1, "CNY"))
    assert order_of(oid)[:2] == ("NEEDS_ATTENTION", "amount_mismatch")
    return oid


def payment_rejected() -> str:
    fake = FakePaymentProvider()
    oid = accept_message(order_message("P", 2), channel="test").order_id
    with unit_of_work() as s:
        reserve_order(s, oid, now=now(), payment_window_s=600)
    fake.reject_next("ACCOUNT_FROZEN")
    assert payments.create(oid, lambda _: fake, ports(), CONFIG).result == "rejected"
    assert order_of(oid)[:2] == ("NEEDS_ATTENTION", "payment_rejected:ACCOUNT_FROZEN")
    return oid


def tracking_exception() -> tuple[str, int]:
    """Shipped, then the carrier reported a problem: (order id, shipment id)."""
    fake = FakePaymentProvider()
    oid, trade_no = awaiting_payment(fake)
    pay(fake, trade_no)
    shipping.book(oid, FakeBookingService(), ports(), ShippingConfig(first_poll_s=3600))
    with unit_of_work() as s:
        shipment = s.scalars(select(Shipment).where(Shipment.order_id == oid)).one()
        event = TrackingEvent(now(), "parcel damaged at hub", "Hangzhou",
                              ShipmentStatus.EXCEPTION, "2")  # fmt: skip
        result = TrackingResult(shipment.carrier, shipment.waybill, ShipmentStatus.EXCEPTION, "2",
                                [event])  # fmt: skip
        tracking.apply_result(s, shipment.id, result, now=now(), source="poll")
        shipment_id = shipment.id
    status, reason, _ = order_of(oid)
    assert status == "NEEDS_ATTENTION" and reason.startswith("tracking_exception")
    return oid, shipment_id


# --- what to look at ---------------------------------------------------------------------------


def order_of(oid: str) -> tuple[str, str | None, datetime | None]:
    with unit_of_work() as s:
        o = s.get(Order, oid)
        return o.status, o.reason, o.stage_deadline


def snapshot(oid: str) -> dict[str, Any]:
    """Everything an action may change about an order."""
    with unit_of_work() as s:
        count = lambda model: s.scalar(  # noqa: E731
            select(func.count()).select_from(model).where(model.order_id == oid)
        )
        return {
            "order": order_of(oid), "events": count(OrderEvent), "refunds": count(Refund),
            "ledger": count(StockMovement), "stock": stock_of("P"),
            "payment": s.scalar(select(Payment.status).where(Payment.order_id == oid)),
            "next_poll": s.scalar(select(Shipment.next_poll_at).where(Shipment.order_id == oid)),
        }  # fmt: skip


def queued(queue: str) -> list[tuple[str, Any]]:
    """(task name, first argument) of the messages waiting in ``queue`` on the Redis broker."""
    out = []
    for raw in redis_client().lrange(queue, 0, -1):
        message = json.loads(raw)
        args = json.loads(base64.b64decode(message["body"]))[0]
        out.append((message["headers"]["task"], args[0] if args else None))
    return out


def console_actions(oid: str) -> list[tuple[dict, str]]:
    with unit_of_work() as s:
        rows = s.execute(
            select(OrderEvent.detail, OrderEvent.actor)
            .where(OrderEvent.order_id == oid, OrderEvent.kind == "console_action")
            .order_by(OrderEvent.id)
        )
        return [(d, a) for d, a in rows]


def audit_rows(action: str) -> list[ConsoleAudit]:
    with unit_of_work() as s:
        rows = s.scalars(select(ConsoleAudit).where(ConsoleAudit.action == action)
                         .order_by(ConsoleAudit.id))  # fmt: skip
        return list(rows)


def act(client: TestClient, csrf: str, oid: str, action: str, **form: str):
    return client.post(f"/console/orders/{oid}/actions/{action}", data={"csrf": csrf, **form})


# --- cancel ------------------------------------------------------------------------------------


def test_cancel_releases_the_stock_once_and_refunds_what_was_paid(catalog, ops):
    catalog({"P": 5})
    client, csrf = ops
    oid = booking_rejected()
    assert stock_of("P") == (5, 2)
    page = client.get(f"/console/orders/{oid}").text
    assert 'id="action-cancel"' in page and 'data-confirm="Cancel order' in page
    r = act(client, csrf, oid, "cancel")
    assert r.status_code == 303 and r.headers["location"].startswith(f"/console/orders/{oid}?done=")
    assert "cancelled" in client.get(r.headers["location"]).text
    assert order_of(oid)[0] == "CANCELLED"
    assert stock_of("P") == (5, 0)
    assert_stock_consistent()
    with unit_of_work() as s:
        (refund,) = s.scalars(select(Refund).where(Refund.order_id == oid))
        paid = s.scalar(select(Payment.amount).where(Payment.order_id == oid))
        assert (refund.amount, refund.status, refund.actor) == (paid, "REQUESTED", OPERATOR)
    assert ("payments.refund", refund.id) in queued("payments")
    ((detail, actor),) = console_actions(oid)
    assert (detail["action"], actor) == ("cancel", OPERATOR)
    assert detail["reason"] == "booking_rejected:address_unreachable"
    (row,) = audit_rows("order_cancel")
    assert (row.actor, row.target, row.outcome) == (OPERATOR, f"order:{oid}", "ok")

    # A second cancel is refused: nothing is released or refunded twice.
    before = snapshot(oid)
    again = act(client, csrf, oid, "cancel")
    assert again.status_code == 409 and "is CANCELLED" in again.text
    assert snapshot(oid) == before
    with unit_of_work() as s:
        releases = s.scalar(select(func.count()).where(
            StockMovement.order_id == oid, StockMovement.kind == "release"))  # fmt: skip
    assert releases == 1
    assert [r.outcome for r in audit_rows("order_cancel")] == ["ok", "refused"]


# --- refund ------------------------------------------------------------------------------------


def test_refund_requests_everything_captured_once(catalog, ops):
    catalog({"P": 5})
    client, csrf = ops
    oid = booking_rejected()
    assert 'id="action-refund"' in client.get(f"/console/orders/{oid}").text
    r = act(client, csrf, oid, "refund")
    assert r.status_code == 303, r.text
    assert order_of(oid)[0] == "NEEDS_ATTENTION"  # a refund is not a resolution
    assert stock_of("P") == (5, 2)
    with unit_of_work() as s:
        (refund,) = s.scalars(select(Refund).where(Refund.order_id == oid))
        paid = s.scalar(select(Payment.amount).where(Payment.order_id == oid))
    assert refund.amount == paid and refund.refund_no.startswith("console-")
    assert ("payments.refund", refund.id) in queued("payments")
    ((detail, actor),) = console_actions(oid)
    assert (detail["action"], detail["refund_no"], actor) == ("refund", refund.refund_no, OPERATOR)

    before = snapshot(oid)
    again = act(client, csrf, oid, "refund")
    assert again.status_code == 409 and "nothing to refund" in again.text
    assert snapshot(oid) == before


def test_refund_is_refused_when_nothing_was_captured(catalog, ops):
    catalog({"P": 5})
    client, csrf = ops
    oid = payment_rejected()
    before = snapshot(oid)
    r = act(client, csrf, oid, "refund")
    assert r.status_code == 409 and "nothing to refund" in r.text
    assert snapshot(oid) == before


# --- retry -------------------------------------------------------------------------------------


def test_retry_sends_the_refused_booking_again(catalog, ops):
    catalog({"P": 5})
    client, csrf = ops
    oid = booking_rejected()
    r = act(client, csrf, oid, "retry")
    assert r.status_code == 303, r.text
    status, reason, deadline = order_of(oid)
    assert (status, reason) == ("PAID", None) and deadline is not None and deadline > now()
    assert queued("shipping") == [("shipping.book", oid)]
    ((detail, actor),) = console_actions(oid)
    assert (detail["action"], detail["step"], actor) == ("retry", "shipping.book", OPERATOR)
    # The published task does what it says: the same booking goes through this time.
    assert shipping.book(oid, FakeBookingService(), ports(), ShippingConfig()).result
    assert order_of(oid)[0] == "SHIPPED"


def test_retry_of_a_tracking_exception_polls_the_parcel_at_the_next_tick(catalog, ops):
    catalog({"P": 5})
    client, csrf = ops
    oid, _ = tracking_exception()
    assert snapshot(oid)["next_poll"] > now()
    r = act(client, csrf, oid, "retry")
    assert r.status_code == 303, r.text
    assert snapshot(oid)["next_poll"] <= now()
    assert order_of(oid)[0] == "NEEDS_ATTENTION"  # until the scan shows the parcel moving


@pytest.mark.parametrize(
    ("make", "why"),
    [(payment_rejected, "cannot go back to RESERVED"), (amount_mismatch, "no step failed")],
)
def test_retry_is_refused_when_there_is_no_step_to_run_again(catalog, ops, make, why):
    catalog({"P": 5})
    client, csrf = ops
    oid = make()
    before = snapshot(oid)
    r = act(client, csrf, oid, "retry")
    assert r.status_code == 409 and why in r.text
    assert snapshot(oid) == before
    assert queued("shipping") == [] and queued("payments") == []
    assert [a.outcome for a in audit_rows("order_retry")] == ["refused"]


# --- resolve -----------------------------------------------------------------------------------


def test_resolve_needs_a_note(catalog, ops):
    catalog({"P": 5})
    client, csrf = ops
    oid = amount_mismatch()
    before = snapshot(oid)
    for note in ("", "   ", "x" * 501):
        r = act(client, csrf, oid, "resolve", note=note)
        assert r.status_code == 422 and "note" in r.text, note
    assert snapshot(oid) == before


def test_resolving_an_amount_mismatch_accepts_the_payment_and_books(catalog, ops):
    catalog({"P": 5})
    client, csrf = ops
    oid = amount_mismatch()
    r = act(client, csrf, oid, "resolve", note="buyer paid the rest by bank transfer")
    assert r.status_code == 303, r.text
    status, reason, deadline = order_of(oid)
    assert (status, reason) == ("PAID", None) and deadline is not None
    assert queued("shipping") == [("shipping.book", oid)]
    with unit_of_work() as s:
        move = s.execute(
            select(OrderEvent.from_status, OrderEvent.to_status, OrderEvent.detail,
                   OrderEvent.actor)
            .where(OrderEvent.order_id == oid, OrderEvent.kind == "transition")
            .order_by(OrderEvent.id.desc()).limit(1)
        ).one()  # fmt: skip
    assert move[:2] == ("NEEDS_ATTENTION", "PAID") and move[3] == OPERATOR
    assert move[2]["resolved"] == "buyer paid the rest by bank transfer"
    (row,) = audit_rows("order_resolve")
    assert row.detail["note"] == "buyer paid the rest by bank transfer"
    assert row.detail["reason"] == "amount_mismatch" and row.actor == OPERATOR


def test_resolving_a_refused_booking_waits_for_the_warehouse(catalog, ops):
    catalog({"P": 5})
    client, csrf = ops
    oid = booking_rejected()
    r = act(client, csrf, oid, "resolve", note="warehouse fixed the address, registers it")
    assert r.status_code == 303, r.text
    assert order_of(oid) == ("PAID", None, None)  # no deadline: nothing books it again
    assert queued("shipping") == []
    assert stock_of("P") == (5, 2)


def test_resolving_a_tracking_exception_puts_the_order_back_where_it_was(catalog, ops):
    catalog({"P": 5})
    client, csrf = ops
    oid, _ = tracking_exception()
    r = act(client, csrf, oid, "resolve", note="carrier confirmed the parcel is fine")
    assert r.status_code == 303, r.text
    assert order_of(oid)[:2] == ("SHIPPED", None)


def test_resolve_is_refused_without_a_captured_payment(catalog, ops):
    catalog({"P": 5})
    client, csrf = ops
    oid = payment_rejected()
    before = snapshot(oid)
    r = act(client, csrf, oid, "resolve", note="talked to the buyer")
    assert r.status_code == 409 and "cancel it" in r.text
    assert snapshot(oid) == before


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["cancel", "refund", "retry", "resolve"])
def test_a_viewer_cannot_act(catalog, viewer, action):
    catalog({"P": 5})
    client, csrf = viewer
    oid = booking_rejected()
    before = snapshot(oid)
    r = act(client, csrf, oid, action, note="handled")
    assert r.status_code == 403 and "viewer role" in r.text
    assert snapshot(oid) == before
    assert queued("shipping") == [] and queued("payments") == []
    (denied,) = audit_rows("denied")
    assert (denied.actor, denied.outcome) == (VIEWER, "denied")


@pytest.mark.parametrize("action", ["cancel", "refund", "retry", "resolve"])
def test_an_order_not_in_needs_attention_is_left_alone(catalog, ops, action):
    catalog({"P": 5})
    client, csrf = ops
    fake = FakePaymentProvider()
    oid, trade_no = awaiting_payment(fake)
    pay(fake, trade_no)
    assert order_of(oid)[0] == "PAID"
    before = snapshot(oid)
    r = act(client, csrf, oid, action, note="handled")
    assert r.status_code == 409 and "is PAID" in r.text and "NEEDS_ATTENTION" in r.text
    assert snapshot(oid) == before
    assert 'id="action-cancel"' not in client.get(f"/console/orders/{oid}").text


def test_unknown_order_and_action(ops):
    client, csrf = ops
    r = act(client, csrf, "no-such-order", "cancel")
    assert r.status_code == 404 and "No order matches" in r.text
    r = act(client, csrf, "no-such-order", "explode")
    assert r.status_code == 404 and r.text == "unknown action"
    assert [a.outcome for a in audit_rows("order_cancel")] == ["refused"]


# --- dead letters by filter --------------------------------------------------------------------


def dead_letter(
    order_id: str | None,
    *,
    task: str = "payments.create",
    queue: str = "payments",
    error: str = "provider down",
    age: timedelta = timedelta(hours=3),
) -> int:
    with unit_of_work() as s:
        dl_id = dead_letters.record(
            s, task_name=task, task_id="t", args=[order_id] if order_id else [], kwargs={},
            queue=queue, error=RuntimeError(error), attempts=4, order_id=order_id,
        )  # fmt: skip
        s.execute(update(DeadLetter).where(DeadLetter.id == dl_id)
                  .values(created_at=func.now() - age))  # fmt: skip
    return dl_id


def statuses() -> dict[int, str]:
    with unit_of_work() as s:
        return dict(s.execute(select(DeadLetter.id, DeadLetter.status)).all())


FILTER = {"task": "payments.create", "queue": "payments", "error": "PROVIDER DOWN",
          "older_than": "2h"}  # fmt: skip


def dead_letters_around_the_filter() -> tuple[list[int], list[int]]:
    """(matching, not matching) dead letters for :data:`FILTER`."""
    orders = [accept_message(order_message("P"), channel="test").order_id for _ in range(3)]
    matching = [dead_letter(orders[0]), dead_letter(orders[0]), dead_letter(orders[1]),
                dead_letter(None, error="the Provider Down again")]  # fmt: skip
    others = [
        dead_letter(orders[2], task="shipping.book", queue="shipping"),
        dead_letter(orders[2], queue="payments-slow"),
        dead_letter(orders[2], error="card declined"),
        dead_letter(orders[2], age=timedelta(minutes=30)),
    ]
    done = dead_letter(orders[2])
    with unit_of_work() as s:
        dead_letters.discard(s, done, now=now(), actor="cli")
    return matching, [*others, done]


def test_bulk_replay_by_filter_takes_exactly_the_matching_open_ones(catalog, ops):
    catalog({"P": 50})
    client, csrf = ops
    matching, others = dead_letters_around_the_filter()
    before = statuses()
    attention = client.get("/console/attention").text
    assert 'id="bulk-filter"' in attention and 'action="/console/dead-letters/bulk"' in attention
    preview = client.get("/console/dead-letters/bulk", params=FILTER)
    assert preview.status_code == 200
    assert '<b id="bulk-count">4</b> dead letters match' in preview.text
    assert 'data-confirm="Replay 4 dead letters?"' in preview.text
    assert statuses() == before  # a preview changes nothing
    r = client.post("/console/dead-letters/bulk/replay", data={"csrf": csrf, **FILTER})
    assert r.status_code == 303
    page = client.get(r.headers["location"]).text
    assert "replayed 4 dead letters; 0 still match" in page
    assert '<b id="bulk-count">0</b> dead letters match' in page
    after = statuses()
    assert {i for i in after if after[i] != before[i]} == set(matching)
    assert all(after[i] == "REPLAYED" for i in matching)
    assert [after[i] for i in others] == ["OPEN"] * 4 + ["DISCARDED"]
    assert sorted(t for t, _ in queued("payments")) == ["payments.create"] * 4
    (row,) = audit_rows("dlq_bulk_replay")
    assert (row.actor, row.detail["count"], row.detail["remaining"]) == (OPERATOR, 4, 0)
    assert row.detail["filter"] == FILTER
    with unit_of_work() as s:
        rows = s.execute(select(OrderEvent.order_id, OrderEvent.detail).where(
            OrderEvent.kind == "console_action")).all()  # fmt: skip
    per_order = {o: sorted(d["dead_letter_ids"]) for o, d in rows}
    assert sorted(i for ids in per_order.values() for i in ids) == sorted(matching[:3])
    assert len(rows) == 2  # one row per affected order


def test_bulk_discard_is_capped_per_click_and_says_what_remains(catalog, ops, monkeypatch):
    monkeypatch.setattr(dead_letter_bulk, "CLICK_CAP", 5)
    monkeypatch.setattr(dead_letter_bulk, "BATCH", 2)
    client, csrf = ops
    ids = [dead_letter(None, task="tracking.poll", queue="tracking") for _ in range(7)]
    other = dead_letter(None)
    form = {"csrf": csrf, "task": "tracking.poll"}
    preview = client.get("/console/dead-letters/bulk", params={"task": "tracking.poll"}).text
    assert '<b id="bulk-count">7</b>' in preview and "takes the oldest 5" in preview
    r = client.post("/console/dead-letters/bulk/discard", data=form)
    assert "discarded 5 dead letters; 2 still match" in client.get(r.headers["location"]).text
    assert [statuses()[i] for i in ids] == ["DISCARDED"] * 5 + ["OPEN"] * 2
    r = client.post("/console/dead-letters/bulk/discard", data=form)
    assert "discarded 2 dead letters; 0 still match" in client.get(r.headers["location"]).text
    assert {statuses()[i] for i in ids} == {"DISCARDED"} and statuses()[other] == "OPEN"
    assert queued("tracking") == []  # a discard runs nothing
    assert [(a.detail["count"], a.detail["remaining"]) for a in audit_rows("dlq_bulk_discard")] \
        == [(5, 2), (2, 0)]  # fmt: skip


def test_bulk_actions_refuse_a_viewer_and_a_bad_filter(catalog, viewer, ops):
    client, csrf = viewer
    dl_id = dead_letter(None)
    assert (
        '<b id="bulk-count">1</b> dead letter matches'
        in client.get("/console/dead-letters/bulk").text
    )
    r = client.post("/console/dead-letters/bulk/replay", data={"csrf": csrf})
    assert r.status_code == 403
    assert statuses()[dl_id] == "OPEN" and queued("payments") == []
    bad = client.get("/console/dead-letters/bulk", params={"older_than": "yesterday"})
    assert bad.status_code == 422 and "older_than" in bad.text
    operator, token = ops
    r = operator.post("/console/dead-letters/bulk/discard",
                      data={"csrf": token, "older_than": "2 weeks"})  # fmt: skip
    assert r.status_code == 303 and "error=" in r.headers["location"]
    assert statuses()[dl_id] == "OPEN" and audit_rows("dlq_bulk_discard") == []
    with unit_of_work() as s:
        assert s.scalar(text("SELECT count(*) FROM order_events")) == 0
