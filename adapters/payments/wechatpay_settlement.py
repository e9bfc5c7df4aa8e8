"""WeChat Pay's daily bills (对账单, API v3) as a settlement source
(:class:`adapters.payments.settlement.SettlementSource`).

Wire: ``GET /v3/bill/tradebill?bill_date=D&bill_type=ALL&tar_type=GZIP`` and ``GET
/v3/bill/fundflowbill?bill_date=D&account_type=BASIC&tar_type=GZIP``, signed and verified like
every v3 call (through :meth:`WeChatPayProvider.get_json`, so platform-certificate mode,
``Wechatpay-Serial`` and rotation behave as for payments), answer ``{"hash_type": "SHA1",
"hash_value", "download_url"}``; then a signed ``GET download_url``
(:meth:`WeChatPayProvider.download`) whose answer carries no signature: the file is trusted only
once the SHA-1 of its *uncompressed* bytes equals ``hash_value`` (the docs: "原始账单(gzip需要
解压缩)的摘要值"), and the hash comes from the verified answer.

Contracts:

* **Bill types.** ``tradebill`` is the trade bill of type ``ALL`` (``SUCCESS`` and ``REFUND`` are
  subsets of it: fetching them as well would count every trade twice in the day's figures).
  ``fundflowbill`` is the BASIC account's fund flow: the same money seen from the account (a
  trade's income, its fee deducted, a refund paid out). It is verified and stored for audit, but
  every line is of kind ``payout`` (:class:`~domain.settlement.LineKind`), which matching and the
  day's totals leave out: the trade bill alone is matched and totalled, so nothing is counted
  twice. ``raw_type`` keeps its 业务类型.
* **When a day is ready.** Day ``D`` (Beijing time, :func:`domain.settlement.bill_zone`) is
  asked for from ``D+1 00:00 CST + ready_margin`` (10 h: WeChat generates bills from 9:00 and
  says to fetch after 10:00); earlier → :class:`BillNotReady` without a request. WeChat's
  ``STATEMENT_CREATING`` ("账单生成中") → :class:`BillNotReady`, asked again after
  ``creating_retry`` (its FAQ: every half hour). ``NO_STATEMENT_EXIST`` ("请求的账单文件不存在":
  no trade, or no fund movement, that day; the FAQ says to stop retrying) → an empty bill: no
  lines, ``raw`` empty, stored so that the day counts as fetched (payments we expected that day
  then show as ``missing_there``).
* **The raw file** stored is the uncompressed CSV exactly as WeChat published it (so its
  ``hash_value`` can be checked again later); gzip (``tar_type=GZIP``, the default here) only
  saves transfer.
* **Refused** (:class:`BillRefused`, naming the line and the field): a ``hash_type`` other than
  SHA1 or no ``download_url``; a download that is not a complete gzip stream; a SHA-1 other than
  ``hash_value`` (truncated or altered); a file that is not UTF-8 (re-encoded); a missing or
  unknown header column; a line with another number of fields; a field without its backtick; no
  summary (truncated); a summary that the lines do not add up to (count, each total); an
  amount that is not yuan with at most two decimals (手续费: five, but whole fen); a 交易时间
  outside the day; a 商户号 other than ours; an unknown 交易状态, 退款状态, 货币种类, 业务类型 or
  收支类型; a 费率 that is not a percentage; the same trade or refund twice; a fund flow
  whose 账户结余 does not follow from the line before.
* **Lines** (:class:`~domain.settlement.BillLine`, amounts in fen from yuan through
  :class:`~decimal.Decimal`, never float): a ``SUCCESS`` row → ``charge`` (``amount`` =
  应结订单金额, what the merchant is settled; ``payment_ref`` = 微信订单号, ``merchant_payment_ref``
  = 商户订单号; ``fee`` = 应结订单金额 * 费率 rounded half up to the fen). A 手续费 that the
  rate does not explain becomes a separate ``fee`` line of the excess (``fee:<微信订单号>``), so
  that matching reports it as ``unexpected_fee`` while the day's fees still add up to the file's.
  A ``REFUND`` row (退款状态 SUCCESS, PROCESSING or CHANGE: money left the account) → ``refund``
  (``amount`` = -退款金额, ``refund_ref`` = 微信退款单号, ``merchant_refund_ref`` = 商户退款单号,
  ``fee`` = 手续费: negative, the fee WeChat hands back in proportion). A 退款状态 FAIL row is
  refused as unsupported (its money semantics are not documented). Coupons: a 免充值券 lowers
  应结订单金额 below what we captured and shows as ``amount_differs``, for a person to look at.
* Another merchant's bill: bills belong to the ``mchid`` of the signing key; a row naming another
  商户号 is refused. ``account`` is the label the bills are stored under (default: the mchid).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from adapters.payments.settlement import Bill, BillNotReady, BillRefused
from adapters.payments.wechatpay import WeChatPayConfig, WeChatPayProvider
from domain.errors import ProviderRejected
from domain.money import CURRENCY_EXPONENTS
from domain.settlement import BillLine, LineKind, bill_zone, day_bounds, ready_at

__all__ = [
    "FUNDFLOW",
    "TRADEBILL",
    "WeChatPaySettlementConfig",
    "WeChatPaySettlementSource",
    "parse_fundflowbill",
    "parse_tradebill",
]

NAME = "wechatpay"
TRADEBILL = "tradebill"
FUNDFLOW = "fundflowbill"
ZONE = bill_zone(NAME)
_PATHS = {TRADEBILL: "/v3/bill/tradebill", FUNDFLOW: "/v3/bill/fundflowbill"}
_TICK = "`"

_TRADE_COLUMNS = (
    "交易时间", "商户号", "微信订单号", "商户订单号", "交易状态", "货币种类", "应结订单金额",
    "代金券金额", "微信退款单号", "商户退款单号", "退款金额", "充值券退款金额", "退款状态",
    "手续费", "费率", "订单金额", "申请退款金额",
)  # fmt: skip
_TRADE_SUMMARY = {
    # summary column → (row column, decimals allowed)
    "应结订单总金额": ("应结订单金额", 2),
    "退款总金额": ("退款金额", 2),
    "充值券退款总金额": ("充值券退款金额", 2),
    "手续费总金额": ("手续费", 5),
    "订单总金额": ("订单金额", 2),
    "申请退款总金额": ("申请退款金额", 2),
}
_REFUND_MOVED = frozenset({"SUCCESS", "PROCESSING", "CHANGE"})
_FUND_COLUMNS = (
    "记账时间", "微信支付业务单号", "资金流水单号", "业务名称", "业务类型", "收支类型",
    "收支金额(元)", "账户结余(元)",
)  # fmt: skip
_FUND_SUMMARY = ("资金流水总笔数", "收入笔数", "收入金额", "支出笔数", "支出金额")
#: 业务类型 of the BASIC account's fund flow that this shop can meet.
FUND_TYPES = frozenset(
    {"交易", "退款", "扣除交易手续费", "退还交易手续费", "提现", "充值", "企业付款", "分账",
     "分账回退", "转账", "其他"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class WeChatPaySettlementConfig:
    """``payment`` is the WeChat Pay merchant configuration the bills are fetched with (same
    keys, key mode and timeouts as payments); ``account`` defaults to its mchid."""

    payment: WeChatPayConfig = field(repr=False)
    account: str | None = None
    ready_margin: timedelta = timedelta(hours=10)
    creating_retry: timedelta = timedelta(minutes=30)
    gzip: bool = True


class WeChatPaySettlementSource:
    """WeChat Pay trade and fund flow bills per Beijing day (see the module docstring)."""

    name = NAME
    bill_types: tuple[str, ...] = (TRADEBILL, FUNDFLOW)

    def __init__(
        self, config: WeChatPaySettlementConfig, provider: WeChatPayProvider | None = None
    ) -> None:
        self._config = config
        self._provider = provider or WeChatPayProvider(config.payment)
        self.account = config.account or config.payment.mchid

    def fetch_bill(self, day: date, bill_type: str, *, now: datetime) -> Bill:
        """``day``'s bill of ``bill_type``, verified and parsed, or an error (above)."""
        if bill_type not in _PATHS:
            raise ProviderRejected(NAME, f"bill_type: unknown {bill_type!r}", code="bill_type")
        due = ready_at(day, self._config.ready_margin, ZONE)
        if now < due:
            raise BillNotReady(NAME, f"the bill of {day} is ready from {_cst(due)}", due)
        query = {"bill_date": day.isoformat()}
        query.update({"bill_type": "ALL"} if bill_type == TRADEBILL else {"account_type": "BASIC"})
        if self._config.gzip:
            query["tar_type"] = "GZIP"
        try:
            answer = self._provider.get_json(_PATHS[bill_type], query)
        except ProviderRejected as exc:
            if exc.code == "STATEMENT_CREATING":
                again = max(due, now + self._config.creating_retry)
                raise BillNotReady(NAME, f"{bill_type} of {day}: 账单生成中", again) from exc
            if exc.code == "NO_STATEMENT_EXIST":
                return Bill(NAME, self.account, day, bill_type, b"", ())
            raise
        raw = self._download(answer, bill_type)
        text = _decode(raw, bill_type)
        mchid = self._config.payment.mchid
        lines = (
            parse_tradebill(text, day, mchid) if bill_type == TRADEBILL
            else parse_fundflowbill(text, day)
        )  # fmt: skip
        return Bill(NAME, self.account, day, bill_type, raw, lines)

    def _download(self, answer: Mapping[str, object], bill_type: str) -> bytes:
        """The file the verified ``answer`` points to, gunzipped, its SHA-1 checked."""
        hash_type, hash_value, url = (
            answer.get(k) for k in ("hash_type", "hash_value", "download_url")
        )
        if hash_type != "SHA1" or not isinstance(hash_value, str) or not isinstance(url, str):
            raise BillRefused(
                NAME, f"{bill_type}: answer without SHA1 hash_value and download_url "
                f"(hash_type {hash_type!r})",
            )  # fmt: skip
        body = self._provider.download(url)
        if self._config.gzip:
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError, zlib.error) as exc:
                raise BillRefused(
                    NAME, f"{bill_type}: not a complete gzip stream ({len(body)} bytes; "
                    f"truncated?): {exc}",
                ) from None  # fmt: skip
        # SHA-1 is WeChat's choice; the file's authenticity rests on the signed answer.
        digest = hashlib.sha1(body, usedforsecurity=False).hexdigest()
        if digest != hash_value.strip().lower():
            raise BillRefused(
                NAME, f"{bill_type}: SHA1 {digest} of the file ({len(body)} bytes) is not "
                f"hash_value {hash_value} (truncated or altered)",
            )  # fmt: skip
        return body


