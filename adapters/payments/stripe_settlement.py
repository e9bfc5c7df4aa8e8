"""Stripe's daily bill: the balance transactions created in one UTC day, as a settlement source
(:class:`adapters.payments.settlement.SettlementSource`).

Wire: ``GET /v1/balance_transactions`` with ``created[gte]``/``created[lt]`` (the day's bounds
in Unix seconds), ``limit=100``, ``expand[]=data.source`` (so that a charge names its
PaymentIntent and a refund its ``re_…`` id, the references our records keep), paged with
``starting_after`` (the last id of a page) while ``has_more`` is true. One keep-alive
``requests`` session; errors classified by :func:`adapters.payments.stripe.classify_error`.

Contracts:

* **When a day is complete.** Stripe books a balance transaction when the money moves, so the
  list for a day grows until the day ends; it has no "not ready" answer of its own. Day ``D``
  (UTC, Stripe's default reporting day) is fetched only from ``D+1 00:00 UTC + ready_margin``
  (one hour by default: transactions created at 23:59:59 are listed by then); asking earlier
  raises :class:`BillNotReady` without a request.
* **The raw file** is the day's balance transactions, in Stripe's order, as one canonical JSON
  list object (sorted keys, no spaces); its SHA-256 is what is stored. Stripe publishes no hash
  for this API, so verification is of the content:
* **Refused** (:class:`BillRefused`, naming the page or line and the field): a page that is not
  a JSON list object (truncated), ``has_more`` true on an empty page, a line without a valid
  ``id``/``amount``/``fee``/``net``/``currency``/``created``/``type``, ``net != amount - fee``,
  a line created outside the day asked for, the same id twice, a charge or refund whose
  ``source`` was not expanded, and an unknown ``type``.
* **Kinds** (:class:`domain.settlement.LineKind`): ``charge``/``payment`` → CHARGE;
  ``refund``/``payment_refund`` → REFUND; ``refund_failure``/``payment_failure_refund`` →
  REFUND_FAILURE; ``adjustment`` with ``reporting_category`` ``dispute``/``dispute_reversal`` (or a
  ``dp_`` source) → DISPUTE, other adjustments → ADJUSTMENT; ``stripe_fee``/``stripe_fx_fee``/
  ``tax_fee`` → FEE; payouts and transfers → PAYOUT (not revenue).
* Another merchant's bill cannot be asked for here: balance transactions belong to the account
  of the secret key. ``account`` is only the label the bills are stored under.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import requests

from adapters.payments.settlement import Bill, BillNotReady, BillRefused
from adapters.payments.stripe import classify_error
from domain.errors import ProviderRejected, ProviderUnavailable
from domain.money import CURRENCY_EXPONENTS
from domain.settlement import BillLine, LineKind, day_bounds, ready_at

__all__ = ["BILL_TYPE", "StripeSettlementConfig", "StripeSettlementSource", "parse_page"]

NAME = "stripe"
BILL_TYPE = "balance"
PAGE_LIMIT = 100
_NETWORK_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)
_KINDS: Mapping[str, LineKind] = {
    "charge": LineKind.CHARGE,
    "payment": LineKind.CHARGE,
    "refund": LineKind.REFUND,
    "payment_refund": LineKind.REFUND,
    "refund_failure": LineKind.REFUND_FAILURE,
    "payment_failure_refund": LineKind.REFUND_FAILURE,
    "adjustment": LineKind.ADJUSTMENT,
    "stripe_fee": LineKind.FEE,
    "stripe_fx_fee": LineKind.FEE,
    "tax_fee": LineKind.FEE,
    "payout": LineKind.PAYOUT,
    "payout_cancel": LineKind.PAYOUT,
    "payout_failure": LineKind.PAYOUT,
    "transfer": LineKind.PAYOUT,
    "transfer_cancel": LineKind.PAYOUT,
    "transfer_failure": LineKind.PAYOUT,
}
_DISPUTE_CATEGORIES = frozenset({"dispute", "dispute_reversal"})
_NEEDS_SOURCE = frozenset({LineKind.CHARGE, LineKind.REFUND, LineKind.REFUND_FAILURE})

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class StripeSettlementConfig:
    api_base: str
    secret_key: str = field(repr=False)
    account: str = "default"
    api_version: str | None = None
    ready_margin: timedelta = timedelta(hours=1)
    page_limit: int = PAGE_LIMIT  # Stripe allows 1-100; tests page with less
    connect_timeout: float = 3.05
    read_timeout: float = 30.0


class StripeSettlementSource:
    """Stripe balance transactions per UTC day (see the module docstring)."""

    name = NAME
    bill_types: tuple[str, ...] = (BILL_TYPE,)

    def __init__(
        self, config: StripeSettlementConfig, session: requests.Session | None = None
    ) -> None:
        self._config = config
        self._session = session or requests.Session()
        self._base = config.api_base.rstrip("/")
        self.account = config.account

    def fetch_bill(self, day: date, bill_type: str, *, now: datetime) -> Bill:
        """All of ``day``'s balance transactions, verified and parsed, or an error (above)."""
        if bill_type != BILL_TYPE:
            raise ProviderRejected(NAME, f"bill_type: unknown {bill_type!r}", code="bill_type")
        due = ready_at(day, self._config.ready_margin)
        if now < due:
            raise BillNotReady(
                NAME, f"the bill of {day} is complete from {due:%Y-%m-%d %H:%M} UTC", due
            )
        start, end = day_bounds(day)
        query = [
            ("created[gte]", str(int(start.timestamp()))),
            ("created[lt]", str(int(end.timestamp()))),
            ("limit", str(self._config.page_limit)),
            ("expand[]", "data.source"),
        ]
        items: list[Json] = []
        cursor: str | None = None
        for page_no in range(1, 100_000):
            page = self._get_page(query + ([("starting_after", cursor)] if cursor else []), page_no)
            data, has_more = _page_items(page, page_no)
            items.extend(data)
            if not has_more:
                break
            cursor = _line_id(data[-1], len(items))
        raw = json.dumps({"object": "list", "data": items}, sort_keys=True, separators=(",", ":"))
        lines = parse_page(items, day)
        return Bill(NAME, self.account, day, bill_type, raw.encode(), lines)

    def _get_page(self, query: list[tuple[str, str]], page_no: int) -> Any:
        headers = {"Authorization": f"Bearer {self._config.secret_key}", "User-Agent": "orderflow"}
        if self._config.api_version:
            headers["Stripe-Version"] = self._config.api_version
        path = "/v1/balance_transactions"
        try:
            response = self._session.get(
                self._base + path, params=query, headers=headers,
                timeout=(self._config.connect_timeout, self._config.read_timeout),
            )  # fmt: skip
        except _NETWORK_ERRORS as exc:
            raise ProviderUnavailable(NAME, f"GET {path}: {exc!r}", code="network") from exc
        except requests.RequestException as exc:
            raise ProviderRejected(NAME, f"GET {path}: {exc!r}", code="request_error") from exc
        if not 200 <= response.status_code < 300:
            raise classify_error(response)
        try:
            return response.json()
        except ValueError:
            raise BillRefused(
                NAME, f"page {page_no}: not valid JSON ({len(response.content)} bytes; truncated?)"
            ) from None


