"""Alipay settlement bills on real PostgreSQL against the Alipay simulator over HTTP: orders paid
and refunded through the real Alipay adapter and the payment services, then the day's bills
(``trade`` and ``signcustomer``) fetched through ``alipay.data.dataservice.bill.downloadurl.query``
and the ZIP it points to, matched and reported. The simulator's bill clock is set to the next
Beijing morning (its bills are published at 09:00) and the source is given the same ``now``.

A clean day; a day with a payment we never saw, a refund Alipay does not list, an amount off by
one fen and a fee; each corrupt file refused with nothing stored, then fetched once repaired; an
expired download link; a bill not ready yet; console (dashboard) refunds, recorded or not."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select

from adapters.payments.alipay import AlipayConfig, AlipayProvider
from adapters.payments.alipay_settlement import AlipaySettlementConfig, AlipaySettlementSource
from domain.errors import ProviderUnavailable
from domain.settlement import CHINA_STANDARD_TIME
from models import Payment, Refund, SettlementFile, SettlementLine
from producers.intake import accept_message
from services import payments, settlement, settlement_match, settlement_report
from services.payments import PaymentConfig, provider_refunds
from services.ports import Ports
from services.reservation import reserve_order
from services.unit_of_work import unit_of_work
from simulators.alipay import AlipaySimulator
from simulators.alipay_bills import OTHER_PID, alipay_fee
from tests.conftest import order_message
from tests.fakes import FakeGate
from tests.integration.adapters.alipay.support import APP_ID, new_key, private_pem, public_pem
from tests.integration.settlement_support import (
    counts,
    differences,
    match_day,
    sim_control,
    statuses,
)

CONFIG = PaymentConfig(notify_base_url="http://127.0.0.1:9", create_redrive_s=30, first_query_s=5)
PRICE = 1000  # fen a unit


@pytest.fixture(scope="module")
def app_key() -> rsa.RSAPrivateKey:
    return new_key()


@pytest.fixture(scope="module")
def sim(app_key: rsa.RSAPrivateKey) -> Iterator[AlipaySimulator]:
    simulator = AlipaySimulator(APP_ID, public_pem(app_key), notify_retry_delays=(0.1,)).start()
    yield simulator
    simulator.stop()


@pytest.fixture
def alipay(sim: AlipaySimulator, catalog: Any) -> Iterator[AlipaySimulator]:
    sim.reset()  # trades, refunds, options and the bill desk (clock, faults)
    catalog({"P": 50}, price=PRICE, currency="CNY")
    yield sim


def today() -> date:
    """The Beijing day, Alipay's bill day."""
    return datetime.now(CHINA_STANDARD_TIME).date()


def morning_after(day: date, hour: int = 10) -> datetime:
    return datetime.combine(day + timedelta(days=1), time(hour), CHINA_STANDARD_TIME)


def config(sim: AlipaySimulator, app_key: rsa.RSAPrivateKey) -> AlipayConfig:
    return AlipayConfig(
        gateway_url=sim.gateway_url, app_id=APP_ID, app_private_key_pem=private_pem(app_key),
        alipay_public_key_pem=sim.alipay_public_key_pem, read_timeout=5,
    )  # fmt: skip


def session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # never route 127.0.0.1 through an environment proxy
    return s


def source(sim: AlipaySimulator, app_key: rsa.RSAPrivateKey) -> AlipaySettlementSource:
    settle = AlipaySettlementConfig(config(sim, app_key), pid=sim.seller_id, download_timeout=5)
    return AlipaySettlementSource(settle, session())


def ports() -> Ports:
    return Ports(gate=FakeGate(), clock=lambda: datetime.now(UTC))


def control(sim: AlipaySimulator, **body: Any) -> dict[str, Any]:
    return sim_control(sim.url, "/_sim/bills", **body)


def bills_published(sim: AlipaySimulator, day: date) -> datetime:
    """Move the simulator's bill clock to the morning after ``day``; returns that moment."""
    now = morning_after(day)
    control(sim, action="clock", now=now.isoformat())
    return now


