# ruff: noqa: RUF001 -- Alipay's files use full-width punctuation
"""The Alipay bill parser (:func:`adapters.payments.alipay_settlement.parse_bill`) on small
hand-made ZIPs: written here from the published layout, not by the simulator, so that a shared
misreading cannot hide. A good trade bill and account-flow bill become the expected lines; each
kind of bad input is refused with a message naming the file, the line and the field."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters.payments.alipay_settlement import parse_bill
from adapters.payments.settlement import BillRefused
from domain.errors import ProviderRejected
from domain.settlement import CHINA_STANDARD_TIME, LineKind

PID = "2088101122334455"
DAY = date(2026, 3, 14)
RULE = "-" * 41
TRADE_COLUMNS = (
    "支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,"
    "对方账户,订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,"
    "商家优惠（元）,券核销金额（元）,券名称,商家红包消费金额（元）,卡消费金额（元）,"
    "退款批次号/请求号,服务费（元）,分润（元）,备注"
)
# trade_no, out_trade_no, type, done, 订单金额, 商家实收, 商家优惠, request_no, 服务费
TRADES = [
    ("2026031422001", "ORD-1", "交易", "2026-03-14 10:00:00", "100.00", "100.00", "0.00", "",
     "-0.60"),
    ("2026031422002", "ORD-2", "交易", "2026-03-14 11:30:00", "20.00", "18.00", "2.00", "",
     "-0.11"),
    ("2026031422001", "ORD-1", "退款", "2026-03-14 15:00:00", "100.00", "-30.00", "0.00",
     "R-ORD-1", "0.00"),
]  # fmt: skip
ACCOUNT_COLUMNS = (
    "账务流水号,业务流水号,商户订单号,商品名称,发生时间,对方账号,收入金额（+元）,"
    "支出金额（-元）,账户余额（元）,交易渠道,业务类型,备注"
)
# flow no, trade_no, out_trade_no, time, in, out, balance, type
FLOWS = [
    ("F1", "2026031422001", "ORD-1", "2026-03-14 10:00:00", "100.00", "0.00", "600.00", "在线支付"),
    ("F2", "2026031422001", "ORD-1", "2026-03-14 10:00:00", "0.00", "-0.60", "599.40", "收费"),
    ("F3", "", "", "2026-03-14 12:00:00", "0.00", "-5.00", "594.40", "收费"),
    ("F4", "", "", "2026-03-14 18:00:00", "0.00", "-500.00", "94.40", "提现"),
]  # fmt: skip


def heading(title: str, pid: str = PID) -> list[str]:
    period = "#起始日期：[2026年03月14日 00:00:00]   终止日期：[2026年03月15日 00:00:00]"
    return [f"#{title}", f"#账号：[{pid}0156]", period]


def cells(values: list[str] | tuple[str, ...]) -> str:
    return ",".join(f"{v}\t" for v in values)


def trade_texts(rows: list[tuple[str, ...]] = TRADES, pid: str = PID) -> dict[str, str]:
    """The detail and summary files of a trade bill, totals worked out from ``rows``."""
    detail = [*heading("支付宝交易记录明细查询", pid), f"#{RULE}业务明细列表{RULE}", TRADE_COLUMNS]
    paid = refunded = fees = n_paid = n_refunded = 0
    for no, order, kind, done, total, received, discount, request, fee in rows:
        values = [no, order, kind, "商品", "2026-03-14 09:59:00", done, "", "", "", "",
                  "159****5620", total, received, "0.00", "0.00", "0.00", discount, "0.00", "",
                  "0.00", "0.00", request, fee, "0.00", ""]  # fmt: skip
        detail.append(cells(values))
        cents, fee_cents = fen(received), fen(fee)
        if kind == "交易":
            n_paid, paid = n_paid + 1, paid + cents
        else:
            n_refunded, refunded = n_refunded + 1, refunded + cents
        fees += fee_cents
    detail += [
        f"#{RULE}业务明细列表结束{RULE}",
        f"#交易合计：{n_paid}笔，商家实收共{yuan(paid)}元，商家优惠共2.00元",
        f"#退款合计：{n_refunded}笔，商家实收退款共{yuan(refunded)}元，商家优惠退款共0.00元",
        "#导出时间：[2026年03月15日 08:12:40]",
    ]
    summary = [
        *heading("支付宝业务汇总查询", pid), f"#{RULE}业务汇总列表{RULE}",
        "门店编号,门店名称,交易订单总笔数,退款订单总笔数,订单金额（元）,商家实收（元）,支付宝优惠（元）,"
        "商家优惠（元）,卡消费金额（元）,服务费（元）,分润（元）,实收净额（元）",
        cells(["合计", "", str(n_paid), str(n_refunded), "120.00", yuan(paid + refunded), "0.00",
               "2.00", "0.00", yuan(fees), "0.00", yuan(paid + refunded + fees)]),
        f"#{RULE}业务汇总列表结束{RULE}", "#导出时间：[2026年03月15日 08:12:40]",
    ]  # fmt: skip
    return {f"{pid}_20260314_业务明细.csv": "\r\n".join(detail) + "\r\n",
            f"{pid}_20260314_业务明细(汇总).csv": "\r\n".join(summary) + "\r\n"}  # fmt: skip


def account_texts(rows: list[tuple[str, ...]] = FLOWS) -> dict[str, str]:
    detail = [*heading("支付宝账务明细查询"), f"#{RULE}账务明细列表{RULE}", ACCOUNT_COLUMNS]
    income = [0, 0]
    expense = [0, 0]
    for flow, trade, order, at, money_in, money_out, balance, kind in rows:
        detail.append(cells([flow, trade, order, "商品", at, "", money_in, money_out, balance,
                             "支付宝", kind, ""]))  # fmt: skip
        if fen(money_in):
            income = [income[0] + 1, income[1] + fen(money_in)]
        else:
            expense = [expense[0] + 1, expense[1] + fen(money_out)]
    detail += [
        f"#{RULE}账务明细列表结束{RULE}",
        f"#收入合计：{income[0]}笔，共{yuan(income[1])}元",
        f"#支出合计：{expense[0]}笔，共{yuan(expense[1])}元",
        "#导出时间：[2026年03月15日 08:12:40]",
    ]
    summary = [
        *heading("支付宝账务汇总查询"), f"#{RULE}账务汇总列表{RULE}",
        "业务类型,收入笔数,收入金额（+元）,支出笔数,支出金额（-元）",
        cells(["合计", str(income[0]), yuan(income[1]), str(expense[0]), yuan(expense[1])]),
        f"#{RULE}账务汇总列表结束{RULE}",
    ]  # fmt: skip
    return {f"{PID}_20260314_账务明细.csv": "\r\n".join(detail) + "\r\n",
            f"{PID}_20260314_账务明细(汇总).csv": "\r\n".join(summary) + "\r\n"}  # fmt: skip


def yuan(amount: int) -> str:
    sign = "-" if amount < 0 else ""
    return f"{sign}{abs(amount) // 100}.{abs(amount) % 100:02d}"


def fen(text: str) -> int:
    return int(Decimal(text) * 100)


def zipped(texts: dict[str, str], encoding: str = "gbk") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in texts.items():
            archive.writestr(name, text.encode(encoding))
    return buffer.getvalue()


def at(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=CHINA_STANDARD_TIME)


def test_a_trade_bill_becomes_charge_and_refund_lines_in_fen() -> None:
    charge, discounted, refund = parse_bill(zipped(trade_texts()), DAY, "trade", pid=PID)
    assert (charge.kind, charge.amount, charge.fee, charge.net) == (LineKind.CHARGE, 10000, 60,
                                                                    9940)  # fmt: skip
    assert (charge.line_id, charge.payment_ref, charge.merchant_payment_ref, charge.refund_ref) == (
        "2026031422001", "2026031422001", "ORD-1", None,
    )  # fmt: skip
    assert charge.currency == "CNY" and charge.occurred_at == at("2026-03-14 10:00:00")
    # 20.00 ordered, 2.00 of it a discount the merchant funded: 18.00 received, fee 0.11
    assert (discounted.amount, discounted.fee, discounted.net) == (1800, 11, 1789)
    assert (refund.kind, refund.amount, refund.fee, refund.net) == (LineKind.REFUND, -3000, 0,
                                                                    -3000)  # fmt: skip
    assert (refund.line_id, refund.merchant_refund_ref, refund.payment_ref) == (
        "2026031422001/R-ORD-1", "R-ORD-1", "2026031422001",
    )  # fmt: skip


def test_the_account_flow_keeps_only_what_the_trade_bill_cannot_carry() -> None:
    fee, payout = parse_bill(zipped(account_texts()), DAY, "signcustomer", pid=PID)
    # Payment and per-order fee rows repeat the trade bill: no lines (no double counting).
    assert (fee.kind, fee.line_id, fee.amount, fee.fee, fee.net) == (LineKind.FEE, "F3", -500,
                                                                     0, -500)  # fmt: skip
    assert (payout.kind, payout.amount) == (LineKind.PAYOUT, -50000)


def test_without_a_configured_pid_any_single_account_is_accepted() -> None:
    other = "2088999988887777"
    assert len(parse_bill(zipped(trade_texts(pid=other)), DAY, "trade", pid=None)) == 3
    with pytest.raises(BillRefused, match=f"bill of account {other}, not ours \\({PID}\\)"):
        parse_bill(zipped(trade_texts(pid=other)), DAY, "trade", pid=PID)


def replace(old: str, new: str, *, summary: bool = False) -> Callable[[dict[str, str]], bytes]:
    """A trade bill with ``old`` replaced by ``new`` once, in the detail or the summary file."""

    def build(texts: dict[str, str]) -> bytes:
        name = next(n for n in texts if ("(汇总)" in n) == summary)
        assert old in texts[name], old
        return zipped({**texts, name: texts[name].replace(old, new, 1)})

    return build


DETAIL = f"{PID}_20260314_业务明细.csv"
SUMMARY = f"{PID}_20260314_业务明细(汇总).csv"
REFUSED = [
    ("not a zip", lambda t: b"PK\x03\x04 not really", "zip: not a valid archive"),
    ("truncated zip", lambda t: zipped(t)[: len(zipped(t)) // 2], "zip: not a valid archive"),
    ("utf-8", lambda t: zipped(t, "utf-8"), f"{DETAIL}: encoded as UTF-8, not GBK"),
    ("empty file", lambda t: zipped({**t, DETAIL: ""}), "does not start with its title"),
    ("unknown type", replace("退款\t", "冲正\t"), f"{DETAIL} line 8: unknown 业务类型 '冲正'"),
    ("does not add up", replace("20.00\t,18.00\t", "20.00\t,17.00\t"),
     "line 7: 商家实收 1700 + 商家优惠 200 is not 订单金额 2000"),
    ("three decimals", replace("-0.60\t", "-0.601\t"), "服务费（元） '-0.601' is not a yuan"),
    ("fee paid to us", replace("-0.60\t", "0.60\t"), "on a payment must be <= 0"),
    ("trailer total", replace("商家实收共118.00元", "商家实收共118.01元"),
     "#交易合计 商家实收 11801 differs from the rows' 11800"),
    ("trailer count", replace("#退款合计：1笔", "#退款合计：2笔"), "#退款合计 count 2"),
    ("summary net", replace(",87.29\t", ",87.30\t", summary=True),
     f"{SUMMARY} line 6: 实收净额（元） 8730 differs from the rows' 8729"),
    ("another day", lambda t: zipped({k.replace("20260314", "20260313"): v for k, v in t.items()}),
     "is the bill of another day"),
    ("header account", replace(f"#账号：[{PID}0156]", "#账号：[20880000000000010156]"),
     f"{DETAIL} line 2: #账号"),
    ("cut short", lambda t: zipped({**t, DETAIL: t[DETAIL].split(f"#{RULE}业务明细列表结束")[0]}),
     "no end-of-list marker"),
    ("outside the day", replace("2026-03-14 15:00:00", "2026-03-15 00:00:00"),
     "完成时间 2026-03-15 00:00:00 is outside 2026-03-14"),
    ("listed twice", lambda t: zipped(trade_texts([*TRADES, TRADES[0]])), "listed twice"),
    ("a field short", replace(",ORD-2\t,", ","), "line 7: 24 fields, the column row has 25"),
    ("summary missing", lambda t: zipped({DETAIL: t[DETAIL]}), "want one 业务明细 file"),
    ("stray member", lambda t: zipped({**t, "readme.txt": "hi"}), "unexpected file"),
]  # fmt: skip


@pytest.mark.parametrize(("build", "reason"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_a_bad_trade_bill_is_refused_naming_where(
    build: Callable[[dict[str, str]], bytes], reason: str
) -> None:
    with pytest.raises(BillRefused) as refused:
        parse_bill(build(trade_texts()), DAY, "trade", pid=PID)
    assert reason in str(refused.value)


def test_bytes_that_are_not_gbk_are_refused() -> None:
    raw = trade_texts()[DETAIL].encode("gbk") + b"\x81\x20\r\n"  # a lead byte, then a space
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(DETAIL, raw)
        z.writestr(SUMMARY, trade_texts()[SUMMARY].encode("gbk"))
    with pytest.raises(BillRefused, match=f"{DETAIL}: not GBK \\(byte {len(raw) - 4}\\)"):
        parse_bill(archive.getvalue(), DAY, "trade", pid=PID)


@pytest.mark.parametrize(
    ("rows", "reason"),
    [([*FLOWS[:3], ("F4", "", "", "2026-03-14 18:00:00", "0.00", "-500.00", "94.41", "提现")],
      "账户余额 9441 is not 59440 + -50000"),
     ([*FLOWS[:3], ("F4", "", "", "2026-03-14 18:00:00", "0.00", "-500.00", "94.40", "红包")],
      "unknown 业务类型 '红包'"),
     ([*FLOWS[:3], ("F4", "", "", "2026-03-14 18:00:00", "500.00", "0.00", "1094.40", "提现")],
      "提现 moving money the wrong way"),
     ([*FLOWS[:3], ("F3", "", "", "2026-03-14 18:00:00", "0.00", "-500.00", "94.40", "提现")],
      "账务流水号 'F3' empty or listed twice")],
    ids=["balance", "unknown type", "direction", "twice"],
)  # fmt: skip
def test_a_bad_account_flow_is_refused(rows: list[tuple[str, ...]], reason: str) -> None:
    with pytest.raises(BillRefused) as refused:
        parse_bill(zipped(account_texts(rows)), DAY, "signcustomer", pid=PID)
    assert reason in str(refused.value)


def test_the_registry_builds_the_alipay_source_only_when_configured(tmp_path: Path) -> None:
    from adapters import registry
    from settings import Settings

    with pytest.raises(ProviderRejected) as missing:
        registry._alipay_settlement(Settings(alipay_app_id=None))
    assert missing.value.code == "not_configured"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private, public = tmp_path / "app.pem", tmp_path / "alipay.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))  # fmt: skip
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    settings = Settings(alipay_app_id="2021000000000000", alipay_app_private_key_file=private,
                        alipay_public_key_file=public, alipay_pid=PID)  # fmt: skip
    source = registry._alipay_settlement(settings)
    assert (source.name, source.account, source.bill_types) == (
        "alipay", "default", ("trade", "signcustomer"),
    )  # fmt: skip
    with pytest.raises(ValueError, match="alipay_pid"):
        Settings(alipay_pid="12345")
