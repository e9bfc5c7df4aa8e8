"""Settlement reconciliation on real PostgreSQL against the Stripe simulator over HTTP: orders
paid and refunded through the real Stripe adapter and the payment services, then the day's bill
fetched (:func:`services.settlement.fetch`, with an injected clock: the day counts as complete
after midnight UTC plus the margin), matched and reported. A clean day; a day with a charge we
never saw, a refund Stripe does not list, an amount off by one cent and a fee; a bill not ready;
malformed pages refused with nothing stored, then fetched once they are good; repeats that
change nothing; the unresolved-differences gauge; and the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import requests
from sqlalchemy import select, text

from adapters.payments.stripe import StripeConfig, StripeProvider
from adapters.payments.stripe_settlement import StripeSettlementConfig, StripeSettlementSource
from domain.errors import ConflictError
from models import Payment, Refund, SettlementFile, SettlementLine
from models.db import get_engine
from observability.collector import PipelineCollector
from producers.intake import accept_message
from services import payments, settlement, settlement_match, settlement_report
from services.payments import PaymentConfig
from services.ports import Ports
from services.reservation import reserve_order
from services.unit_of_work import unit_of_work
from simulators.stripe import StripeSimulator
from simulators.stripe_settlement import stripe_fee
from tests.conftest import order_message
from tests.fakes import FakeGate
from tests.integration.settlement_support import (
    counts,
    differences,
    match_day,
    sim_control,
)

KEYS = {
    "secret_key": "sk_test_" + secrets.token_hex(16),
    "webhook_secret": "whsec_" + secrets.token_hex(16),
}
CONFIG = PaymentConfig(notify_base_url="http://127.0.0.1:9", create_redrive_s=30, first_query_s=5)
PRICE = 1000  # USD cents a unit


@pytest.fixture(scope="module")
def sim() -> Iterator[StripeSimulator]:
    simulator = StripeSimulator(KEYS["secret_key"], KEYS["webhook_secret"])
    simulator.start()
    yield simulator
    simulator.stop()


@pytest.fixture
def stripe(sim: StripeSimulator, catalog: Any) -> Iterator[StripeSimulator]:
    requests.post(f"{sim.url}/_sim/reset", timeout=5).raise_for_status()
    catalog({"P": 50}, price=PRICE, currency="USD")
    yield sim


def today() -> date:
    return datetime.now(UTC).date()


def complete(day: date) -> datetime:
    """A moment when ``day``'s bill counts as complete (the margin is one hour)."""
    return datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC) + timedelta(hours=2)


def source(sim: StripeSimulator, page_limit: int = 2) -> StripeSettlementSource:
    config = StripeSettlementConfig(
        api_base=sim.url, secret_key=KEYS["secret_key"], page_limit=page_limit, read_timeout=5
    )
    return StripeSettlementSource(config)


def provider(sim: StripeSimulator) -> StripeProvider:
    return StripeProvider(StripeConfig(api_base=sim.url, **KEYS, read_timeout=5))


def ports() -> Ports:
    return Ports(gate=FakeGate(), clock=lambda: datetime.now(UTC))


def paid_order(sim: StripeSimulator, quantity: int = 1) -> tuple[str, Payment]:
    """An order paid at the simulator and recorded PAID here through the payment services."""
    oid = accept_message(
        order_message("P", quantity, currency="USD", provider="stripe"), channel="test"
    ).order_id
    with unit_of_work() as s:
        assert (
            reserve_order(s, oid, now=datetime.now(UTC), payment_window_s=600).status == "RESERVED"
        )
    adapter = provider(sim)
    assert payments.create(oid, lambda _n: adapter, ports(), CONFIG).result == "created"
    with unit_of_work() as s:
        payment = s.scalars(select(Payment).where(Payment.order_id == oid)).one()
    sim.pay(payment.out_trade_no)
    payments.query(payment.id, lambda _n: adapter, ports())
    with unit_of_work() as s:
        payment = s.scalars(select(Payment).where(Payment.order_id == oid)).one()
        s.expunge(payment)
    assert payment.status == "PAID" and payment.captured_amount == PRICE * quantity
    return oid, payment


def refunded(sim: StripeSimulator, oid: str, amount: int) -> Refund:
    adapter = provider(sim)
    with unit_of_work() as s:
        followup = payments.refund_for_order(
            s, oid, amount=amount, refund_no=f"R-{oid[:8]}", reason="test", actor="test",
            now=datetime.now(UTC),
        )  # fmt: skip
    assert followup is not None
    payments.refund(int(followup.arg), lambda _n: adapter, ports())
    with unit_of_work() as s:
        refund = s.scalars(select(Refund).where(Refund.order_id == oid)).one()
        s.expunge(refund)
    assert refund.status == "SUCCEEDED" and refund.provider_refund_ref
    return refund


