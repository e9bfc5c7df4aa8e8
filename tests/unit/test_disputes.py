"""Disputes without a server: the rules (:mod:`domain.disputes`), the Stripe dispute events as the
simulator's dispute desk builds them, signed and parsed by the real adapter, and what the service
writes into a dispute row (:func:`services.payments.disputes.record_event`) for a dispute
opened, won, lost, repeated and delivered out of order."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from adapters.payments.base import DisputeEvent, NotificationKind
from adapters.payments.stripe import StripeConfig, StripeProvider
from domain.disputes import OrderFlag, Recorded, order_flag, takes_state
from domain.errors import ProviderRejected, SignatureInvalid
from domain.money import Money
from domain.orders import OrderStatus
from models import Dispute
from services.payments.disputes import record_event
from simulators.stripe_disputes import DISPUTE_FEE, DisputeDesk

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
SECRET = "whsec_unit_disputes"
NOW = 1_800_000_000


# -- rules --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("current", "status", "later_s", "takes"),
    [
        (None, "needs_response", 0, True),
        ("needs_response", "under_review", 5, True),
        ("needs_response", "needs_response", 5, True),  # same status, newer details
        ("under_review", "needs_response", 5, False),  # a status never ranks down
        ("needs_response", "under_review", -5, False),  # an older event arriving late
        ("warning_needs_response", "needs_response", 5, True),  # inquiry → chargeback
        ("needs_response", "warning_needs_response", 5, False),
        ("under_review", "won", -5, True),  # a close is taken whatever the times say
        ("won", "under_review", 5, False),  # a closed dispute stays closed
        ("lost", "won", 5, False),
        ("warning_closed", "needs_response", 5, False),
    ],
)
def test_which_events_overwrite_a_dispute(
    current: str | None, status: str, later_s: int, takes: bool
) -> None:
    recorded = Recorded(current, T0) if current else None
    assert takes_state(recorded, status, T0 + timedelta(seconds=later_s)) is takes


@pytest.mark.parametrize("status", list(OrderStatus))
def test_a_new_open_dispute_moves_the_order_only_where_the_table_allows(
    status: OrderStatus,
) -> None:
    movable = {
        OrderStatus.RESERVED, OrderStatus.AWAITING_PAYMENT, OrderStatus.PAID,
        OrderStatus.PARTIALLY_SHIPPED, OrderStatus.SHIPPED, OrderStatus.IN_TRANSIT,
        OrderStatus.PARTIALLY_DELIVERED,
    }  # fmt: skip
    expected = OrderFlag.MOVE if status in movable else OrderFlag.NOTE
    assert order_flag(status, first_seen=True, status="needs_response") is expected


def test_only_a_dispute_first_seen_open_flags_its_order() -> None:
    assert order_flag("PAID", first_seen=False, status="needs_response") is OrderFlag.NONE
    assert order_flag("PAID", first_seen=True, status="won") is OrderFlag.NONE
    assert order_flag("DELIVERED", first_seen=True, status="warning_needs_response") is (
        OrderFlag.NOTE
    )


# -- simulator desk → signed event → adapter ----------------------------------------------------
class _Desk:
    """A dispute desk over one paid PaymentIntent, collecting the events it emits."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.pi = {"id": "pi_1", "status": "succeeded", "latest_charge": "ch_1"}
        self.charges = {"ch_1": {"id": "ch_1", "amount": 6900, "currency": "usd"}}
        self.desk = DisputeDesk(threading.RLock(), self._find, lambda: self.charges, self._emit)

    def _find(self, ref: str) -> dict[str, Any]:
        if ref != "pi_1":
            raise KeyError(ref)
        return self.pi

    def _emit(self, event_type: str, obj: dict[str, Any], previous: Any = None) -> None:
        data: dict[str, Any] = {"object": json.loads(json.dumps(obj))}
        if previous is not None:
            data["previous_attributes"] = previous
        n = len(self.events)
        self.events.append(
            {"id": f"evt_{n}", "object": "event", "type": event_type, "created": NOW + n,
             "livemode": False, "data": data}
        )  # fmt: skip

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]


def _signed(event: dict[str, Any], secret: str = SECRET) -> tuple[dict[str, str], bytes]:
    body = json.dumps(event).encode()
    sig = hmac.new(secret.encode(), f"{NOW}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={NOW},v1={sig}"}, body


