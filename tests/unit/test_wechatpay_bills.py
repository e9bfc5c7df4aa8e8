"""The WeChat Pay bill parsers (:mod:`adapters.payments.wechatpay_settlement`) on small
hand-made files in WeChat's layout: lines and amounts (yuan → fen exactly), a fee the rate does
not explain, the fee handed back on a refund, and every reason a file is refused."""

from __future__ import annotations

from datetime import date

import pytest

from adapters.payments.settlement import BillRefused
from adapters.payments.wechatpay_settlement import parse_fundflowbill, parse_tradebill
from domain.settlement import LineKind, OurPayment, OurRefund, day_totals, match_day

DAY = date(2026, 12, 3)
MCHID = "1900000001"
HEADER = (
    "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,"
    "付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,"
    "退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注"
)
SUMMARY = (
    "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额"
)


def trade(at: str, tid: str, no: str, amount: str, fee: str, *, mchid: str = MCHID,
          state: str = "SUCCESS") -> str:  # fmt: skip
    fields = [f"2026-12-03 {at}", "wxapp", mchid, "0", "", tid, no, "oUser", "NATIVE", state,
              "OTHERS", "CNY", amount, "0.00", "0", "0", "0.00", "0.00", "", "", "商品",
              '"{""order_id"":""42""}"', fee, "0.60%", amount, "0.00", ""]  # fmt: skip
    return ",".join("`" + f if not f.startswith('"') else '"`' + f[1:] for f in fields)


def refund(at: str, tid: str, no: str, rid: str, rno: str, amount: str, fee: str,
           status: str = "SUCCESS") -> str:  # fmt: skip
    fields = [f"2026-12-03 {at}", "wxapp", MCHID, "0", "", tid, no, "oUser", "NATIVE", "REFUND",
              "OTHERS", "CNY", "0.00", "0.00", rid, rno, amount, "0.00", "ORIGINAL", status,
              "商品", "", fee, "0.60%", "0.00", amount, ""]  # fmt: skip
    return ",".join("`" + f for f in fields)


def summary(*values: str) -> str:
    return SUMMARY + "\r\n" + ",".join("`" + v for v in values)


ROWS = [
    trade("10:00:00", "4200001", "T-1", "10.00", "0.06000"),
    trade("11:30:00", "4200002", "T-2", "30.00", "0.18000"),
    refund("12:00:00", "4200002", "T-2", "5030001", "R-1", "5.00", "-0.03000"),
]
GOOD = "\ufeff" + "\r\n".join(
    [HEADER, *ROWS, summary("3", "40.00", "5.00", "0.00", "0.21000", "40.00", "5.00")]
)


def test_a_trade_bill_becomes_charge_and_refund_lines_in_fen() -> None:
    lines = parse_tradebill(GOOD, DAY, MCHID)
    assert [(x.kind, x.amount, x.fee, x.net) for x in lines] == [
        (LineKind.CHARGE, 1000, 6, 994), (LineKind.CHARGE, 3000, 18, 2982),
        (LineKind.REFUND, -500, -3, -497),
    ]  # fmt: skip
    first, _, back = lines
    assert (first.payment_ref, first.merchant_payment_ref, first.line_id) == (
        "4200001", "T-1", "charge:4200001",
    )  # fmt: skip
    assert (back.refund_ref, back.merchant_refund_ref, back.payment_ref) == (
        "5030001", "R-1", "4200002",
    )  # fmt: skip
    assert first.occurred_at.isoformat() == "2026-12-03T10:00:00+08:00"
    t = day_totals(lines)["CNY"]
    assert (t.gross, t.refunds, t.fees, t.net) == (4000, 500, 21, 4000 - 500 - 21)


def test_the_fee_handed_back_on_a_refund_is_no_difference_but_a_charged_one_is() -> None:
    lines = parse_tradebill(GOOD, DAY, MCHID)
    payments = [
        OurPayment(1, "4200001", 1000, "CNY", "PAID", True, "T-1"),
        OurPayment(2, "4200002", 3000, "CNY", "PARTIALLY_REFUNDED", True, "T-2"),
    ]
    refunds = [OurRefund(7, 2, "5030001", 500, "CNY", "SUCCEEDED", True, "R-1")]  # fmt: skip
    assert match_day(lines, payments, refunds).differences == ()
    charged = GOOD.replace("`-0.03000", "`0.03000").replace("`0.21000", "`0.27000")
    found = match_day(parse_tradebill(charged, DAY, MCHID), payments, refunds).differences
    assert [(d.kind.value, d.ref, d.theirs) for d in found] == [("unexpected_fee", "5030001", 3)]


def test_a_fee_the_rate_does_not_explain_becomes_a_fee_line() -> None:
    text = GOOD.replace("`0.18000", "`0.20000").replace("`0.21000", "`0.23000")
    lines = parse_tradebill(text, DAY, MCHID)
    fee = next(x for x in lines if x.kind is LineKind.FEE)
    assert (fee.line_id, fee.amount, fee.fee, fee.payment_ref) == ("fee:4200002", -2, 0, "4200002")
    assert day_totals(lines)["CNY"].fees == 23  # the file's total, split in two
    payments = [OurPayment(2, "4200002", 3000, "CNY", "PAID", False, "T-2")]
    charged = [x for x in lines if x.payment_ref == "4200002" and x.kind is not LineKind.REFUND]
    (found,) = match_day(charged, payments, []).differences
    assert (found.kind.value, found.ref, found.theirs) == ("unexpected_fee", "4200002", 2)