def paid_order(sim: AlipaySimulator, adapter: AlipayProvider, quantity: int = 1) -> Payment:
    """An order paid at the simulator and recorded PAID here through the payment services."""
    oid = accept_message(order_message("P", quantity, provider="alipay"), channel="test").order_id
    with unit_of_work() as s:
        reserved = reserve_order(s, oid, now=datetime.now(UTC), payment_window_s=600)
        assert reserved.status == "RESERVED"
    assert payments.create(oid, lambda _n: adapter, ports(), CONFIG).result == "created"
    with unit_of_work() as s:
        out_trade_no = s.scalars(select(Payment.out_trade_no).where(Payment.order_id == oid)).one()
    sim.pay(out_trade_no)
    with unit_of_work() as s:
        payment_id = s.scalars(select(Payment.id).where(Payment.order_id == oid)).one()
    payments.query(payment_id, lambda _n: adapter, ports())
    with unit_of_work() as s:
        payment = s.get_one(Payment, payment_id)
        s.expunge(payment)
    assert payment.status == "PAID" and payment.captured_amount == PRICE * quantity
    assert payment.provider_ref  # Alipay's trade_no, learnt from the query
    return payment


def refunded(adapter: AlipayProvider, payment: Payment, amount: int) -> Refund:
    with unit_of_work() as s:
        followup = payments.refund_for_order(
            s, payment.order_id, amount=amount, refund_no=f"R-{payment.order_id[:8]}",
            reason="test", actor="test", now=datetime.now(UTC),
        )  # fmt: skip
    assert followup is not None
    payments.refund(int(followup.arg), lambda _n: adapter, ports())
    with unit_of_work() as s:
        refund = s.scalars(select(Refund).where(Refund.order_id == payment.order_id)).one()
        s.expunge(refund)
    assert refund.status == "SUCCEEDED"
    return refund


def match(day: date) -> settlement_match.MatchResult:
    return match_day("alipay", "default", day)


def gateway_calls(sim: AlipaySimulator) -> int:
    return sum(1 for _method, path, _status in sim.request_log if path == "/gateway.do")


def test_a_clean_day_matches_reports_and_repeats_change_nothing(
    alipay: AlipaySimulator, app_key: rsa.RSAPrivateKey
) -> None:
    adapter = AlipayProvider(config(alipay, app_key), session())
    day = today()
    p1, p2 = paid_order(alipay, adapter), paid_order(alipay, adapter, quantity=3)
    refund = refunded(adapter, p2, 500)
    src = source(alipay, app_key)
    now = bills_published(alipay, day)

    done = settlement.run_due(lambda _n: src, ["alipay"], now=now, lookback_days=1)
    fetched = [r for r in done if isinstance(r, settlement.FetchResult)]
    (matched,) = [r for r in done if isinstance(r, settlement_match.MatchResult)]
    # The account-flow bill is verified and stored, but its rows repeat the trade bill's: no lines.
    assert statuses(fetched) == {"trade": ("stored", 3), "signcustomer": ("stored", 0)}
    assert matched.new_differences == 0 and matched.lines == 3
    with unit_of_work() as s:
        files = s.scalars(select(SettlementFile)).all()
        assert {f.bill_type for f in files} == {"trade", "signcustomer"}
        assert all(f.content and f.content[:2] == b"PK" and f.matched_at for f in files)
        linked = set(
            s.execute(select(SettlementLine.kind, SettlementLine.payment_id,
                             SettlementLine.refund_id)).tuples()
        )  # fmt: skip
    assert linked == {("charge", p1.id, None), ("charge", p2.id, None),
                      ("refund", p2.id, refund.id)}  # fmt: skip

    before = counts()
    again = settlement.fetch(src, day, now=now)
    assert statuses(again) == {"trade": ("already_stored", 3),
                               "signcustomer": ("already_stored", 0)}  # fmt: skip
    assert match(day).new_differences == 0 and counts() == before == (2, 3, 0)

    with unit_of_work() as s:
        # one figure: no double count
        (fig,) = settlement_report.report(s, day, "alipay")["figures"]
    fees = alipay_fee(PRICE) + alipay_fee(3 * PRICE)
    assert (fig["bill_type"], fig["currency"], fig["gross"], fig["refunds"], fig["fees"]) == (
        "trade", "CNY", 4000, 500, fees,
    )  # fmt: skip
    assert fig["net"] == 4000 - 500 - fees and fig["adjustments"] == 0