def _page_items(page: Any, page_no: int) -> tuple[list[Json], bool]:
    if not isinstance(page, dict) or page.get("object") != "list":
        raise BillRefused(NAME, f"page {page_no}: not a list object")
    data, has_more = page.get("data"), page.get("has_more")
    if not isinstance(data, list) or not isinstance(has_more, bool):
        raise BillRefused(NAME, f"page {page_no}: 'data' or 'has_more' missing")
    if has_more and not data:
        raise BillRefused(NAME, f"page {page_no}: has_more on an empty page")
    if not all(isinstance(item, dict) for item in data):
        raise BillRefused(NAME, f"page {page_no}: a line is not an object")
    return data, has_more


def parse_page(items: list[Json], day: date) -> tuple[BillLine, ...]:
    """Balance transactions → bill lines, refusing the bill at the first bad line."""
    start, end = day_bounds(day)
    seen: set[str] = set()
    lines: list[BillLine] = []
    for n, item in enumerate(items, start=1):
        line = _line(item, n)
        if not start <= line.occurred_at < end:
            raise BillRefused(NAME, f"line {n} ({line.line_id}): created outside {day}")
        if line.line_id in seen:
            raise BillRefused(NAME, f"line {n} ({line.line_id}): listed twice")
        seen.add(line.line_id)
        lines.append(line)
    return tuple(lines)


def _line(item: Json, n: int) -> BillLine:
    line_id = _line_id(item, n)

    def bad(what: str) -> BillRefused:
        return BillRefused(NAME, f"line {n} ({line_id}): {what}")

    def integer(key: str) -> int:
        value = item.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(f"{key!r} missing or not an integer")
        return value

    amount, fee, net, created = (integer(k) for k in ("amount", "fee", "net", "created"))
    if net != amount - fee:
        raise bad(f"net {net} is not amount {amount} - fee {fee}")
    if not 0 <= created < 2**35:  # a Unix time a datetime can hold
        raise bad(f"'created' {created} out of range")
    currency = item.get("currency")
    if not isinstance(currency, str) or currency.upper() not in CURRENCY_EXPONENTS:
        raise bad(f"'currency' {currency!r} unknown")
    raw_type = item.get("type")
    kind = _KINDS.get(raw_type) if isinstance(raw_type, str) else None
    if kind is None:
        raise bad(f"unknown 'type' {raw_type!r}")
    source = item.get("source")
    source_id = source.get("id") if isinstance(source, dict) else source
    if kind is LineKind.ADJUSTMENT and (
        item.get("reporting_category") in _DISPUTE_CATEGORIES
        or (isinstance(source_id, str) and source_id.startswith("dp_"))
    ):
        kind = LineKind.DISPUTE
    if kind in _NEEDS_SOURCE and not isinstance(source, dict):
        raise bad(f"'source' of a {raw_type} not expanded")
    refund_ref = source_id if kind in (LineKind.REFUND, LineKind.REFUND_FAILURE) else None
    payment_ref = source.get("payment_intent") if isinstance(source, dict) else None
    return BillLine(
        line_id=line_id, kind=kind, raw_type=str(raw_type),
        source_ref=source_id if isinstance(source_id, str) else None,
        payment_ref=payment_ref if isinstance(payment_ref, str) else None,
        refund_ref=refund_ref if isinstance(refund_ref, str) else None,
        amount=amount, fee=fee, net=net, currency=currency.upper(),
        occurred_at=datetime.fromtimestamp(created, UTC),
    )  # fmt: skip


def _line_id(item: Json, n: int) -> str:
    value = item.get("id")
    if not isinstance(value, str) or not value:
        raise BillRefused(NAME, f"line {n}: 'id' missing")
    return value
