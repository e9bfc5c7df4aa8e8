"""Settlement reconciliation rules: a provider's bill for one day against our own records.

Pure: the service (:mod:`services.settlement`) loads the day's bill lines and the payments and
refunds they name, and stores what these functions decide. Amounts are signed integer minor
units as the provider books them (a charge is positive, a refund negative); ``fee`` is what the
provider kept (positive), ``net = amount - fee``.

Matching rules (:func:`match_day`):

1. A ``charge`` line belongs to our payment whose provider reference equals the line's
   ``payment_ref`` (Stripe's ``pi_…``, Alipay's ``trade_no``, WeChat Pay's ``transaction_id``),
   or else whose ``out_trade_no`` equals its ``merchant_payment_ref`` (the merchant's order
   number the Chinese bills carry: a payment whose provider reference we never learnt is still
   found). None → ``missing_here`` (money we never saw). Its
   amount or currency other than what we captured → ``amount_differs``. Our payment not in a
   captured status → ``status_differs``.
2. A ``refund`` line belongs to our refund whose provider reference equals its ``refund_ref``
   (``re_…``, WeChat's ``refund_id``), or else whose ``refund_no`` equals its
   ``merchant_refund_ref``
   (Alipay's ``out_request_no``, WeChat's ``out_refund_no``: Alipay gives a refund no id of its
   own). None → ``missing_here`` (a refund made at the provider). ``-amount`` or currency
   other than our refund's → ``amount_differs``; our refund neither SUCCEEDED nor PENDING →
   ``status_differs``; a fee charged on it → ``unexpected_fee`` (refunds cost nothing; a
   negative fee is the provider handing back part of the charge's fee, as WeChat Pay does,
   and is expected).
3. A ``refund_failure`` line gives a refund's money back: our refund should be FAILED, else
   ``status_differs`` (and its ``refund`` line then expects FAILED too); no refund of ours →
   ``missing_here``.
4. A ``dispute`` line is linked to its payment when known and is never a difference here: the
   disputes desk (:mod:`services.payments.disputes`) follows disputes.
5. A ``fee`` line (a fee that belongs to no charge, e.g. Stripe's ``stripe_fee``) →
   ``unexpected_fee``, for a person to confirm.
6. ``payout`` lines move money to the bank: not revenue, neither matched nor totalled.
7. ``missing_there``: each payment we expected on the day (captured, paid that day) that no
   charge line of the day names (by either reference), and each refund we expected (SUCCEEDED or
   PENDING, made that day) that no refund line names.
8. A difference is keyed by ``(kind, ref)``: deciding the same day twice gives the same keys, so
   the service records each once. Differences are findings: nothing here changes a payment.

Days: a bill covers one calendar day in its provider's time zone (:func:`bill_zone`): Stripe
reports in UTC, Alipay and WeChat Pay in China Standard Time (UTC+8, no daylight saving), so
their day D runs from D-1 16:00 UTC to D 16:00 UTC (:func:`day_bounds`).

Totals (:func:`day_totals`), per currency: ``gross`` (charges), ``refunds`` (refunded, net of
refund failures), ``fees`` (every fee, including fee lines), ``adjustments`` (disputes and other
adjustments) and ``net``, the sum of the lines' nets, so that
``net = gross - refunds - fees + adjustments``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from typing import Generic, TypeVar

T = TypeVar("T")


class LineKind(enum.StrEnum):
    CHARGE = "charge"
    REFUND = "refund"
    REFUND_FAILURE = "refund_failure"
    DISPUTE = "dispute"
    FEE = "fee"
    ADJUSTMENT = "adjustment"
    PAYOUT = "payout"


class DifferenceKind(enum.StrEnum):
    MISSING_HERE = "missing_here"  # the provider has it, we do not
    MISSING_THERE = "missing_there"  # we have it, the provider's bill does not
    AMOUNT_DIFFERS = "amount_differs"
    STATUS_DIFFERS = "status_differs"
    UNEXPECTED_FEE = "unexpected_fee"


#: China Standard Time: Alipay's and WeChat Pay's bills are per Beijing day (fixed +08:00).
CHINA_STANDARD_TIME = timezone(timedelta(hours=8), "CST")
_BILL_ZONES: Mapping[str, tzinfo] = {
    "alipay": CHINA_STANDARD_TIME,
    "wechatpay": CHINA_STANDARD_TIME,
}

#: Our payment statuses in which money was captured, and refund statuses the provider books.
CAPTURED_STATUSES = frozenset({"PAID", "PARTIALLY_REFUNDED", "REFUNDED"})
BOOKED_REFUND_STATUSES = frozenset({"SUCCEEDED", "PENDING"})


@dataclass(frozen=True, slots=True)
class BillLine:
    """One line of a provider's bill. ``line_id`` is unique within the bill (Stripe ``txn_…``);
    ``source_ref`` is the object it books (``ch_…``, ``re_…``, ``dp_…``); ``payment_ref`` and
    ``refund_ref`` the provider's references our records keep (``pi_…``, ``re_…``) when the line
    has one; ``merchant_payment_ref``/``merchant_refund_ref`` the merchant's own numbers (our
    ``out_trade_no``, our ``refund_no``) when the provider's bill carries them."""

    line_id: str
    kind: LineKind
    raw_type: str
    source_ref: str | None
    payment_ref: str | None
    refund_ref: str | None
    amount: int
    fee: int
    net: int
    currency: str
    occurred_at: datetime
    merchant_payment_ref: str | None = None  # our out_trade_no, when the bill names it
    merchant_refund_ref: str | None = None  # our refund_no, when the bill names it