def test_a_day_with_differences_records_each_once_and_changes_no_payment(
    alipay: AlipaySimulator, app_key: rsa.RSAPrivateKey
) -> None:
    adapter = AlipayProvider(config(alipay, app_key), session())
    day = today()
    shifted, other = paid_order(alipay, adapter), paid_order(alipay, adapter)
    omitted = refunded(adapter, other, 300)
    control(alipay, action="shift", ref=shifted.provider_ref, by=1)  # one fen more
    control(alipay, action="omit", ref=omitted.refund_no)  # Alipay lists no such refund
    stray = control(alipay, action="trade", amount="7.77")  # a payment we never saw
    control(alipay, action="fee", amount="1.50")  # a fee that belongs to no payment

    results = settlement.fetch(source(alipay, app_key), day, now=bills_published(alipay, day))
    assert statuses(results) == {"trade": ("stored", 3), "signcustomer": ("stored", 1)}
    result = match(day)
    assert result.new_differences == result.differences == 4
    found = differences()
    fee_ref = next(ref for kind, ref in found if kind == "unexpected_fee")
    assert found == {
        ("amount_differs", shifted.provider_ref), ("missing_there", omitted.refund_no),
        ("missing_here", stray["trade_no"]), ("unexpected_fee", fee_ref),
    }  # fmt: skip
    assert match(day).new_differences == 0 and counts()[2] == 4
    with unit_of_work() as s:  # a difference is a finding: the payment keeps what we captured
        assert s.get_one(Payment, shifted.id).captured_amount == PRICE
        report = settlement_report.report(s, day, "alipay")
    by_kind = {d["kind"]: d for d in report["differences"]}
    assert (by_kind["amount_differs"]["ours"], by_kind["amount_differs"]["theirs"]) == (1000, 1001)
    assert (by_kind["missing_here"]["theirs"], by_kind["unexpected_fee"]["theirs"]) == (777, 150)
    figures = {f["bill_type"]: f for f in report["figures"]}
    assert figures["trade"]["gross"] == 1001 + 1000 + 777 and figures["trade"]["refunds"] == 0
    assert figures["trade"]["fees"] == alipay_fee(1001) + alipay_fee(1000) + alipay_fee(777)
    assert (figures["signcustomer"]["fees"], figures["signcustomer"]["net"]) == (150, -150)


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("truncate", "zip: not a valid archive"), ("utf8", "encoded as UTF-8, not GBK"),
     ("unknown_type", "unknown 业务类型 '神秘业务'"),
     ("other_account", f"bill of account {OTHER_PID}, not ours"),
     ("bad_total", "differs from the rows'")],
)  # fmt: skip
def test_a_corrupt_bill_is_refused_with_nothing_stored_then_fetched_when_repaired(
    alipay: AlipaySimulator, app_key: rsa.RSAPrivateKey, mode: str, reason: str
) -> None:
    adapter = AlipayProvider(config(alipay, app_key), session())
    paid_order(alipay, adapter)
    day = today()
    now = bills_published(alipay, day)
    control(alipay, action="corrupt", mode=mode)
    refused = settlement.fetch(source(alipay, app_key), day, now=now)
    assert [r.status for r in refused] == ["refused", "refused"]
    assert all(reason in r.detail for r in refused), [r.detail for r in refused]
    with unit_of_work() as s:
        rows = s.scalars(select(SettlementFile)).all()
        assert {(r.status, r.content, r.sha256, r.line_count) for r in rows} == {
            ("refused", None, None, 0)
        }
    assert counts() == (2, 0, 0)

    control(alipay, action="corrupt", mode=None)  # Alipay's bill is good again
    stored = settlement.fetch(source(alipay, app_key), day, now=now)
    assert statuses(stored) == {"trade": ("stored", 1), "signcustomer": ("stored", 0)}
    with unit_of_work() as s:
        assert {(f.status, f.error, f.attempts) for f in s.scalars(select(SettlementFile))} == {
            ("stored", None, 2)
        }
    assert match(day).new_differences == 0