# -- parsing (pure) --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Table:
    """A WeChat bill file: detail header and rows (backticks stripped, by column name, ``#``
    the line number in the file) and the summary row (by the summary header's names)."""

    header: tuple[str, ...]
    rows: tuple[dict[str, str], ...]
    summary: dict[str, str]


def _decode(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise BillRefused(NAME, f"{what}: not UTF-8 at byte {exc.start} (re-encoded?)") from None


def _table(text: str, what: str, summary_first: str, columns: Sequence[str]) -> _Table:
    lines = text.removeprefix("\ufeff").splitlines()  # WeChat files may start with a BOM
    records = [r for r in csv.reader(lines) if any(v.strip() for v in r)]
    if not records:
        raise BillRefused(NAME, f"{what}: empty file")
    header = tuple(_norm(v.strip().lstrip(_TICK)) for v in records[0])
    missing = [c for c in columns if _norm(c) not in header]
    if missing:
        raise BillRefused(NAME, f"{what}: line 1: header lacks {', '.join(missing)}")
    ends = [i for i, r in enumerate(records) if r and r[0].strip().lstrip(_TICK) == summary_first]
    if not ends:
        raise BillRefused(NAME, f"{what}: no summary line {summary_first!r} (truncated?)")
    end = ends[0]
    if end != len(records) - 2:
        raise BillRefused(NAME, f"{what}: line {end + 2}: the summary is not followed by one row")
    rows = tuple(_record(records[i], header, i + 1, what) for i in range(1, end))
    summary_header = tuple(v.strip() for v in records[end])
    summary = _record(records[end + 1], summary_header, end + 2, what)
    return _Table(header, rows, summary)


def _norm(name: str) -> str:
    """Header names: WeChat prints 收支金额(元) with full-width or ASCII parentheses."""
    return name.replace("\uff08", "(").replace("\uff09", ")")


def _record(values: list[str], header: tuple[str, ...], n: int, what: str) -> dict[str, str]:
    if len(values) != len(header):
        raise BillRefused(
            NAME, f"{what}: line {n}: {len(values)} fields, the header has {len(header)} "
            "(truncated?)",
        )  # fmt: skip
    out = {"#": str(n)}
    for name, value in zip(header, values, strict=True):
        if not value.startswith(_TICK):
            raise BillRefused(NAME, f"{what}: line {n}: {name} {value!r} lacks its backtick")
        out[name] = value[1:].strip()
    return out


def _fen(row: Mapping[str, str], column: str, what: str, places: int = 2) -> int:
    """Yuan (at most ``places`` decimals, whole fen) → fen, exactly."""
    value = row[column]
    bad = BillRefused(NAME, f"{what}: line {row['#']}: {column} {value!r} is not an amount")
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise bad from None
    exponent = amount.as_tuple().exponent
    if not amount.is_finite() or not isinstance(exponent, int) or -exponent > places:
        raise bad
    fen = amount * 100
    if fen != fen.to_integral_value():
        raise BillRefused(NAME, f"{what}: line {row['#']}: {column} {value} is not whole fen")
    return int(fen)


def _count(row: Mapping[str, str], column: str, what: str) -> int:
    value = row[column]
    try:
        number = Decimal(value)  # WeChat has printed counts as "20.0"
    except InvalidOperation:
        number = Decimal(-1)
    if not number.is_finite() or number < 0 or number != number.to_integral_value():
        raise BillRefused(NAME, f"{what}: summary {column} {value!r} is not a count")
    return int(number)


def _at(row: Mapping[str, str], column: str, day: date, what: str) -> datetime:
    value = row[column]
    try:
        moment = datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=ZONE)
    except ValueError:
        raise BillRefused(
            NAME, f"{what}: line {row['#']}: {column} {value!r} is not a time"
        ) from None
    start, end = day_bounds(day, ZONE)
    if not start <= moment < end:
        raise BillRefused(NAME, f"{what}: line {row['#']}: {column} {value} is not on {day}")
    return moment