@dataclass(frozen=True, slots=True)
class OurPayment:
    id: int
    provider_ref: str | None
    amount: int  # captured (or asked, before a capture)
    currency: str
    status: str
    expected: bool = False  # captured on the bill's day: its charge must be on the bill
    out_trade_no: str | None = None


@dataclass(frozen=True, slots=True)
class OurRefund:
    id: int
    payment_id: int
    provider_ref: str | None
    amount: int
    currency: str
    status: str
    expected: bool = False  # booked on the bill's day: its refund line must be on the bill
    refund_no: str | None = None


@dataclass(frozen=True, slots=True)
class Difference:
    """One finding. ``ref`` is the provider's reference it is about (unique per kind and day);
    ``ours``/``theirs`` are amounts in minor units where they apply."""

    kind: DifferenceKind
    ref: str
    currency: str
    ours: int | None
    theirs: int | None
    detail: str
    line_id: str | None = None
    payment_id: int | None = None
    refund_id: int | None = None


@dataclass(frozen=True, slots=True)
class LineMatch:
    """Which of our records a line belongs to (either may be None)."""

    payment_id: int | None = None
    refund_id: int | None = None


@dataclass(frozen=True, slots=True)
class DayMatch:
    matches: Mapping[str, LineMatch]  # by line_id
    differences: tuple[Difference, ...]


@dataclass
class Totals:
    gross: int = 0
    refunds: int = 0
    fees: int = 0
    adjustments: int = 0
    net: int = 0
    lines: int = 0


def bill_zone(provider: str) -> tzinfo:
    """The time zone whose calendar days ``provider``'s bills follow (UTC unless known)."""
    return _BILL_ZONES.get(provider, UTC)


def day_bounds(day: date, zone: tzinfo = UTC) -> tuple[datetime, datetime]:
    """The instants ``[start, end)``, in UTC, of the calendar ``day`` in ``zone``."""
    start = datetime.combine(day, time(), zone)
    return start.astimezone(UTC), (start + timedelta(days=1)).astimezone(UTC)


def ready_at(day: date, margin: timedelta, zone: tzinfo = UTC) -> datetime:
    """When the bill of ``day`` counts as complete: the day (in ``zone``) is over plus
    ``margin``."""
    return day_bounds(day, zone)[1] + margin


def match_day(
    lines: Sequence[BillLine],
    payments: Iterable[OurPayment],
    refunds: Iterable[OurRefund],
) -> DayMatch:
    """Match one day's ``lines`` against our ``payments`` and ``refunds`` (those the lines name
    plus those ``expected`` on the day); see the module docstring for the rules."""
    payments, refunds = list(payments), list(refunds)
    payment_of = _Index(payments, lambda p: p.provider_ref, lambda p: p.out_trade_no)
    refund_of = _Index(refunds, lambda r: r.provider_ref, lambda r: r.refund_no)
    matches: dict[str, LineMatch] = {}
    found: list[Difference] = []
    charged: set[int] = set()
    refunded: set[int] = set()
    failed = {
        id(r)
        for line in lines
        if line.kind is LineKind.REFUND_FAILURE
        and (r := refund_of.find(line.refund_ref, line.merchant_refund_ref)) is not None
    }
    for line in lines:
        payment = payment_of.find(line.payment_ref, line.merchant_payment_ref)
        refund = refund_of.find(line.refund_ref, line.merchant_refund_ref)
        match, diffs = _match_line(line, payment, refund, id(refund) in failed)
        matches[line.line_id] = match
        found.extend(diffs)
        if line.kind is LineKind.CHARGE and payment is not None:
            charged.add(payment.id)
        if line.kind is LineKind.REFUND and refund is not None:
            refunded.add(refund.id)
    for p in payments:
        if p.expected and p.id not in charged:
            found.append(
                Difference(
                    DifferenceKind.MISSING_THERE, str(p.provider_ref or p.out_trade_no),
                    p.currency, p.amount, None, "payment captured here, no charge on the bill",
                    payment_id=p.id,
                )
            )  # fmt: skip
    for r in refunds:
        if r.expected and r.id not in refunded:
            found.append(
                Difference(
                    DifferenceKind.MISSING_THERE, str(r.provider_ref or r.refund_no), r.currency,
                    r.amount, None, "refund made here, no refund on the bill",
                    payment_id=r.payment_id, refund_id=r.id,
                )
            )  # fmt: skip
    return DayMatch(matches, _unique(found))