def test_an_expired_download_link_is_retried_later_and_stores_nothing(
    alipay: AlipaySimulator, app_key: rsa.RSAPrivateKey
) -> None:
    day = today()
    now = bills_published(alipay, day)
    control(alipay, action="ttl", seconds=0)  # the link is dead before it is followed
    with pytest.raises(ProviderUnavailable, match="link expired"):
        settlement.fetch(source(alipay, app_key), day, now=now)
    assert counts() == (0, 0, 0)
    control(alipay, action="ttl", seconds=30)
    assert statuses(settlement.fetch(source(alipay, app_key), day, now=now)) == {
        "trade": ("stored", 0), "signcustomer": ("stored", 0),
    }  # fmt: skip


def test_a_bill_not_ready_stores_nothing(
    alipay: AlipaySimulator, app_key: rsa.RSAPrivateKey
) -> None:
    day = today()
    src = source(alipay, app_key)
    calls = gateway_calls(alipay)
    tonight = datetime.combine(day, time(23, 59), CHINA_STANDARD_TIME)
    early = settlement.fetch(src, day, now=tonight)  # the day is not over: not even asked
    assert [r.status for r in early] == ["not_ready", "not_ready"]
    assert "published" in early[0].detail and gateway_calls(alipay) == calls

    dawn = morning_after(day, hour=8)
    control(alipay, action="clock", now=dawn.isoformat())  # asked, but not generated yet
    asked = settlement.fetch(src, day, now=dawn)
    assert [r.status for r in asked] == ["not_ready", "not_ready"]
    assert all("isp.bill" not in r.detail and "not ready" in r.detail for r in asked)
    assert gateway_calls(alipay) == calls + 2 and counts() == (0, 0, 0)


def test_console_refunds_appear_as_refund_lines_matched_when_recorded(
    alipay: AlipaySimulator, app_key: rsa.RSAPrivateKey
) -> None:
    adapter = AlipayProvider(config(alipay, app_key), session())
    day = today()
    recorded, unknown = paid_order(alipay, adapter), paid_order(alipay, adapter)
    alipay.dashboard_refund(recorded.out_trade_no, "1.00")
    notify = alipay.ledger()["notifications"][-1]["body"]  # what the webhook would receive
    note = adapter.parse_notification({}, notify.encode())
    with unit_of_work() as s:
        (lookup,) = payments.apply_notification(s, "alipay", note, now=datetime.now(UTC))
    provider_refunds.lookup_refunds(str(lookup.arg), lambda _n: adapter, ports())
    with unit_of_work() as s:
        ours = s.scalars(select(Refund).where(Refund.payment_id == recorded.id)).one()
        s.expunge(ours)
    assert (ours.actor, ours.amount, ours.status) == ("provider", 100, "SUCCEEDED")
    nobody_knows = alipay.dashboard_refund(unknown.out_trade_no, "2.00")  # never notified here

    results = settlement.fetch(source(alipay, app_key), day, now=bills_published(alipay, day))
    assert statuses(results) == {"trade": ("stored", 4), "signcustomer": ("stored", 0)}
    assert match(day).new_differences == 1
    assert differences() == {("missing_here", nobody_knows["out_request_no"])}
    with unit_of_work() as s:
        refund_lines = s.execute(
            select(SettlementLine.merchant_refund_ref, SettlementLine.refund_id,
                   SettlementLine.payment_id, SettlementLine.amount)
            .where(SettlementLine.kind == "refund")
        ).all()  # fmt: skip
    assert {tuple(r) for r in refund_lines} == {
        (ours.refund_no.split("-", 2)[2], ours.id, recorded.id, -100),
        (nobody_knows["out_request_no"], None, unknown.id, -200),
    }