BAD_CASES = [
    (GOOD.replace("`10.00", "`10.005", 1), "line 2: 应结订单金额 '10.005' is not an amount"),
    (GOOD.replace("`0.06000", "`0.06500"), "line 2: 手续费 0.06500 is not whole fen"),
    (GOOD.replace("`SUCCESS,`OTHERS", "`MYSTERY,`OTHERS", 1), "line 2: unknown 交易状态 'MYSTERY'"),
    (GOOD.replace(f"`{MCHID}", "`1900009999", 1), "line 2: 商户号 1900009999 is not ours"),
    (GOOD.replace("`2026-12-03 10:00:00", "`2026-12-04 10:00:00"), "line 2: 交易时间"),
    (GOOD.replace("`0.60%", "`0.60", 1), "line 2: 费率 '0.60' is not a percentage"),
    (GOOD.replace("`SUCCESS,`商品", "`FAIL,`商品"), "line 4: unsupported 退款状态 'FAIL'"),
    (GOOD.replace("`CNY", "`XYZ", 1), "line 2: unknown 货币种类 'XYZ'"),
    (GOOD.replace("`40.00,`5.00,`0.00,`0.21000", "`40.01,`5.00,`0.00,`0.21000"),
     "summary 应结订单总金额 40.01 is not the lines' 应结订单金额 total 40.00"),
    (GOOD.replace("\r\n`3,", "\r\n`4,"), "summary 总交易单数 4, 3 lines"),
    (GOOD.rsplit("\r\n", 2)[0], "no summary line '总交易单数' (truncated?)"),
    (GOOD.replace(",`0.60%,`10.00,`0.00,`", ",`0.60%,`10.00,`0.00", 1),
     "line 2: 26 fields, the header has 27 (truncated?)"),
    (GOOD.replace("`4200001", "4200001"), "line 2: 微信订单号 '4200001' lacks its backtick"),
    (GOOD.replace("商户订单号", "商户单号"), "line 1: header lacks 商户订单号"),
    (GOOD.replace(ROWS[1], ROWS[0]).replace("`40.00,`5.00,`0.00,`0.21000,`40.00",
                                            "`20.00,`5.00,`0.00,`0.09000,`20.00"),
     "line 3 (charge:4200001): listed twice"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "reason"), BAD_CASES)
def test_a_bad_trade_bill_is_refused_naming_line_and_field(text: str, reason: str) -> None:
    with pytest.raises(BillRefused) as refused:
        parse_tradebill(text, DAY, MCHID)
    assert reason in str(refused.value)


FUND_HEADER = (
    "记账时间,微信支付业务单号,资金流水单号,业务名称,业务类型,收支类型,收支金额\uff08元\uff09,"
    "账户结余\uff08元\uff09,"
    "资金变更提交申请人,备注,业务凭证号"
)


def flow(at: str, ref: str, flow_id: str, kind: str, direction: str, amount: str,
         balance: str) -> str:  # fmt: skip
    name = "退款" if kind == "退款" else "交易"
    fields = [f"2026-12-03 {at}", ref, flow_id, name, kind, direction, amount, balance, "system",
              "", "T-1"]  # fmt: skip
    return ",".join("`" + f for f in fields)


FUND = "\r\n".join([
    FUND_HEADER,
    flow("10:00:00", "4200001", "F1", "交易", "收入", "10.00", "110.00"),
    flow("10:00:00", "4200001", "F2", "扣除交易手续费", "支出", "0.06", "109.94"),
    flow("12:00:00", "5030001", "F3", "退款", "支出", "4.97", "104.97"),
    "资金流水总笔数,收入笔数,收入金额,支出笔数,支出金额",
    "`3,`1,`10.00,`2,`5.03",
])  # fmt: skip


def test_a_fund_flow_bill_is_stored_as_lines_that_are_neither_matched_nor_totalled() -> None:
    lines = parse_fundflowbill(FUND, DAY)
    assert [(x.kind, x.raw_type, x.amount, x.line_id) for x in lines] == [
        (LineKind.PAYOUT, "交易", 1000, "F1"), (LineKind.PAYOUT, "扣除交易手续费", -6, "F2"),
        (LineKind.PAYOUT, "退款", -497, "F3"),
    ]  # fmt: skip
    assert day_totals(lines) == {}
    assert match_day(lines, [], []).differences == ()
    ascii_parens = FUND.replace("\uff08", "(").replace("\uff09", ")")
    assert parse_fundflowbill(ascii_parens, DAY) == lines


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (FUND.replace("`扣除交易手续费", "`神秘业务"), "line 3: unknown 业务类型 '神秘业务'"),
        (FUND.replace("`支出,`0.06", "`出账,`0.06"), "line 3: unknown 收支类型 '出账'"),
        (FUND.replace("`109.94", "`109.95"),
         "line 3: 账户结余 109.95 does not follow 110.00 - 0.06"),
        (FUND.replace("`2,`5.03", "`2,`5.04"), "summary 支出金额 5.04 is not the lines' 5.03"),
        (FUND.replace("`3,`1,", "`3.0,`2.0,"), "summary 收入笔数 2.0 is not the lines' 1"),
    ],
)  # fmt: skip
def test_a_bad_fund_flow_bill_is_refused(text: str, reason: str) -> None:
    with pytest.raises(BillRefused) as refused:
        parse_fundflowbill(text, DAY)
    assert reason in str(refused.value)
