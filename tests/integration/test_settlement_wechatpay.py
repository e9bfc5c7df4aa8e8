"""WeChat Pay bills (对账单) on real PostgreSQL against the WeChat Pay simulator over HTTP: orders
paid and refunded through the real WeChat Pay adapter and the payment services, then the day's
trade and fund flow bills fetched (:func:`services.settlement.fetch`; the day is Beijing's, its
bills ready from D+1 10:00, the simulator's clock set to match), matched and reported. A clean
day; a day with a trade we never saw, a refund the bill omits, an amount off by one fen and a fee
the rate does not explain; a dashboard refund; each corrupted file refused with nothing stored,
then fetched once repaired; bills not ready (our clock, then WeChat's 账单生成中) and a day
without trades; the download's ``Wechatpay-Serial`` in platform-certificate mode."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from adapters.payments.wechatpay import WeChatPayConfig, WeChatPayProvider
from adapters.payments.wechatpay_settlement import (
    FUNDFLOW,
    TRADEBILL,
    WeChatPaySettlementConfig,
    WeChatPaySettlementSource,
)
from domain.settlement import CHINA_STANDARD_TIME as CST
from models import Payment, Refund, SettlementFile, SettlementLine
from producers.intake import accept_message
from services import payments, settlement, settlement_match, settlement_report
from services.payments import PaymentConfig
from services.reservation import reserve_order
from services.unit_of_work import unit_of_work
from simulators.wechatpay import WeChatPaySimulator
from simulators.wechatpay_bills import wechat_fee
from tests.conftest import order_message
from tests.integration.adapters.wechatpay.support import (
    APPID,
    MCHID,
    MERCHANT_SERIAL,
    Keys,
    rsa_pems,
)
from tests.integration.settlement_support import (
    counts,
    differences,
    match_day,
    sim_control,
    statuses,
)
from tests.integration.test_payment_services import ports

CONFIG = PaymentConfig(notify_base_url="http://127.0.0.1:9", create_redrive_s=30, first_query_s=5)
PRICE = 1000  # fen a unit


@pytest.fixture(scope="module")
def keys() -> Keys:
    private, public = rsa_pems()
    return Keys(private, public, secrets.token_hex(16).encode("ascii"))


def simulator(keys: Keys, **options: Any) -> WeChatPaySimulator:
    return WeChatPaySimulator(
        mchid=MCHID, appid=APPID, merchant_serial_no=MERCHANT_SERIAL,
        merchant_public_key_pem=keys.merchant_public_pem, api_v3_key=keys.api_v3_key,
        notify_retry_delays=(0.05,), **options,
    )  # fmt: skip


@pytest.fixture(scope="module")
def sim(keys: Keys) -> Iterator[WeChatPaySimulator]:
    with simulator(keys) as running:
        yield running


@pytest.fixture
def wechat(sim: WeChatPaySimulator, catalog: Any) -> WeChatPaySimulator:
    sim.reset()
    catalog({"P": 50}, price=PRICE, currency="CNY")
    return sim


def payment_config(sim: WeChatPaySimulator, keys: Keys, **overrides: Any) -> WeChatPayConfig:
    settings: dict[str, Any] = {
        "base_url": sim.url, "mchid": MCHID, "appid": APPID,
        "merchant_serial_no": MERCHANT_SERIAL,
        "merchant_private_key_pem": keys.merchant_private_pem, "api_v3_key": keys.api_v3_key,
        "platform_public_keys": {sim.platform_serial: sim.platform_public_key_pem},
        "connect_timeout": 1.0, "read_timeout": 5.0,
    }  # fmt: skip
    settings.update(overrides)
    return WeChatPayConfig(**settings)


def source(sim: WeChatPaySimulator, keys: Keys, *, gzip: bool = True) -> WeChatPaySettlementSource:
    config = WeChatPaySettlementConfig(payment=payment_config(sim, keys), gzip=gzip)
    return WeChatPaySettlementSource(config)


def today() -> date:
    return datetime.now(CST).date()  # a WeChat bill's day is Beijing's


def complete(day: date) -> datetime:
    """A moment when ``day``'s bills are out (D+1 10:00 Beijing time, plus an hour)."""
    return datetime.combine(day + timedelta(days=1), time(11), CST)


