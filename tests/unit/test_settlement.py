"""Settlement rules without a server: matching a day's bill lines against our payments and
refunds (:func:`domain.settlement.match_day`), the day's figures (:func:`day_totals`), when a
day counts as complete, and the Stripe bill parser refusing bad lines with the line and field."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from adapters.payments.settlement import BillNotReady, BillRefused
from adapters.payments.stripe_settlement import (
    StripeSettlementConfig,
    StripeSettlementSource,
    parse_page,
)
from domain.settlement import (
    BillLine,
    DifferenceKind,
    LineKind,
    OurPayment,
    OurRefund,
    day_totals,
    match_day,
    ready_at,
)

DAY = date(2026, 12, 3)
AT = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)


def line(kind: LineKind, n: int, amount: int, fee: int = 0, **refs: Any) -> BillLine:
    return BillLine(
        line_id=f"txn_{n}", kind=kind, raw_type=kind.value, source_ref=refs.get("source"),
        payment_ref=refs.get("pi"), refund_ref=refs.get("re"), amount=amount, fee=fee,
        net=amount - fee, currency=refs.get("currency", "USD"), occurred_at=AT,
    )  # fmt: skip


def pay(n: int, amount: int = 1000, status: str = "PAID", expected: bool = True) -> OurPayment:
    return OurPayment(n, f"pi_{n}", amount, "USD", status, expected)


def ref(n: int, payment: int, amount: int, status: str = "SUCCEEDED") -> OurRefund:
    return OurRefund(n, payment, f"re_{n}", amount, "USD", status, expected=True)


def kinds(found: Any) -> set[tuple[str, str]]:
    return {(d.kind.value, d.ref) for d in found.differences}


def test_a_clean_day_has_no_differences_and_links_every_line() -> None:
    lines = [
        line(LineKind.CHARGE, 1, 1000, 59, pi="pi_1"),
        line(LineKind.CHARGE, 2, 2500, 103, pi="pi_2"),
        line(LineKind.REFUND, 3, -400, re="re_7", pi="pi_2"),
    ]
    found = match_day(lines, [pay(1), pay(2, 2500, "PARTIALLY_REFUNDED")], [ref(7, 2, 400)])
    assert found.differences == ()
    assert found.matches["txn_1"].payment_id == 1
    assert (found.matches["txn_3"].payment_id, found.matches["txn_3"].refund_id) == (2, 7)


def test_each_kind_of_difference_is_found_once() -> None:
    lines = [
        line(LineKind.CHARGE, 1, 1001, 59, pi="pi_1"),  # one cent more than we captured
        line(LineKind.CHARGE, 2, 700, 50, pi="pi_stray"),  # a charge we never saw
        line(LineKind.CHARGE, 3, 500, 45, pi="pi_3"),  # charged, but CLOSED here
        line(LineKind.REFUND, 4, -300, 5, re="re_8"),  # a refund with a fee
        line(LineKind.REFUND, 5, -200, re="re_dash"),  # a refund made at the provider
        line(LineKind.FEE, 6, -150),  # a fee belonging to no charge
        line(LineKind.DISPUTE, 7, -1000, 1500, pi="pi_1"),  # followed by the disputes desk
        line(LineKind.PAYOUT, 8, -5000),  # not revenue
    ]
    payments = [pay(1), pay(3, 500, "CLOSED", expected=False), pay(4, 900)]  # 4: no charge
    refunds = [ref(8, 1, 300), ref(9, 1, 100)]  # 9: no refund line
    found = match_day(lines, payments, refunds)
    assert kinds(found) == {
        ("amount_differs", "pi_1"), ("missing_here", "pi_stray"), ("status_differs", "pi_3"),
        ("unexpected_fee", "re_8"), ("missing_here", "re_dash"), ("unexpected_fee", "txn_6"),
        ("missing_there", "pi_4"), ("missing_there", "re_9"),
    }  # fmt: skip
    by_ref = {(d.kind, d.ref): d for d in found.differences}
    assert (by_ref[DifferenceKind.AMOUNT_DIFFERS, "pi_1"].ours,
            by_ref[DifferenceKind.AMOUNT_DIFFERS, "pi_1"].theirs) == (1000, 1001)  # fmt: skip
    assert by_ref[DifferenceKind.UNEXPECTED_FEE, "txn_6"].theirs == 150
    assert found.matches["txn_7"].payment_id == 1
    assert match_day(lines, payments, refunds) == found  # deterministic: recorded once


def test_a_refund_failure_expects_a_failed_refund() -> None:
    lines = [
        line(LineKind.REFUND, 1, -300, re="re_8"),
        line(LineKind.REFUND_FAILURE, 2, 300, re="re_8"),
    ]
    failed = OurRefund(8, 1, "re_8", 300, "USD", "FAILED")
    assert kinds(match_day(lines, [], [failed])) == set()
    succeeded = OurRefund(8, 1, "re_8", 300, "USD", "SUCCEEDED")
    assert kinds(match_day(lines, [], [succeeded])) == {("status_differs", "re_8")}


def test_day_totals_add_up_per_currency() -> None:
    lines = [
        line(LineKind.CHARGE, 1, 1000, 59),
        line(LineKind.CHARGE, 2, 2000, 88),
        line(LineKind.REFUND, 3, -500),
        line(LineKind.REFUND_FAILURE, 4, 100),
        line(LineKind.FEE, 5, -150),
        line(LineKind.DISPUTE, 6, -1000, 1500),
        line(LineKind.PAYOUT, 7, -9999),
        line(LineKind.CHARGE, 8, 5000, 175, currency="EUR"),
    ]
    totals = day_totals(lines)
    usd = totals["USD"]
    assert (usd.gross, usd.refunds, usd.fees, usd.adjustments) == (3000, 400, 1797, -1000)
    assert usd.net == usd.gross - usd.refunds - usd.fees + usd.adjustments == -197
    assert usd.net == sum(x.net for x in lines if x.currency == "USD" and x.kind != "payout")
    assert (totals["EUR"].gross, totals["EUR"].fees, totals["EUR"].net) == (5000, 175, 4825)


def test_a_day_is_complete_after_midnight_utc_plus_the_margin() -> None:
    assert ready_at(DAY, timedelta(hours=1)) == datetime(2026, 12, 4, 1, 0, tzinfo=UTC)
    source = StripeSettlementSource(
        StripeSettlementConfig(api_base="http://127.0.0.1:9", secret_key="sk_test_x")
    )
    with pytest.raises(BillNotReady) as exc:  # no request is made (the port is closed)
        source.fetch_bill(DAY, "balance", now=datetime(2026, 12, 4, 0, 59, tzinfo=UTC))
    assert exc.value.ready_at == datetime(2026, 12, 4, 1, 0, tzinfo=UTC)


def txn(**over: Any) -> dict[str, Any]:
    base = {
        "id": "txn_1", "object": "balance_transaction", "amount": 1000, "fee": 59, "net": 941,
        "currency": "usd", "created": int(AT.timestamp()), "type": "charge",
        "reporting_category": "charge",
        "source": {"id": "ch_1", "object": "charge", "payment_intent": "pi_1"},
    }  # fmt: skip
    return {**base, **over}


def test_stripe_lines_are_parsed_by_type() -> None:
    refund_source = {"id": "re_1", "object": "refund", "payment_intent": "pi_1"}
    dispute = {"id": "dp_1", "object": "dispute", "payment_intent": "pi_1"}
    lines = parse_page(
        [
            txn(),
            txn(id="txn_2", type="refund", amount=-300, fee=0, net=-300, source=refund_source),
            txn(id="txn_3", type="adjustment", amount=-1000, fee=1500, net=-2500,
                reporting_category="dispute", source=dispute),
            txn(id="txn_4", type="stripe_fee", amount=-150, fee=0, net=-150, source=None),
        ],
        DAY,
    )  # fmt: skip
    assert [x.kind for x in lines] == [
        LineKind.CHARGE, LineKind.REFUND, LineKind.DISPUTE, LineKind.FEE,
    ]  # fmt: skip
    assert (lines[0].payment_ref, lines[0].currency, lines[0].occurred_at) == ("pi_1", "USD", AT)
    assert (lines[1].refund_ref, lines[1].payment_ref) == ("re_1", "pi_1")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"type": "mystery"}, "line 1 (txn_1): unknown 'type' 'mystery'"),
        ({"net": 942}, "line 1 (txn_1): net 942 is not amount 1000 - fee 59"),
        ({"amount": "10.00"}, "line 1 (txn_1): 'amount' missing or not an integer"),
        ({"currency": "xxx"}, "line 1 (txn_1): 'currency' 'xxx' unknown"),
        ({"source": "ch_1"}, "line 1 (txn_1): 'source' of a charge not expanded"),
        ({"created": int(AT.timestamp()) + 86400}, "line 1 (txn_1): created outside 2026-12-03"),
        ({"id": None}, "line 1: 'id' missing"),
    ],
)
def test_a_bad_stripe_line_refuses_the_bill_naming_line_and_field(
    bad: dict[str, Any], message: str
) -> None:
    with pytest.raises(BillRefused) as exc:
        parse_page([txn(**bad)], DAY)
    assert message in str(exc.value)


def test_the_same_line_twice_refuses_the_bill() -> None:
    with pytest.raises(BillRefused, match="line 2 \\(txn_1\\): listed twice"):
        parse_page([txn(), txn()], DAY)


def cn_line(kind: LineKind, n: int, amount: int, fee: int = 0, **refs: Any) -> BillLine:
    """A line as the Chinese bills give it: the provider's reference may be absent, the
    merchant's own numbers are there."""
    return BillLine(
        line_id=f"row_{n}", kind=kind, raw_type=kind.value, source_ref=None,
        payment_ref=refs.get("trade_no"), refund_ref=refs.get("refund_id"), amount=amount,
        fee=fee, net=amount - fee, currency="CNY", occurred_at=AT,
        merchant_payment_ref=refs.get("out_trade_no"),
        merchant_refund_ref=refs.get("out_request_no"),
    )  # fmt: skip