def _provider() -> StripeProvider:
    config = StripeConfig(api_base="http://127.0.0.1:9", secret_key="sk_x", webhook_secret=SECRET)
    return StripeProvider(config, clock=lambda: float(NOW))


def _parsed(event: dict[str, Any]) -> DisputeEvent:
    note = _provider().parse_notification(*_signed(event))
    assert note.kind is NotificationKind.DISPUTE and note.out_trade_no is None
    assert note.event_id == event["id"] and note.raw_type == event["type"]
    assert note.dispute is not None
    return note.dispute


def test_an_opened_chargeback_is_created_then_its_funds_withdrawn() -> None:
    d = _Desk()
    opened = d.desk.open("pi_1", reason="fraudulent", status="needs_response", due_in_s=3600)
    assert d.types() == ["charge.dispute.created", "charge.dispute.funds_withdrawn"]
    assert opened["object"] == "dispute" and opened["id"].startswith("dp_")
    assert d.charges["ch_1"]["disputed"] is True
    created, withdrawn = (_parsed(e) for e in d.events)
    assert created.dispute_id == opened["id"] and created.provider_ref == "pi_1"
    assert created.charge_ref == "ch_1" and created.amount == Money(6900, "USD")
    assert created.status == "needs_response" and created.reason == "fraudulent"
    assert created.evidence_due_by == datetime.fromtimestamp(
        opened["evidence_details"]["due_by"], UTC
    )
    assert (created.funds_withdrawn, withdrawn.funds_withdrawn) == (0, 6900)
    assert created.event_at == datetime.fromtimestamp(NOW, UTC)
    txn = d.events[1]["data"]["object"]["balance_transactions"][0]
    assert txn["fee"] == DISPUTE_FEE and txn["net"] == -6900 - DISPUTE_FEE


def test_a_won_dispute_is_updated_closed_and_reinstated() -> None:
    d = _Desk()
    dp = d.desk.open("pi_1", reason="product_not_received", status="needs_response", due_in_s=60)
    d.desk.update(dp["id"], "under_review")
    d.desk.close(dp["id"], "won")
    assert d.types()[2:] == [
        "charge.dispute.updated", "charge.dispute.closed", "charge.dispute.funds_reinstated",
    ]  # fmt: skip
    assert d.events[2]["data"]["previous_attributes"]["status"] == "needs_response"
    updated, closed, reinstated = (_parsed(e) for e in d.events[2:])
    assert updated.status == "under_review" and updated.has_evidence is True
    assert closed.status == "won" and closed.funds_reinstated == 0
    assert (reinstated.funds_withdrawn, reinstated.funds_reinstated) == (6900, 6900)


def test_a_lost_dispute_closes_without_reinstatement_and_cannot_move_again() -> None:
    d = _Desk()
    dp = d.desk.open("pi_1", reason="fraudulent", status="needs_response", due_in_s=60)
    d.desk.close(dp["id"], "lost")
    assert d.types()[-1] == "charge.dispute.closed"
    assert _parsed(d.events[-1]).status == "lost"
    with pytest.raises(ValueError, match="lost"):
        d.desk.update(dp["id"], "under_review")
    with pytest.raises(ValueError, match="already disputed"):
        d.desk.open("pi_1", reason="fraudulent", status="needs_response", due_in_s=60)


def test_an_inquiry_takes_no_money_and_closes_as_warning_closed() -> None:
    d = _Desk()
    dp = d.desk.open("pi_1", reason="general", status="warning_needs_response", due_in_s=60)
    d.desk.close(dp["id"], "won")
    assert d.types() == ["charge.dispute.created", "charge.dispute.closed"]
    assert _parsed(d.events[-1]).status == "warning_closed"


def test_a_forged_or_malformed_dispute_event_is_refused() -> None:
    d = _Desk()
    d.desk.open("pi_1", reason="fraudulent", status="needs_response", due_in_s=60)
    headers, body = _signed(d.events[0], secret="whsec_someone_else")
    with pytest.raises(SignatureInvalid):
        _provider().parse_notification(headers, body)
    no_time = dict(d.events[0], created=None)
    with pytest.raises(ProviderRejected, match="created"):
        _parsed(no_time)
    not_dispute = json.loads(json.dumps(d.events[0]))
    not_dispute["data"]["object"]["object"] = "charge"
    with pytest.raises(ProviderRejected, match="dispute object"):
        _parsed(not_dispute)