def control(sim: WeChatPaySimulator, **body: Any) -> dict[str, Any]:
    return sim_control(sim.url, "/_sim/bills", **body)


def bills_out(sim: WeChatPaySimulator, day: date) -> datetime:
    """Set the simulator's clock to when ``day``'s bills are out; that moment."""
    control(sim, action="now", at=complete(day).isoformat())
    return complete(day)


def paid_order(sim: WeChatPaySimulator, keys: Keys, quantity: int = 1) -> tuple[str, Payment]:
    """An order paid at the simulator and recorded PAID here through the payment services."""
    oid = accept_message(
        order_message("P", quantity, currency="CNY", provider="wechatpay"), channel="test"
    ).order_id
    with unit_of_work() as s:
        assert reserve_order(s, oid, now=datetime.now(CST), payment_window_s=600).status == (
            "RESERVED"
        )
    adapter = WeChatPayProvider(payment_config(sim, keys))
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


def refunded(sim: WeChatPaySimulator, keys: Keys, oid: str, amount: int) -> Refund:
    adapter = WeChatPayProvider(payment_config(sim, keys))
    with unit_of_work() as s:
        followup = payments.refund_for_order(
            s, oid, amount=amount, refund_no=f"R-{oid[:8]}", reason="test", actor="test",
            now=datetime.now(CST),
        )  # fmt: skip
    assert followup is not None
    payments.refund(int(followup.arg), lambda _n: adapter, ports())
    with unit_of_work() as s:
        refund = s.scalars(select(Refund).where(Refund.order_id == oid)).one()
        s.expunge(refund)
    assert refund.status == "SUCCEEDED" and refund.provider_refund_ref
    return refund


def match(day: date) -> settlement_match.MatchResult:
    return match_day("wechatpay", MCHID, day, now=datetime.now(CST))


def test_a_clean_day_matches_reports_its_figures_and_repeats_change_nothing(
    wechat: WeChatPaySimulator, keys: Keys
) -> None:
    day = today()
    (_, p1), (oid2, p2) = paid_order(wechat, keys), paid_order(wechat, keys, quantity=3)
    refund = refunded(wechat, keys, oid2, 500)
    now = bills_out(wechat, day)
    src = source(wechat, keys)

    fetched_trade, fetched_flow, matched = settlement.run_due(
        lambda _n: src, ["wechatpay"], now=now, lookback_days=1
    )
    assert isinstance(fetched_trade, settlement.FetchResult)
    assert isinstance(fetched_flow, settlement.FetchResult)
    assert statuses([fetched_trade, fetched_flow]) == {
        TRADEBILL: ("stored", 3), FUNDFLOW: ("stored", 5),  # 2 x (income, fee) and a refund
    }  # fmt: skip
    assert isinstance(matched, settlement_match.MatchResult) and matched.new_differences == 0
    with unit_of_work() as s:
        trade_file = s.scalars(select(SettlementFile).where(SettlementFile.bill_type == TRADEBILL))
        content = trade_file.one().content or b""
        linked = set(s.execute(select(SettlementLine.kind, SettlementLine.payment_id,
                                      SettlementLine.refund_id)).tuples())  # fmt: skip
    assert content.decode("utf-8").startswith("交易时间,公众账号ID,商户号")  # stored unzipped
    assert {("charge", p1.id, None), ("charge", p2.id, None), ("refund", p2.id, refund.id)} <= (
        linked
    )
    before = counts()
    assert statuses(settlement.fetch(src, day, now=now)) == {
        TRADEBILL: ("already_stored", 3), FUNDFLOW: ("already_stored", 5),
    }  # fmt: skip
    assert match(day).new_differences == 0 and counts() == before == (2, 8, 0)

    with unit_of_work() as s:
        # the fund flow: no figures
        (fig,) = settlement_report.report(s, day, "wechatpay")["figures"]
    fees = wechat_fee(PRICE) + wechat_fee(3 * PRICE) - wechat_fee(500)  # 6 + 18 - 3 handed back
    assert (fig["bill_type"], fig["currency"], fig["gross"], fig["refunds"], fig["fees"]) == (
        TRADEBILL, "CNY", 4000, 500, fees,
    )  # fmt: skip
    assert fees == 21 and fig["net"] == 4000 - 500 - 21 and fig["adjustments"] == 0