def parse_tradebill(text: str, day: date, mchid: str) -> tuple[BillLine, ...]:
    """A trade bill (type ALL) of ``day`` for merchant ``mchid`` → bill lines, refusing the bill
    at the first bad line (see the module docstring)."""
    what = TRADEBILL
    table = _table(text, what, "总交易单数", _TRADE_COLUMNS)
    lines: list[BillLine] = []
    seen: set[str] = set()
    for row in table.rows:
        for line in _trade_lines(row, day, mchid):
            if line.line_id in seen:
                raise BillRefused(NAME, f"{what}: line {row['#']} ({line.line_id}): listed twice")
            seen.add(line.line_id)
            lines.append(line)
    _check_trade_summary(table, what)
    return tuple(lines)


def _trade_lines(row: Mapping[str, str], day: date, mchid: str) -> Iterator[BillLine]:
    what, n = TRADEBILL, row["#"]
    if row["商户号"] != mchid:
        raise BillRefused(NAME, f"{what}: line {n}: 商户号 {row['商户号']} is not ours ({mchid})")
    currency = row["货币种类"]
    if currency not in CURRENCY_EXPONENTS or CURRENCY_EXPONENTS[currency] != 2:
        raise BillRefused(NAME, f"{what}: line {n}: unknown 货币种类 {currency!r}")
    at = _at(row, "交易时间", day, what)
    fee = _fen(row, "手续费", what, 5)
    tid, out_trade_no = row["微信订单号"], row["商户订单号"]
    state = row["交易状态"]
    if state == "SUCCESS":
        amount = _fen(row, "应结订单金额", what)
        expected = _rate_fee(amount, row)
        yield BillLine(
            line_id=f"charge:{tid}", kind=LineKind.CHARGE, raw_type="SUCCESS", source_ref=tid,
            payment_ref=tid, refund_ref=None, amount=amount, fee=expected,
            net=amount - expected, currency=currency, occurred_at=at,
            merchant_payment_ref=out_trade_no or None,
        )  # fmt: skip
        if fee != expected:  # a fee the rate does not explain: for a person to confirm
            excess = fee - expected
            yield BillLine(
                line_id=f"fee:{tid}", kind=LineKind.FEE, raw_type="手续费", source_ref=tid,
                payment_ref=tid, refund_ref=None, amount=-excess, fee=0, net=-excess,
                currency=currency, occurred_at=at, merchant_payment_ref=out_trade_no or None,
            )  # fmt: skip
    elif state == "REFUND":
        status = row["退款状态"]
        if status not in _REFUND_MOVED:
            raise BillRefused(NAME, f"{what}: line {n}: unsupported 退款状态 {status!r}")
        refund_id = row["微信退款单号"]
        amount = -_fen(row, "退款金额", what)
        yield BillLine(
            line_id=f"refund:{refund_id}", kind=LineKind.REFUND, raw_type=f"REFUND/{status}",
            source_ref=refund_id, payment_ref=tid, refund_ref=refund_id, amount=amount,
            fee=fee, net=amount - fee, currency=currency, occurred_at=at,
            merchant_payment_ref=out_trade_no or None,
            merchant_refund_ref=row["商户退款单号"] or None,
        )  # fmt: skip
    else:
        raise BillRefused(NAME, f"{what}: line {n}: unknown 交易状态 {state!r}")