def test_a_due_by_of_zero_means_no_response_is_possible() -> None:
    d = _Desk()
    d.desk.open("pi_1", reason="fraudulent", status="needs_response", due_in_s=60)
    event = json.loads(json.dumps(d.events[0]))
    event["data"]["object"]["evidence_details"]["due_by"] = 0
    assert _parsed(event).evidence_due_by is None


# -- what the service records -------------------------------------------------------------------
def _event(status: str, at_s: int, **kw: Any) -> DisputeEvent:
    fields: dict[str, Any] = {
        "dispute_id": "dp_1", "provider_ref": "pi_1", "charge_ref": "ch_1",
        "amount": Money(6900, "USD"), "reason": "fraudulent", "status": status,
        "evidence_due_by": T0 + timedelta(days=7), "has_evidence": False,
        "funds_withdrawn": 0, "funds_reinstated": 0, "event_at": T0 + timedelta(seconds=at_s),
    }  # fmt: skip
    fields.update(kw)
    return DisputeEvent(**fields)


def _row(first: DisputeEvent) -> Dispute:
    row = Dispute(status=first.status, event_at=first.event_at, funds_withdrawn=0,
                  funds_reinstated=0)  # fmt: skip
    assert record_event(row, first, now=T0, fresh=True)
    return row


def test_opened_then_won_records_outcome_and_funds() -> None:
    row = _row(_event("needs_response", 0))
    assert (row.status, row.outcome, row.amount, row.currency) == (
        "needs_response", None, 6900, "USD",
    )  # fmt: skip
    assert row.evidence_due_by == T0 + timedelta(days=7)
    assert record_event(row, _event("needs_response", 1, funds_withdrawn=6900), now=T0, fresh=False)
    assert record_event(row, _event("under_review", 2, has_evidence=True), now=T0, fresh=False)
    won = _event("won", 3, funds_withdrawn=6900, has_evidence=True)
    assert record_event(row, won, now=T0, fresh=False)
    assert not record_event(
        row, _event("won", 4, funds_withdrawn=6900, funds_reinstated=6900), now=T0, fresh=False
    )  # closed: the state stays, the funds are still recorded
    assert (row.status, row.outcome, row.closed_at, row.has_evidence) == ("won", "won", T0, True)
    assert (row.funds_withdrawn, row.funds_reinstated) == (6900, 6900)


def test_opened_then_lost_stays_lost() -> None:
    row = _row(_event("needs_response", 0, funds_withdrawn=6900))
    assert record_event(row, _event("lost", 5), now=T0, fresh=False)
    assert not record_event(row, _event("under_review", 9), now=T0, fresh=False)
    assert (row.status, row.outcome, row.funds_withdrawn) == ("lost", "lost", 6900)


def test_an_older_event_arriving_late_does_not_regress_the_dispute() -> None:
    row = _row(_event("under_review", 10, has_evidence=True))
    late = _event("needs_response", 0, funds_withdrawn=6900, evidence_due_by=T0)
    assert not record_event(row, late, now=T0, fresh=False)
    assert (row.status, row.event_at, row.has_evidence) == (
        "under_review", T0 + timedelta(seconds=10), True,
    )  # fmt: skip
    assert row.evidence_due_by == T0 + timedelta(days=7)
    assert row.funds_withdrawn == 6900  # funds only grow, whatever the order


# -- the Attention page's disputes section ------------------------------------------------------
def test_the_attention_page_lists_open_disputes_with_deadline_and_overdue_marked() -> None:
    import api.console  # noqa: F401 - installs the console's template filters
    from api.console_auth import templates

    section = templates.env.get_template("console/_disputes.html")
    row = {
        "order_id": "o-1", "order_status": "DELIVERED", "provider": "stripe",
        "dispute_id": "dp_1", "amount": 5000, "currency": "CNY", "reason": "fraudulent",
        "status": "needs_response", "evidence_due_by": T0, "overdue": True,
    }  # fmt: skip
    html = section.render(disputes=[row, dict(row, dispute_id="dp_2", overdue=False)])
    assert 'id="dispute-count">2<' in html and 'href="/console/orders/o-1"' in html
    assert "50.00 CNY" in html and "2026-11-02 08:00" in html and "needs_response" in html
    assert html.count('<b class="overdue">overdue</b>') == 1
    assert 'id="no-disputes"' in section.render(disputes=[])