def test_a_day_with_differences_records_each_once_and_changes_no_payment(
    wechat: WeChatPaySimulator, keys: Keys
) -> None:
    day = today()
    _, shifted = paid_order(wechat, keys)
    oid, _ = paid_order(wechat, keys)
    omitted = refunded(wechat, keys, oid, 300)
    _, fee_paid = paid_order(wechat, keys)
    control(wechat, action="shift", ref=shifted.provider_ref, by=1)  # one fen more
    control(wechat, action="omit", ref=omitted.provider_refund_ref)  # the bill lists no refund
    stray = control(wechat, action="charge", amount=777)  # never ours
    control(wechat, action="fee", ref=fee_paid.out_trade_no, amount=15)  # beyond the 0.6 %
    now = bills_out(wechat, day)

    assert [r.status for r in settlement.fetch(source(wechat, keys), day, now=now)] == [
        "stored", "stored",
    ]  # fmt: skip
    result = match(day)
    assert result.new_differences == result.differences == 4
    assert differences() == {
        ("amount_differs", shifted.provider_ref), ("missing_there", omitted.provider_refund_ref),
        ("missing_here", stray["transaction_id"]), ("unexpected_fee", fee_paid.provider_ref),
    }  # fmt: skip
    assert match(day).new_differences == 0 and counts()[2] == 4
    with unit_of_work() as s:  # a difference is a finding: the payment keeps what we captured
        assert s.get_one(Payment, shifted.id).captured_amount == PRICE
        report = settlement_report.report(s, day, "wechatpay")
    found = {d["kind"]: d for d in report["differences"]}
    amount, fee = found["amount_differs"], found["unexpected_fee"]
    assert (amount["ours"], amount["theirs"], amount["payment_id"]) == (1000, 1001, shifted.id)
    assert (fee["theirs"], fee["payment_id"]) == (15, fee_paid.id)
    (fig,) = report["figures"]
    assert (fig["gross"], fig["refunds"]) == (1001 + 1000 + 1000 + 777, 0)
    assert fig["fees"] == wechat_fee(1001) + 2 * wechat_fee(1000) + 15 + wechat_fee(777)


def test_a_dashboard_refund_is_missing_here_on_its_payment(
    wechat: WeChatPaySimulator, keys: Keys
) -> None:
    day = today()
    _, paid = paid_order(wechat, keys)
    made = wechat.dashboard_refund(paid.out_trade_no, 300)  # in the merchant platform, not by us
    settlement.fetch(source(wechat, keys), day, now=bills_out(wechat, day))
    assert match(day).new_differences == 1
    with unit_of_work() as s:
        (diff,) = settlement_report.report(s, day, "wechatpay")["differences"]
        (fig,) = settlement_report.report(s, day, "wechatpay")["figures"]
    assert (diff["kind"], diff["ref"], diff["theirs"], diff["payment_id"]) == (
        "missing_here", made["refund_id"], 300, paid.id,
    )  # fmt: skip
    assert (fig["refunds"], fig["fees"]) == (300, wechat_fee(1000) - wechat_fee(300))