def _rate_fee(amount: int, row: Mapping[str, str]) -> int:
    """``amount`` * 费率 ("0.60%"), rounded half up to the fen."""
    rate = row["费率"]
    try:
        percent = Decimal(rate.removesuffix("%")) if rate.endswith("%") else Decimal("NaN")
    except InvalidOperation:
        percent = Decimal("NaN")
    if not percent.is_finite() or not 0 <= percent <= 100:
        raise BillRefused(NAME, f"{TRADEBILL}: line {row['#']}: 费率 {rate!r} is not a percentage")
    fee = (Decimal(amount) * percent / 100).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return int(fee)


def _check_trade_summary(table: _Table, what: str) -> None:
    summary = table.summary
    missing = [c for c in ("总交易单数", *_TRADE_SUMMARY) if c not in summary]
    if missing:
        raise BillRefused(NAME, f"{what}: summary lacks {', '.join(missing)}")
    count = _count(summary, "总交易单数", what)
    if count != len(table.rows):
        raise BillRefused(NAME, f"{what}: summary 总交易单数 {count}, {len(table.rows)} lines")
    for total, (column, places) in _TRADE_SUMMARY.items():
        stated = _fen(summary, total, what, places)
        added = sum(_fen(row, column, what, places) for row in table.rows)
        if stated != added:
            raise BillRefused(
                NAME, f"{what}: summary {total} {summary[total]} is not the lines' {column} "
                f"total {_yuan(added)}",
            )  # fmt: skip