class _Index(Generic[T]):
    """Our records by the provider's reference, and by the merchant's own number."""

    def __init__(
        self, items: Iterable[T], provider_ref: Callable[[T], str | None],
        merchant_ref: Callable[[T], str | None],
    ) -> None:  # fmt: skip
        self._by_provider = {ref: i for i in items if (ref := provider_ref(i))}
        self._by_merchant = {ref: i for i in items if (ref := merchant_ref(i))}

    def find(self, provider_ref: str | None, merchant_ref: str | None) -> T | None:
        found = self._by_provider.get(provider_ref) if provider_ref else None
        if found is None and merchant_ref:
            found = self._by_merchant.get(merchant_ref)
        return found


def _match_line(
    line: BillLine,
    payment: OurPayment | None,
    refund: OurRefund | None,
    failed_later: bool,
) -> tuple[LineMatch, list[Difference]]:
    ref = (
        line.refund_ref or line.merchant_refund_ref or line.payment_ref
        or line.merchant_payment_ref or line.source_ref or line.line_id
    )  # fmt: skip
    match = LineMatch(
        payment.id if payment else (refund.payment_id if refund else None),
        refund.id if refund else None,
    )

    def diff(kind: DifferenceKind, ours: int | None, theirs: int | None, detail: str) -> Difference:
        return Difference(
            kind, ref, line.currency, ours, theirs, detail, line.line_id, match.payment_id,
            match.refund_id,
        )  # fmt: skip

    out: list[Difference] = []
    if line.kind is LineKind.CHARGE:
        if payment is None:
            out.append(diff(DifferenceKind.MISSING_HERE, None, line.amount, "charge not ours"))
            return match, out
        if (payment.amount, payment.currency) != (line.amount, line.currency):
            out.append(
                diff(DifferenceKind.AMOUNT_DIFFERS, payment.amount, line.amount,
                     f"captured {payment.amount} {payment.currency}, "
                     f"charged {line.amount} {line.currency}")
            )  # fmt: skip
        if payment.status not in CAPTURED_STATUSES:
            out.append(
                diff(DifferenceKind.STATUS_DIFFERS, payment.amount, line.amount,
                     f"charged at the provider, {payment.status} here")
            )  # fmt: skip
    elif line.kind in (LineKind.REFUND, LineKind.REFUND_FAILURE):
        if refund is None:
            out.append(
                diff(DifferenceKind.MISSING_HERE, None, -line.amount, f"{line.kind} not ours")
            )
            return match, out
        failure = line.kind is LineKind.REFUND_FAILURE
        if (refund.amount, refund.currency) != (abs(line.amount), line.currency):
            out.append(
                diff(DifferenceKind.AMOUNT_DIFFERS, refund.amount, -line.amount,
                     f"refunded {refund.amount} {refund.currency} here, "
                     f"{abs(line.amount)} {line.currency} on the bill")
            )  # fmt: skip
        wanted = {"FAILED"} if failure or failed_later else BOOKED_REFUND_STATUSES
        if refund.status not in wanted:
            out.append(
                diff(DifferenceKind.STATUS_DIFFERS, refund.amount, -line.amount,
                     f"{line.kind} on the bill, {refund.status} here")
            )  # fmt: skip
        if line.fee > 0 and not failure:  # fee < 0: the charge's fee handed back (WeChat Pay)
            out.append(diff(DifferenceKind.UNEXPECTED_FEE, 0, line.fee, "fee on a refund"))
    elif line.kind is LineKind.FEE:
        fee = line.fee - line.amount  # a fee line books the fee as a negative amount
        out.append(diff(DifferenceKind.UNEXPECTED_FEE, 0, fee, f"{line.raw_type} line"))
    return match, out


def _unique(found: Iterable[Difference]) -> tuple[Difference, ...]:
    seen: dict[tuple[DifferenceKind, str], Difference] = {}
    for d in found:
        seen.setdefault((d.kind, d.ref), d)
    return tuple(seen.values())


def day_totals(lines: Iterable[BillLine]) -> dict[str, Totals]:
    """Gross, refunds, fees, adjustments and net per currency (see the module docstring)."""
    totals: dict[str, Totals] = {}
    for line in lines:
        if line.kind is LineKind.PAYOUT:
            continue
        t = totals.setdefault(line.currency, Totals())
        t.lines += 1
        t.net += line.net
        t.fees += line.fee
        if line.kind is LineKind.CHARGE:
            t.gross += line.amount
        elif line.kind in (LineKind.REFUND, LineKind.REFUND_FAILURE):
            t.refunds -= line.amount
        elif line.kind is LineKind.FEE:
            t.fees -= line.amount
        else:
            t.adjustments += line.amount
    return totals