def test_lines_are_matched_by_the_merchants_own_numbers_when_the_providers_are_unknown() -> None:
    payments = [
        OurPayment(1, None, 1000, "CNY", "PAID", True, out_trade_no="o-1"),  # trade_no never learnt
        OurPayment(2, "2026T2", 500, "CNY", "PARTIALLY_REFUNDED", True, out_trade_no="o-2"),
    ]
    refunds = [OurRefund(7, 2, None, 200, "CNY", "SUCCEEDED", True, refund_no="o-2-r1")]
    lines = [
        cn_line(LineKind.CHARGE, 1, 1000, 6, trade_no="2026T1", out_trade_no="o-1"),
        cn_line(LineKind.CHARGE, 2, 500, 3, trade_no="2026T2", out_trade_no="o-2"),
        # Alipay names a refund by the trade and our out_request_no only.
        cn_line(LineKind.REFUND, 3, -200, trade_no="2026T2", out_request_no="o-2-r1"),
    ]
    found = match_day(lines, payments, refunds)
    assert found.differences == ()
    assert found.matches["row_1"].payment_id == 1
    assert (found.matches["row_3"].payment_id, found.matches["row_3"].refund_id) == (2, 7)
    # Without its line, the refund is missing there, named by our number.
    alone = match_day(lines[:2], payments, refunds)
    assert kinds(alone) == {("missing_there", "o-2-r1")}