def parse_fundflowbill(text: str, day: date) -> tuple[BillLine, ...]:
    """A BASIC-account fund flow bill of ``day`` → ``payout`` bill lines (stored, neither
    matched nor totalled; see the module docstring), refusing the bill at the first bad line."""
    what = FUNDFLOW
    table = _table(text, what, "资金流水总笔数", _FUND_COLUMNS)
    lines: list[BillLine] = []
    seen: set[str] = set()
    balance: int | None = None
    for row in table.rows:
        line, balance = _fund_line(row, day, balance)
        if line.line_id in seen:
            raise BillRefused(NAME, f"{what}: line {row['#']} ({line.line_id}): listed twice")
        seen.add(line.line_id)
        lines.append(line)
    _check_fund_summary(table, lines)
    return tuple(lines)


def _fund_line(row: Mapping[str, str], day: date, before: int | None) -> tuple[BillLine, int]:
    what, n = FUNDFLOW, row["#"]
    kind, direction = row["业务类型"], row["收支类型"]
    if kind not in FUND_TYPES:
        raise BillRefused(NAME, f"{what}: line {n}: unknown 业务类型 {kind!r}")
    if direction not in ("收入", "支出"):
        raise BillRefused(NAME, f"{what}: line {n}: unknown 收支类型 {direction!r}")
    size = _fen(row, "收支金额(元)", what)
    amount = size if direction == "收入" else -size
    balance = _fen(row, "账户结余(元)", what)
    if before is not None and balance != before + amount:
        raise BillRefused(
            NAME, f"{what}: line {n}: 账户结余 {row['账户结余(元)']} does not follow "
            f"{_yuan(before)} {'+' if amount >= 0 else '-'} {_yuan(size)}",
        )  # fmt: skip
    ref = row["微信支付业务单号"] or None
    line = BillLine(
        line_id=row["资金流水单号"] or f"line:{n}", kind=LineKind.PAYOUT, raw_type=kind,
        source_ref=ref, payment_ref=ref if kind in ("交易", "扣除交易手续费") else None,
        refund_ref=ref if kind == "退款" else None, amount=amount, fee=0, net=amount,
        currency="CNY", occurred_at=_at(row, "记账时间", day, what),
    )  # fmt: skip
    return line, balance


