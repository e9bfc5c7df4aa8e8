"""The contract tests/fakes.py must keep: what the real adapters do against the simulators
(tests/integration/adapters/*), so a unit test driven by a fake means what it would mean against
a real provider."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.logistics.base import (
    BookingService,
    TrackingProvider,
)
from adapters.payments.base import (
    SETTLED_ON_CREATE,
    ClosePayment,
    CreatePayment,
    NotificationKind,
    PaymentProvider,
    PaymentRef,
    PaymentState,
    RefundRequest,
    RefundState,
)
from domain.errors import ProviderRejected, ProviderUnavailable, SignatureInvalid
from domain.money import Money
from domain.tracking import ShipmentStatus
from tests.fakes import (
    FakeBookingService,
    FakePaymentProvider,
    FakeTrackingProvider,
)

S = ShipmentStatus
HOUR = 3600.0


def create(no: str = "T-1", amount: int = 1234, key: str | None = None) -> CreatePayment:
    return CreatePayment(
        out_trade_no=no,
        idempotency_key=key or f"pay-{no}",
        amount=Money(amount, "CNY"),
        description="order",
        notify_url="http://127.0.0.1:9/webhooks/fake",
        expires_at=datetime(2099, 1, 1, tzinfo=UTC),
    )


def refund(no: str, refund_no: str, amount: int, total: int = 1000) -> RefundRequest:
    return RefundRequest(
        PaymentRef(no), refund_no, Money(amount, "CNY"), Money(total, "CNY"), "refund"
    )


def paid(fake: FakePaymentProvider, no: str = "T-1", amount: int = 1000) -> PaymentRef:
    fake.create(create(no, amount))
    fake.pay(no)
    return PaymentRef(no)


def test_fakes_satisfy_the_ports() -> None:
    tracker = FakeTrackingProvider()
    # Annotated assignments: mypy --strict checks these signatures against the Protocols.
    payment: PaymentProvider = FakePaymentProvider()
    booking: BookingService = FakeBookingService(tracker)
    tracking: TrackingProvider = tracker
    assert isinstance(payment, PaymentProvider)
    assert isinstance(booking, BookingService)
    assert isinstance(tracking, TrackingProvider)


# -- payments -------------------------------------------------------------------------------


def test_create_replay_returns_the_same_trade() -> None:
    fake = FakePaymentProvider()
    first = fake.create(create("T-1"))
    assert fake.create(create("T-1")) == first
    assert list(fake.trades) == ["T-1"]
    assert fake.query(PaymentRef("T-1")).state is PaymentState.PENDING


def test_create_replay_with_another_amount_or_key_reuse_is_rejected_and_changes_nothing() -> None:
    fake = FakePaymentProvider()
    fake.create(create("T-1", 1234))
    with pytest.raises(ProviderRejected) as err:
        fake.create(create("T-1", 1235))
    assert err.value.code == "CONTEXT_INCONSISTENT" and not err.value.retryable
    with pytest.raises(ProviderRejected) as err:
        fake.create(create("T-2", key="pay-T-1"))
    assert err.value.code == "idempotency_error"
    assert list(fake.trades) == ["T-1"]
    assert fake.query(PaymentRef("T-1")).amount == Money(1234, "CNY")


def test_create_replay_after_payment_or_close_is_settled_on_create() -> None:
    fake = FakePaymentProvider()
    paid(fake, "T-1")
    fake.create(create("T-2"))
    fake.close(ClosePayment(PaymentRef("T-2"), "close-T-2"))
    for no in ("T-1", "T-2"):
        with pytest.raises(ProviderRejected) as err:
            fake.create(create(no, 1000 if no == "T-1" else 1234))
        assert err.value.code in SETTLED_ON_CREATE


def test_query_unknown_then_paid_with_exact_amount() -> None:
    fake = FakePaymentProvider()
    assert fake.query(PaymentRef("T-1")).state is PaymentState.NOT_FOUND
    created = fake.create(create("T-1", 1234))
    fake.pay("T-1")
    status = fake.query(PaymentRef("T-1"))
    assert (status.state, status.amount) == (PaymentState.PAID, Money(1234, "CNY"))
    assert status.provider_ref == created.provider_ref and status.paid_at is not None


def test_close_unpaid_is_closed_repeatable_and_cannot_be_paid_later() -> None:
    fake = FakePaymentProvider()
    fake.create(create("C-1"))
    result = fake.close(ClosePayment(PaymentRef("C-1"), "close-C-1"))
    assert result.closed and result.status.state is PaymentState.CLOSED
    assert fake.close(ClosePayment(PaymentRef("C-1"), "close-C-1")).closed
    with pytest.raises(ValueError):
        fake.pay("C-1")
    assert fake.query(PaymentRef("C-1")).state is PaymentState.CLOSED


def test_close_paid_reports_paid_and_leaves_it_paid() -> None:
    fake = FakePaymentProvider()
    ref = paid(fake, "C-2", 888)
    result = fake.close(ClosePayment(ref, "close-C-2"))
    assert not result.closed
    assert (result.status.state, result.status.amount) == (PaymentState.PAID, Money(888, "CNY"))
    assert fake.query(ref).state is PaymentState.PAID


def test_close_of_a_trade_never_created_counts_as_closed() -> None:
    result = FakePaymentProvider().close(ClosePayment(PaymentRef("C-3"), "close-C-3"))
    assert result.closed and result.status.state is PaymentState.NOT_FOUND


def test_partial_then_full_refund_and_replay_refunds_once() -> None:
    fake = FakePaymentProvider()
    ref = paid(fake, "R-1", 1000)
    first = fake.refund(refund("R-1", "RF-1", 300))
    assert (first.state, first.amount) == (RefundState.SUCCEEDED, Money(300, "CNY"))
    assert fake.refund(refund("R-1", "RF-1", 300)) == first
    assert fake.query(ref).state is PaymentState.PAID
    fake.refund(refund("R-1", "RF-2", 700))
    assert fake.query(ref).state is PaymentState.REFUNDED
    with pytest.raises(ProviderRejected) as err:
        fake.refund(refund("R-1", "RF-3", 1))
    assert err.value.code == "NOTENOUGH"
    with pytest.raises(ProviderRejected) as err:  # same number, another amount
        fake.refund(refund("R-1", "RF-1", 200))
    assert err.value.code == "INVALID_REQUEST"
    assert sorted(fake.refunds) == ["RF-1", "RF-2"]


def test_refund_needs_a_paid_trade_and_at_most_what_remains() -> None:
    fake = FakePaymentProvider()
    fake.create(create("R-2", 1000))
    with pytest.raises(ProviderRejected):
        fake.refund(refund("R-2", "RF-1", 100))
    fake.pay("R-2")
    with pytest.raises(ProviderRejected) as err:
        fake.refund(refund("R-2", "RF-1", 1001))
    assert err.value.code == "NOTENOUGH" and fake.refunds == {}


def test_query_refund_and_pending_refund_settles() -> None:
    fake = FakePaymentProvider(refunds_start_pending=True)
    ref = paid(fake, "R-3", 600)
    created = fake.refund(refund("R-3", "RF-1", 250, 600))
    assert created.state is RefundState.PENDING
    assert fake.query_refund(ref, "RF-1").state is RefundState.PENDING
    fake.settle_refund("RF-1")
    settled = fake.query_refund(ref, "RF-1")
    assert (settled.state, settled.amount) == (RefundState.SUCCEEDED, Money(250, "CNY"))
    assert settled.provider_refund_ref == created.provider_refund_ref
    with pytest.raises(ProviderRejected) as err:
        fake.query_refund(ref, "RF-unknown")
    assert err.value.code == "RESOURCE_NOT_EXISTS"


def test_a_failed_refund_gives_its_amount_back() -> None:
    fake = FakePaymentProvider(refunds_start_pending=True)
    paid(fake, "R-4", 500)
    fake.refund(refund("R-4", "RF-1", 500, 500))
    fake.settle_refund("RF-1", succeeded=False)
    assert fake.refund(refund("R-4", "RF-2", 500, 500)).state is RefundState.PENDING


def test_notifications_are_signed_and_parse_to_what_happened() -> None:
    fake = FakePaymentProvider()
    paid(fake, "N-1", 6660)
    fake.refund(refund("N-1", "RF-9", 6660, 6660))
    pay_note, refund_note = (fake.parse_notification({}, body) for body in fake.outbox)
    assert pay_note.kind is NotificationKind.PAYMENT and pay_note.out_trade_no == "N-1"
    assert pay_note.status is not None
    assert (pay_note.status.state, pay_note.status.amount) == (
        PaymentState.PAID,
        Money(6660, "CNY"),
    )
    assert refund_note.kind is NotificationKind.REFUND and refund_note.refund is not None
    assert refund_note.refund.refund_no == "RF-9"
    assert refund_note.status is not None and refund_note.status.state is PaymentState.REFUNDED
    assert pay_note.event_id != refund_note.event_id


def test_forged_notifications_raise_signature_invalid() -> None:
    fake = FakePaymentProvider()
    paid(fake, "N-2", 5000)
    genuine = json.loads(fake.outbox[0])
    unsigned = {k: v for k, v in genuine.items() if k != "sign"}
    forgeries = [
        json.dumps({**genuine, "amount": "1"}).encode(),  # tampered after signing
        FakePaymentProvider(secret="attacker").sign_notification(unsigned),
        json.dumps(unsigned).encode(),
        json.dumps({**genuine, "sign": 7}).encode(),
        b"not json",
        b"[]",
    ]
    for body in forgeries:
        with pytest.raises(SignatureInvalid):
            fake.parse_notification({}, body)
    assert fake.parse_notification({}, fake.outbox[0]).out_trade_no == "N-2"


def test_notification_replies() -> None:
    fake = FakePaymentProvider()
    assert (fake.notification_reply(True).status_code, fake.notification_reply(True).body) == (
        200,
        b"success",
    )
    assert fake.notification_reply(False).status_code >= 400


def test_injected_unavailable_changes_nothing_and_the_retry_creates_one_trade() -> None:
    fake = FakePaymentProvider()
    fake.fail_next(2)
    for _ in range(2):
        with pytest.raises(ProviderUnavailable) as err:
            fake.create(create("F-1"))
        assert err.value.retryable
    assert fake.trades == {}
    fake.create(create("F-1"))
    assert list(fake.trades) == ["F-1"]


def test_a_lost_answer_did_its_work_and_the_retry_finds_it() -> None:
    fake = FakePaymentProvider()
    ref = paid(fake, "F-2", 1000)
    fake.fail_next(after=True)
    with pytest.raises(ProviderUnavailable):
        fake.refund(refund("F-2", "RF-1", 400))
    assert fake.refund(refund("F-2", "RF-1", 400)).state is RefundState.SUCCEEDED
    assert list(fake.refunds) == ["RF-1"] and fake.query(ref).state is PaymentState.PAID


def test_injected_rejection_carries_its_code() -> None:
    fake = FakePaymentProvider()
    fake.reject_next("ACQ.TRADE_HAS_SUCCESS")
    with pytest.raises(ProviderRejected) as err:
        fake.create(create("F-3"))
    assert err.value.code == "ACQ.TRADE_HAS_SUCCESS" and fake.trades == {}


FORWARD = {
    (PaymentState.NOT_FOUND, PaymentState.PENDING),
    (PaymentState.PENDING, PaymentState.PAID),
    (PaymentState.PENDING, PaymentState.CLOSED),
    (PaymentState.PAID, PaymentState.REFUNDED),
}
OPS = st.lists(
    st.sampled_from(["create", "pay", "close", "refund", "settle", "fail_settle"]), max_size=25
)


@given(OPS, st.booleans())
def test_statuses_only_move_forward(ops: list[str], pending_refunds: bool) -> None:
    fake = FakePaymentProvider(refunds_start_pending=pending_refunds)
    ref, seen = PaymentRef("P-1"), [PaymentState.NOT_FOUND]
    for i, op in enumerate(ops):
        try:
            if op == "create":
                fake.create(create("P-1", 1000))
            elif op == "pay":
                fake.pay("P-1")
            elif op == "close":
                fake.close(ClosePayment(ref, "close"))
            elif op == "refund":
                fake.refund(refund("P-1", f"RF-{i}", 400))
            else:
                pending = [
                    n for n, (_, r) in fake.refunds.items() if r.state is RefundState.PENDING
                ]
                for no in pending[:1]:
                    fake.settle_refund(no, succeeded=op == "settle")
        except (ProviderRejected, ValueError):
            pass
        now = fake.query(ref).state
        if now != seen[-1]:
            assert (seen[-1], now) in FORWARD, f"{seen[-1]} -> {now} after {op}"
            seen.append(now)
    refunded = sum(
        r.amount.amount
        for _, r in fake.refunds.values()
        if r.state is RefundState.SUCCEEDED and r.amount
    )
    assert refunded <= 1000
    assert (refunded == 1000) is (seen[-1] is PaymentState.REFUNDED)