def control(sim: StripeSimulator, **body: Any) -> dict[str, Any]:
    return sim_control(sim.url, "/_sim/settlement", **body)


def match(day: date) -> settlement_match.MatchResult:
    return match_day("stripe", "default", day)


def test_a_clean_day_matches_and_repeats_change_nothing(stripe: StripeSimulator) -> None:
    day = today()
    (_, p1), (oid2, p2) = paid_order(stripe), paid_order(stripe, quantity=3)
    refund = refunded(stripe, oid2, 500)
    assert p1.provider_ref
    # A chargeback: the dispute desk's withdrawal (-amount, fee 1500) is on the bill as well.
    stripe.disputes.open(p1.provider_ref, reason="fraudulent", status="needs_response", due_in_s=9)
    src = source(stripe)  # two lines a page: four lines take two pages

    # The beat job: the day is over, so it fetches the bill and matches it.
    done = settlement.run_due(lambda _n: src, ["stripe"], now=complete(day), lookback_days=1)
    fetched, matched = done
    assert isinstance(fetched, settlement.FetchResult) and (fetched.status, fetched.lines) == (
        "stored", 4,
    )  # fmt: skip
    assert isinstance(matched, settlement_match.MatchResult) and matched.new_differences == 0
    with unit_of_work() as s:
        stored = s.scalars(select(SettlementFile)).one()
        assert stored.sha256 == hashlib.sha256(stored.content or b"").hexdigest()
        assert stored.size == len(stored.content or b"") and stored.matched_at is not None
        linked = set(s.execute(select(SettlementLine.kind, SettlementLine.payment_id)).tuples())
        refund_line = s.scalars(select(SettlementLine).where(SettlementLine.kind == "refund")).one()
    assert (refund_line.refund_id, refund_line.payment_id) == (refund.id, p2.id)
    assert linked == {("charge", p1.id), ("charge", p2.id), ("refund", p2.id), ("dispute", p1.id)}

    before = counts()
    (again,) = settlement.fetch(src, day, now=complete(day))
    assert again.status == "already_stored" and match(day).new_differences == 0
    assert counts() == before == (1, 4, 0)
    assert settlement.run_due(lambda _n: src, ["stripe"], now=complete(day), lookback_days=1) == [
        settlement.FetchResult("stripe", "default", day, "balance", "already_stored", lines=4)
    ]  # stored and matched: nothing to do

    with unit_of_work() as s:
        (fig,) = settlement_report.report(s, day)["figures"]
    fees = stripe_fee(PRICE) + stripe_fee(3 * PRICE) + 1500
    assert (fig["currency"], fig["gross"], fig["refunds"], fig["fees"]) == ("USD", 4000, 500, fees)
    assert fig["adjustments"] == -PRICE and fig["net"] == 4000 - 500 - fees - PRICE


def test_a_day_with_differences_records_each_once_and_changes_no_payment(
    stripe: StripeSimulator,
) -> None:
    day = today()
    _, shifted = paid_order(stripe)
    oid, _ = paid_order(stripe)
    omitted = refunded(stripe, oid, 300)
    control(stripe, action="shift", source=shifted.provider_ref, by=1)  # one cent more
    control(stripe, action="omit", source=omitted.provider_refund_ref)  # Stripe lists no refund
    stray = control(stripe, action="charge", amount=777, currency="usd")  # never ours
    fee = control(stripe, action="fee", amount=150, currency="usd")

    (fetched,) = settlement.fetch(source(stripe), day, now=complete(day))
    assert fetched.status == "stored"
    result = match(day)
    assert result.new_differences == result.differences == 4
    stray_pi = "pi_stray" + stray["source"][8:]
    assert differences() == {
        ("amount_differs", shifted.provider_ref), ("missing_there", omitted.provider_refund_ref),
        ("missing_here", stray_pi), ("unexpected_fee", fee["id"]),
    }  # fmt: skip
    assert match(day).new_differences == 0 and counts()[2] == 4
    with unit_of_work() as s:  # a difference is a finding: the payment keeps what we captured
        assert s.get(Payment, shifted.id).captured_amount == PRICE  # type: ignore[union-attr]
        report = settlement_report.report(s, day)
    amount = next(d for d in report["differences"] if d["kind"] == "amount_differs")
    assert (amount["ours"], amount["theirs"], amount["payment_id"]) == (1000, 1001, shifted.id)
    (fig,) = report["figures"]
    assert fig["gross"] == 1001 + 1000 + 777 and fig["refunds"] == 0
    assert fig["fees"] == 2 * stripe_fee(1000) + stripe_fee(777) + 150

    gauge = unresolved()
    assert gauge == {"under_1d": 4, "over_1d": 0}
    with unit_of_work() as s:
        s.execute(text("UPDATE settlement_differences SET created_at = now() - interval '2 days'"))
        settlement_report.resolve(s, amount["id"], actor="finance", note="Stripe fixed the amount",
                           now=datetime.now(UTC))  # fmt: skip
    assert unresolved() == {"under_1d": 0, "over_1d": 3}
    with unit_of_work() as s, pytest.raises(ConflictError, match="resolved by finance"):
        settlement_report.resolve(s, amount["id"], actor="x", note="again", now=datetime.now(UTC))