def test_a_merchant_number_never_matches_another_kind_of_record() -> None:
    """A refund line's out_request_no is looked up among refunds only, never among payments'
    out_trade_no: the same string on both sides must not link the wrong records."""
    payments = [OurPayment(1, "T1", 300, "CNY", "PAID", False, out_trade_no="same")]
    found = match_day([cn_line(LineKind.REFUND, 1, -300, out_request_no="same")], payments, [])
    assert kinds(found) == {("missing_here", "same")}
    assert found.matches["row_1"].payment_id is None


def test_chinese_bills_follow_the_beijing_day() -> None:
    from domain.settlement import bill_zone, day_bounds

    start, end = day_bounds(DAY, bill_zone("alipay"))
    assert (start, end) == (
        datetime(2026, 12, 2, 16, 0, tzinfo=UTC),
        datetime(2026, 12, 3, 16, 0, tzinfo=UTC),
    )
    assert bill_zone("wechatpay") is bill_zone("alipay")
    assert day_bounds(DAY, bill_zone("stripe"))[0] == datetime(2026, 12, 3, tzinfo=UTC)
    assert ready_at(DAY, timedelta(hours=9), bill_zone("alipay")) == datetime(
        2026, 12, 4, 1, 0, tzinfo=UTC
    )


def test_the_unresolved_gauge_knows_every_provider_with_bills() -> None:
    """The collector keeps its own list (importing the registry would pull every adapter into
    the scrape path): it must name every settlement source, so each has its zero series."""
    from adapters.registry import SETTLEMENT_PROVIDERS
    from observability import collector

    assert sorted(collector.SETTLEMENT_PROVIDERS) == sorted(SETTLEMENT_PROVIDERS)