def _check_fund_summary(table: _Table, lines: Sequence[BillLine]) -> None:
    what, summary = FUNDFLOW, table.summary
    missing = [c for c in _FUND_SUMMARY if c not in summary]
    if missing:
        raise BillRefused(NAME, f"{what}: summary lacks {', '.join(missing)}")
    income = [
        line.amount
        for line, row in zip(lines, table.rows, strict=True)
        if row["收支类型"] == "收入"
    ]
    spent = [-line.amount for line, row in zip(lines, table.rows, strict=True)
             if row["收支类型"] == "支出"]  # fmt: skip
    checks = (
        ("资金流水总笔数", _count(summary, "资金流水总笔数", what), len(lines)),
        ("收入笔数", _count(summary, "收入笔数", what), len(income)),
        ("收入金额", _fen(summary, "收入金额", what), sum(income)),
        ("支出笔数", _count(summary, "支出笔数", what), len(spent)),
        ("支出金额", _fen(summary, "支出金额", what), sum(spent)),
    )
    for name, stated, added in checks:
        if stated != added:
            raise BillRefused(NAME, f"{what}: summary {name} {summary[name]} is not the lines' "
                              f"{added if '笔数' in name else _yuan(added)}")  # fmt: skip


def _yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


def _cst(moment: datetime) -> str:
    return f"{moment.astimezone(ZONE):%Y-%m-%d %H:%M} Beijing time"