def unresolved() -> dict[str, int]:
    """``orderflow_settlement_differences_unresolved{provider="stripe"}`` as a scrape reads it."""
    with get_engine().connect() as conn:
        family, _ = PipelineCollector()._settlement(conn)
    return {
        x.labels["age"]: int(x.value) for x in family.samples if x.labels["provider"] == "stripe"
    }


def test_a_bill_not_ready_stores_nothing(stripe: StripeSimulator) -> None:
    paid_order(stripe)
    day = today()
    (result,) = settlement.fetch(
        source(stripe), day, now=complete(day) - timedelta(hours=1, minutes=1)
    )
    assert result.status == "not_ready" and "complete from" in result.detail
    assert counts() == (0, 0, 0)


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("truncate", "page 1: not valid JSON"), ("unknown_type", "unknown 'type' 'mystery'"),
     ("bad_net", "is not amount")],
)  # fmt: skip
def test_a_malformed_page_is_refused_with_nothing_stored_then_fetched_when_good(
    stripe: StripeSimulator, mode: str, reason: str
) -> None:
    for _ in range(3):
        paid_order(stripe)
    day = today()
    control(stripe, action="corrupt", mode=mode)
    (refused,) = settlement.fetch(source(stripe), day, now=complete(day))
    assert refused.status == "refused" and reason in refused.detail
    with unit_of_work() as s:
        row = s.scalars(select(SettlementFile)).one()
        assert (row.status, row.content, row.sha256, row.line_count) == ("refused", None, None, 0)
        assert reason in (row.error or "")
    assert counts() == (1, 0, 0)

    control(stripe, action="corrupt", mode=None)  # the provider's bill is good again
    (stored,) = settlement.fetch(source(stripe), day, now=complete(day))
    assert (stored.status, stored.lines) == ("stored", 3)
    with unit_of_work() as s:
        row = s.scalars(select(SettlementFile)).one()
        assert (row.status, row.error, row.attempts) == ("stored", None, 2)
    assert match(day).new_differences == 0


def cli(*args: str, sim: StripeSimulator) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STRIPE_API_BASE": sim.url, "STRIPE_SECRET_KEY": KEYS["secret_key"],
           "STRIPE_WEBHOOK_SECRET": KEYS["webhook_secret"], "COLUMNS": "200"}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "settlement", *args], capture_output=True, text=True,
        timeout=120, env=env,
    )  # fmt: skip


def test_the_cli_fetches_matches_reports_and_resolves(stripe: StripeSimulator) -> None:
    paid_order(stripe)
    control(stripe, action="fee", amount=150, currency="usd")
    day = today().isoformat()
    early = cli("fetch", "--date", day, sim=stripe)  # today is not over: not ready
    assert early.returncode == 1 and "not ready" in early.stderr
    assert len(early.stderr.strip().splitlines()) == 1 and "Traceback" not in early.stderr
    assert cli("match", "--date", day, sim=stripe).returncode == 1  # nothing stored yet
    settlement.fetch(source(stripe), today(), now=complete(today()))

    matched = cli("match", "--date", day, sim=stripe)
    assert matched.returncode == 0 and "1 new differences" in matched.stdout, matched.stderr
    shown = cli("report", "--date", day, sim=stripe)
    assert shown.returncode == 0, shown.stderr
    assert "10.00 USD" in shown.stdout and "unexpected_fee" in shown.stdout
    data = json.loads(cli("report", "--date", day, "--json", sim=stripe).stdout)
    (fig,) = data["figures"]
    fees = stripe_fee(PRICE) + 150
    assert fig["gross"]["amount_minor"] == 1000 and fig["fees"]["amount_minor"] == fees
    assert fig["net"] == {"amount_minor": 1000 - fees, "currency": "USD",
                          "display": f"{(1000 - fees) / 100:.2f} USD"}  # fmt: skip
    (diff,) = data["differences"]
    assert diff["kind"] == "unexpected_fee" and diff["theirs"]["amount_minor"] == 150

    done = cli(
        "resolve", str(diff["id"]), "--note", "Radar fee, expected", "--by", "nia", sim=stripe
    )
    assert done.returncode == 0 and "resolved by nia" in done.stdout, done.stderr
    again = cli("resolve", str(diff["id"]), "--note", "x", sim=stripe)
    assert again.returncode == 1 and "resolved by nia" in again.stderr
    bad = cli("report", "--date", "yesterday", sim=stripe)
    assert bad.returncode == 1 and "date: 'yesterday' is not a date" in bad.stderr