@pytest.mark.parametrize(
    ("mode", "gzip", "refused", "reason"),
    [
        ("truncate", True, {TRADEBILL, FUNDFLOW}, "not a complete gzip stream"),
        ("truncate", False, {TRADEBILL, FUNDFLOW}, "is not hash_value"),
        ("hash", True, {TRADEBILL, FUNDFLOW}, "is not hash_value"),
        ("unknown_state", True, {TRADEBILL}, "unknown 交易状态 'MYSTERY'"),
        ("unknown_type", True, {FUNDFLOW}, "unknown 业务类型 '神秘业务'"),
        ("mchid", True, {TRADEBILL}, "商户号 1900009999 is not ours"),
    ],
)  # fmt: skip
def test_a_corrupted_file_is_refused_with_nothing_stored_then_fetched_when_repaired(
    wechat: WeChatPaySimulator, keys: Keys, mode: str, gzip: bool, refused: set[str],
    reason: str,
) -> None:  # fmt: skip
    paid_order(wechat, keys)
    paid_order(wechat, keys)
    day = today()
    now = bills_out(wechat, day)
    src = source(wechat, keys, gzip=gzip)
    control(wechat, action="corrupt", mode=mode)
    results = {r.bill_type: r for r in settlement.fetch(src, day, now=now)}
    assert {t for t, r in results.items() if r.status == "refused"} == refused
    assert all(reason in results[t].detail for t in refused)
    with unit_of_work() as s:
        rows = {f.bill_type: f for f in s.scalars(select(SettlementFile))}
        lines = dict(
            s.execute(
                select(SettlementFile.bill_type, func.count(SettlementLine.id))
                .join(SettlementLine, SettlementLine.file_id == SettlementFile.id)
                .group_by(SettlementFile.bill_type)
            ).all()
        )
    for bill_type in refused:
        row = rows[bill_type]
        assert (row.status, row.content, row.sha256, row.line_count) == ("refused", None, None, 0)
        assert reason in (row.error or "") and bill_type not in lines

    control(wechat, action="corrupt", mode=None)  # WeChat's file is good again
    again = statuses(settlement.fetch(src, day, now=now))
    assert again == {
        t: ("stored" if t in refused else "already_stored", n)
        for t, n in ((TRADEBILL, 2), (FUNDFLOW, 4))
    }
    with unit_of_work() as s:
        attempts = dict(s.execute(select(SettlementFile.bill_type, SettlementFile.attempts)).all())
    assert attempts == {t: 2 if t in refused else 1 for t in (TRADEBILL, FUNDFLOW)}
    assert match(day).new_differences == 0


def test_bills_not_ready_store_nothing_and_a_day_without_trades_is_an_empty_bill(
    wechat: WeChatPaySimulator, keys: Keys
) -> None:
    paid_order(wechat, keys)
    day = today()
    src = source(wechat, keys)
    ten = datetime.combine(day + timedelta(days=1), time(10), CST)
    early = settlement.fetch(src, day, now=ten - timedelta(minutes=1))  # by our clock: no request
    assert [(r.status, "ready from" in r.detail) for r in early] == [("not_ready", True)] * 2
    control(wechat, action="now", at=(ten - timedelta(hours=1)).isoformat())  # WeChat's clock
    creating = settlement.fetch(src, day, now=ten)
    assert [(r.status, "账单生成中" in r.detail) for r in creating] == [("not_ready", True)] * 2
    assert counts() == (0, 0, 0)

    quiet = day - timedelta(days=5)  # nothing was paid or refunded: NO_STATEMENT_EXIST
    assert statuses(settlement.fetch(src, quiet, now=complete(quiet))) == {
        TRADEBILL: ("stored", 0), FUNDFLOW: ("stored", 0),
    }  # fmt: skip
    assert counts() == (2, 0, 0) and match(quiet).new_differences == 0


def test_platform_certificate_mode_sends_wechatpay_serial_on_the_download(keys: Keys) -> None:
    with simulator(keys, key_mode="platform_certificate") as sim:
        payment = payment_config(sim, keys, key_mode="platform_certificate",
                                 platform_public_keys={})  # fmt: skip
        adapter = WeChatPayProvider(payment)
        sim.pay(_native_order(adapter))
        day = today()
        config = WeChatPaySettlementConfig(payment=payment)
        src = WeChatPaySettlementSource(config, adapter)
        bill = src.fetch_bill(day, TRADEBILL, now=bills_out(sim, day))
        assert [line.kind.value for line in bill.lines] == ["charge"]
        downloads = [p for m, p, _ in sim.request_log if p == "/v3/billdownload/file"]
        assert len(downloads) == 1
        # Every request but the certificate download named the signing certificate.
        assert sim.request_serials == {"": sim.certificate_downloads, sim.platform_serial: 3}


def _native_order(adapter: WeChatPayProvider) -> str:
    from tests.integration.adapters.wechatpay.support import create_request

    request = create_request(1234)
    adapter.create(request)
    return request.out_trade_no
