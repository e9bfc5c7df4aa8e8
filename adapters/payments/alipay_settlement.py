# ruff: noqa: RUF001, RUF002, RUF003 -- Alipay's files use full-width punctuation (：，（）)
"""Alipay's daily bills (对账单) as a settlement source
(:class:`adapters.payments.settlement.SettlementSource`).

Wire: ``alipay.data.dataservice.bill.downloadurl.query`` (biz_content ``bill_type``,
``bill_date`` ``yyyy-MM-dd``) through the payment adapter's own gateway transport — the same
RSA2 request signing, response verification and error classification
(:class:`adapters.payments.alipay.AlipayProvider`, reused by subclassing, not copied) — answers
``bill_download_url``, a link that lives about 30 s; it is followed at once (``GET``, same
keep-alive session) and the ZIP it serves is the raw file stored (its SHA-256 is the bill's).

Contracts:

* **Days** are Beijing days (:func:`domain.settlement.bill_zone`). Day ``D`` is not asked for
  before it is over (``D+1 00:00`` Beijing): :class:`BillNotReady` without a request. From then
  on it is asked; Alipay publishes it "by 09:00 the next day", and its answer ``isp.bill_not_exist``
  (also accepted spelled ``isv.bill-not-exist``) raises :class:`BillNotReady` with ``ready_at``
  ``D+1 09:00`` Beijing (or an hour from now, once that has passed). Alipay gives the same answer
  for an account-flow bill of a day without any money movement: such a day stays "not ready"
  (there is nothing to reconcile; the daily job stops asking after its look-back days).
* **Another account's bill** is refused: the ZIP's member names (``<pid>_<yyyymmdd>_…``) must
  all carry one partner id and the bill's date, and every file's ``#账号：[…]`` header must be
  that partner id's account (the pid followed by Alipay's account suffix). With ``pid``
  configured (``ALIPAY_PID``) the names' pid must equal it; unset, only that consistency is
  checked (the app's keys can only fetch the bills of the merchant they belong to).
* **Refused** (:class:`BillRefused`, naming the file, the line and the field): not a ZIP or a
  damaged one (truncated, bad CRC), a member over ``max_bytes``, missing or unexpected members,
  a file that is not GBK (strict decoding; one that reads as UTF-8 is named as such), a header,
  list marker or column row out of place, no end-of-list marker (a cut file), a row with another
  number of fields than the column row, an unknown 业务类型, an amount that is not yuan with two
  decimals, a time outside the day, an id listed twice, a row whose amounts do not add up, and
  trailer or summary (汇总) totals that differ from the rows.
* **Amounts**: yuan strings → fen ``int`` through :class:`~decimal.Decimal` (never float);
  currency CNY.

The two bill types, and why they do not count money twice
(``services.settlement_report.report`` adds up the lines of each stored file):

* ``trade`` (业务明细) carries every payment (业务类型 交易) and refund (退款) with the fee Alipay
  kept on it: these are the lines matched and totalled. A payment is a ``charge`` line:
  ``amount`` = 商家实收 (which must equal 订单金额 less 商家优惠, the discount the merchant
  funded), ``fee`` = −(服务费 + 分润) (both written as money taken, ≤ 0), ``net`` = ``amount −
  fee``; ``payment_ref`` = 支付宝交易号 (``trade_no``), ``merchant_payment_ref`` = 商户订单号.
  A refund is a ``refund`` line: ``amount`` = 商家实收 (< 0, at most 订单金额), ``fee`` likewise,
  ``merchant_refund_ref`` = 退款批次号/请求号 (our ``out_request_no``: Alipay gives a refund no id
  of its own, so ``refund_ref`` stays empty). Line ids: ``trade_no``, and ``trade_no/request_no``
  for a refund.
* ``signcustomer`` (账务明细, the account's money flow) books the same payments (在线支付), refunds
  (交易退款) and per-trade fees (收费 naming the order) again. It is fetched, verified (types,
  amounts, the running 账户余额 row to row, trailer and summary totals) and stored as evidence,
  but those rows become **no lines**, so nothing is counted twice. Only what the trade bill cannot
  carry becomes a line: a 收费 that names no order (a fee belonging to no payment → a ``fee``
  line, hence an ``unexpected_fee`` for a person to confirm) and money leaving for the bank
  (提现, 转账 → ``payout``, neither matched nor totalled).
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import requests

from adapters.payments.alipay import AlipayConfig, AlipayProvider
from adapters.payments.settlement import Bill, BillNotReady, BillRefused
from domain.errors import ProviderRejected, ProviderUnavailable
from domain.settlement import BillLine, LineKind, bill_zone, day_bounds, ready_at

__all__ = [
    "BILL_TYPES",
    "AlipaySettlementConfig",
    "AlipaySettlementSource",
    "parse_bill",
]

NAME = "alipay"
BILL_TYPES = ("trade", "signcustomer")
METHOD = "alipay.data.dataservice.bill.downloadurl.query"
CURRENCY = "CNY"
#: Alipay publishes day D's bills by D+1 09:00 Beijing.
PUBLISHED_AFTER = timedelta(hours=9)
_NOT_READY = frozenset({"isp.bill_not_exist", "isv.bill-not-exist"})
_MAX_BYTES = 64 * 1024 * 1024
_TS = "%Y-%m-%d %H:%M:%S"
_AMOUNT = re.compile(r"^[+-]?\d{1,13}\.\d{2}$")
_MEMBER = re.compile(r"^(\d{16})_(\d{8})_(业务明细|账务明细)(\(汇总\))?\.csv$")
_ACCOUNT = re.compile(r"^#账号：\[(\d+)\]$")
_PERIOD = re.compile(r"^#起始日期：\[(.+?)\]\s+终止日期：\[(.+?)\]$")


@dataclass(frozen=True)
class AlipaySettlementConfig:
    """``gateway`` is the payment adapter's configuration (same app, keys and gateway);
    ``pid`` the merchant's partner id (2088…) the bills must belong to, if known."""

    gateway: AlipayConfig
    pid: str | None = None
    account: str = "default"
    max_bytes: int = _MAX_BYTES
    download_timeout: float = 30.0


class _BillGateway(AlipayProvider):
    """The payment adapter's signed gateway call, for the bill method."""

    def bill_download_url(self, bill_type: str, bill_date: str) -> dict[str, Any]:
        """The verified ``…_response``: success, or a signed "bill does not exist" answer."""
        biz = {"bill_type": bill_type, "bill_date": bill_date}
        return self._call(METHOD, biz, outcomes=_NOT_READY)


class AlipaySettlementSource:
    """Alipay's ``trade`` and ``signcustomer`` bills per Beijing day (see the module docstring)."""

    name = NAME
    bill_types: tuple[str, ...] = BILL_TYPES

    def __init__(
        self, config: AlipaySettlementConfig, session: requests.Session | None = None
    ) -> None:
        self._config = config
        self._session = session or requests.Session()
        self._gateway = _BillGateway(config.gateway, self._session)
        self.account = config.account

    def fetch_bill(self, day: date, bill_type: str, *, now: datetime) -> Bill:
        """``day``'s bill of ``bill_type``, downloaded, verified and parsed, or an error."""
        if bill_type not in BILL_TYPES:
            raise ProviderRejected(NAME, f"bill_type: unknown {bill_type!r}", code="bill_type")
        zone = bill_zone(NAME)
        published = ready_at(day, PUBLISHED_AFTER, zone)
        if now < day_bounds(day, zone)[1]:
            raise BillNotReady(NAME, f"the bill of {day} is published {_beijing(published)}",
                               published)  # fmt: skip
        body = self._gateway.bill_download_url(bill_type, day.isoformat())
        if body.get("sub_code") in _NOT_READY:
            later = max(published, now + timedelta(hours=1))
            raise BillNotReady(
                NAME, f"the {bill_type} bill of {day} is not ready ({body.get('sub_msg')}); "
                f"ask again from {_beijing(later)}", later,
            )  # fmt: skip
        url = body.get("bill_download_url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise ProviderRejected(NAME, f"{METHOD}: no bill_download_url", code="INVALID_RESPONSE")
        raw = self._download(url)
        lines = parse_bill(raw, day, bill_type, pid=self._config.pid,
                           max_bytes=self._config.max_bytes)  # fmt: skip
        return Bill(NAME, self.account, day, bill_type, raw, lines)

    def _download(self, url: str) -> bytes:
        """The ZIP behind a fresh download link. A failed or refused download (an expired link
        answers an error page) is retryable: the next attempt asks for a new link."""
        timeout = (self._config.gateway.connect_timeout, self._config.download_timeout)
        try:
            with self._session.get(url, timeout=timeout, stream=True) as response:
                kind = response.headers.get("Content-Type", "")
                if response.status_code != 200 or kind.startswith("text/html"):
                    raise ProviderUnavailable(
                        NAME, f"bill download: HTTP {response.status_code} {kind} "
                        "(link expired?)", code="bill_download",
                    )  # fmt: skip
                raw = bytearray()
                for chunk in response.iter_content(64 * 1024):
                    raw += chunk
                    if len(raw) > self._config.max_bytes:
                        raise BillRefused(NAME, f"zip: larger than {self._config.max_bytes} bytes")
        except requests.RequestException as exc:
            raise ProviderUnavailable(NAME, f"bill download: {exc!r}", code="network") from exc
        return bytes(raw)


def _beijing(moment: datetime) -> str:
    return f"{moment.astimezone(bill_zone(NAME)):%Y-%m-%d %H:%M} Beijing"


# -- parsing ---------------------------------------------------------------------------------------
@dataclass
class _Sheet:
    """One CSV file of a bill: the account in its header, its columns, rows and trailer."""

    name: str
    account: str
    columns: tuple[str, ...]
    rows: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    trailer: list[tuple[int, str]] = field(default_factory=list)

    def bad(self, line_no: int, what: str) -> BillRefused:
        return BillRefused(NAME, f"{self.name} line {line_no}: {what}")


@dataclass(frozen=True)
class _Layout:
    """What a bill type's files are called and hold."""

    base: str  # 业务明细 | 账务明细
    titles: tuple[str, str]  # detail, summary
    lists: tuple[str, str]  # the list markers' names, detail and summary
    columns: tuple[tuple[str, ...], tuple[str, ...]]  # columns each file must have


_LAYOUTS: Mapping[str, _Layout] = {
    "trade": _Layout(
        "业务明细", ("支付宝交易记录明细查询", "支付宝业务汇总查询"),
        ("业务明细列表", "业务汇总列表"),
        (("支付宝交易号", "商户订单号", "业务类型", "完成时间", "订单金额（元）", "商家实收（元）",
          "商家优惠（元）", "退款批次号/请求号", "服务费（元）", "分润（元）"),
         ("门店编号", "交易订单总笔数", "退款订单总笔数", "商家实收（元）", "服务费（元）",
          "实收净额（元）")),
    ),
    "signcustomer": _Layout(
        "账务明细", ("支付宝账务明细查询", "支付宝账务汇总查询"),
        ("账务明细列表", "账务汇总列表"),
        (("账务流水号", "业务流水号", "商户订单号", "发生时间", "收入金额（+元）",
          "支出金额（-元）", "账户余额（元）", "业务类型"),
         ("业务类型", "收入笔数", "收入金额（+元）", "支出笔数", "支出金额（-元）")),
    ),
}  # fmt: skip


def parse_bill(
    raw: bytes, day: date, bill_type: str, *, pid: str | None, max_bytes: int = _MAX_BYTES
) -> tuple[BillLine, ...]:
    """A bill's ZIP → its lines (see the module docstring), or :class:`BillRefused` at the
    first problem. ``pid``: the partner id the bill must belong to (None: any, consistently)."""
    layout = _LAYOUTS[bill_type]
    account_pid, texts = _unzip(raw, day, layout, pid, max_bytes)
    detail_name, summary_name = sorted(texts, key=lambda n: "(汇总)" in n)
    detail = _read_sheet(detail_name, texts[detail_name], layout, 0, day, account_pid)
    summary = _read_sheet(summary_name, texts[summary_name], layout, 1, day, account_pid)
    if bill_type == "trade":
        return _trade_lines(detail, summary, day)
    return _account_lines(detail, summary, day)


def _unzip(
    raw: bytes, day: date, layout: _Layout, pid: str | None, max_bytes: int
) -> tuple[str, dict[str, str]]:
    """The partner id the files belong to, and the detail and summary files by name,
    decoded; names, account and encoding checked."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw), metadata_encoding="gbk")
        members = archive.infolist()
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise BillRefused(
            NAME, f"zip: not a valid archive ({len(raw)} bytes; truncated?): {exc}"
        ) from None
    found: dict[str, str] = {}
    pids: set[str] = set()
    for info in members:
        match = _MEMBER.match(info.filename)
        if match is None or match.group(3) != layout.base:
            raise BillRefused(NAME, f"zip: unexpected file {info.filename!r}")
        if match.group(2) != day.strftime("%Y%m%d"):
            raise BillRefused(NAME, f"zip: {info.filename} is the bill of another day")
        pids.add(match.group(1))
        if info.file_size > max_bytes:
            raise BillRefused(NAME, f"zip: {info.filename} larger than {max_bytes} bytes")
        try:
            data = archive.read(info)
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as exc:
            raise BillRefused(NAME, f"zip: {info.filename} is damaged: {exc}") from None
        found[info.filename] = _decode(info.filename, data, layout)
    kinds = sorted("(汇总)" in name for name in found)
    if kinds != [False, True]:
        raise BillRefused(NAME, f"zip: want one {layout.base} file and its summary, got "
                                f"{sorted(found)}")  # fmt: skip
    if len(pids) != 1 or (pid is not None and pids != {pid}):
        raise BillRefused(NAME, f"zip: bill of account {'/'.join(sorted(pids))}, "
                                f"not ours ({pid or 'one account'})")  # fmt: skip
    return pids.pop(), found


def _decode(name: str, data: bytes, layout: _Layout) -> str:
    """GBK, strictly. A UTF-8 file can decode as GBK by chance, so the title is checked too."""
    titles = tuple(f"#{t}" for t in layout.titles)
    try:
        text = data.decode("gbk")
    except UnicodeDecodeError as exc:
        problem = f"not GBK (byte {exc.start})"
    else:
        if text.startswith(titles):
            return text
        problem = "does not start with its title line"
    try:
        if data.decode("utf-8").startswith(titles):
            problem = "encoded as UTF-8, not GBK"
    except UnicodeDecodeError:
        pass
    raise BillRefused(NAME, f"{name}: {problem}")


def _read_sheet(
    name: str, text: str, layout: _Layout, which: int, day: date, account_pid: str
) -> _Sheet:
    """Header lines, list marker, column row, rows up to the end marker, then the trailer."""
    lines = text.splitlines()
    list_name = layout.lists[which]
    begin, end = re.compile(rf"^#-+{list_name}-+$"), re.compile(rf"^#-+{list_name}结束-+$")

    def bad(n: int, what: str) -> BillRefused:
        return BillRefused(NAME, f"{name} line {n}: {what}")

    if len(lines) < 5:
        raise bad(len(lines), "too short (truncated?)")
    if lines[0] != f"#{layout.titles[which]}":
        raise bad(1, f"title {lines[0]!r}")
    account = _ACCOUNT.match(lines[1])
    if account is None or not account.group(1).startswith(account_pid):
        raise bad(2, f"#账号 {lines[1]!r} is not the account of {account_pid}")
    period = _PERIOD.match(lines[2])
    if period is None or period.group(1) != day.strftime("%Y年%m月%d日 00:00:00"):
        raise bad(3, f"#起始日期 {lines[2]!r} is not {day}")
    if not begin.match(lines[3]):
        raise bad(4, f"list marker {lines[3]!r}")
    columns = tuple(_cells(lines[4]))
    missing = [c for c in layout.columns[which] if c not in columns]
    if missing or len(set(columns)) != len(columns):
        raise bad(5, f"columns missing {missing} or repeated")
    sheet = _Sheet(name, account.group(1), columns)
    for n, line in enumerate(lines[5:], start=6):
        if end.match(line):
            sheet.trailer = [(m, t) for m, t in enumerate(lines[n:], start=n + 1) if t.strip()]
            return sheet
        if line.startswith("#") or not line.strip():
            raise bad(n, f"unexpected line {line[:40]!r} inside the list")
        cells = _cells(line)
        if len(cells) != len(columns):
            raise bad(n, f"{len(cells)} fields, the column row has {len(columns)}")
        sheet.rows.append((n, dict(zip(columns, cells, strict=True))))
    raise bad(len(lines), f"no end-of-list marker (#…{list_name}结束…): truncated")


def _cells(line: str) -> list[str]:
    """One CSV line; Alipay ends every value with a tab (to keep spreadsheets from mangling
    long numbers), stripped here."""
    return [cell.strip() for cell in next(csv.reader([line]))]


def _fen(sheet: _Sheet, n: int, row: Mapping[str, str], column: str, *, empty: bool = False) -> int:
    """Yuan with exactly two decimals → fen, exactly. ``empty``: a blank cell is zero."""
    text = row.get(column, "")
    if not text and empty:
        return 0
    if not _AMOUNT.match(text):
        raise sheet.bad(n, f"{column} {text!r} is not a yuan amount")
    return int(Decimal(text) * 100)


def _time(sheet: _Sheet, n: int, row: Mapping[str, str], column: str, day: date) -> datetime:
    zone = bill_zone(NAME)
    try:
        moment = datetime.strptime(row.get(column, ""), _TS).replace(tzinfo=zone)
    except ValueError:
        raise sheet.bad(n, f"{column} {row.get(column)!r} is not a time") from None
    start, end = day_bounds(day, zone)
    if not start <= moment < end:
        raise sheet.bad(n, f"{column} {row[column]} is outside {day}")
    return moment


def _trailer(sheet: _Sheet, pattern: str) -> tuple[int, int]:
    """(count, fen) from the trailer line matching ``pattern`` (groups: count, yuan)."""
    for n, line in sheet.trailer:
        found = re.match(pattern, line)
        if found:
            if not _AMOUNT.match(found.group(2)):
                raise sheet.bad(n, f"total {found.group(2)!r} is not a yuan amount")
            return int(found.group(1)), int(Decimal(found.group(2)) * 100)
    raise sheet.bad(len(sheet.trailer), f"no trailer line like {pattern!r}")


def _total_row(sheet: _Sheet, key: str) -> tuple[int, dict[str, str]]:
    for n, row in sheet.rows:
        if row.get(key) == "合计":
            return n, row
    raise BillRefused(NAME, f"{sheet.name}: no 合计 row")


def _check(sheet: _Sheet, n: int, what: str, stated: int, counted: int) -> None:
    if stated != counted:
        raise sheet.bad(n, f"{what} {stated} differs from the rows' {counted}")


# -- trade (业务明细) ----------------------------------------------------------------------
def _trade_lines(detail: _Sheet, summary: _Sheet, day: date) -> tuple[BillLine, ...]:
    lines = [_trade_line(detail, n, row, day) for n, row in detail.rows]
    seen: set[str] = set()
    for (n, _row), line in zip(detail.rows, lines, strict=True):
        if line.line_id in seen:
            raise detail.bad(n, f"{line.line_id} listed twice")
        seen.add(line.line_id)
    charges = [x for x in lines if x.kind is LineKind.CHARGE]
    refunds = [x for x in lines if x.kind is LineKind.REFUND]
    end = detail.trailer[0][0] if detail.trailer else 0
    count, total = _trailer(detail, r"^#交易合计：(\d+)笔，商家实收共([+-]?[\d.]+)元")
    _check(detail, end, "#交易合计 count", count, len(charges))
    _check(detail, end, "#交易合计 商家实收", total, sum(x.amount for x in charges))
    count, total = _trailer(detail, r"^#退款合计：(\d+)笔，商家实收退款共([+-]?[\d.]+)元")
    _check(detail, end, "#退款合计 count", count, len(refunds))
    _check(detail, end, "#退款合计 商家实收", total, sum(x.amount for x in refunds))
    n, row = _total_row(summary, "门店编号")
    for column, counted in (("交易订单总笔数", len(charges)), ("退款订单总笔数", len(refunds))):
        if not row[column].isdigit():
            raise summary.bad(n, f"{column} {row[column]!r} is not a count")
        _check(summary, n, column, int(row[column]), counted)
    service = sum(_fen(detail, m, r, "服务费（元）") for m, r in detail.rows)
    for column, counted in (("商家实收（元）", sum(x.amount for x in lines)),
                            ("服务费（元）", service),
                            ("实收净额（元）", sum(x.net for x in lines))):  # fmt: skip
        _check(summary, n, column, _fen(summary, n, row, column), counted)
    return tuple(lines)


def _trade_line(sheet: _Sheet, n: int, row: Mapping[str, str], day: date) -> BillLine:
    kind = {"交易": LineKind.CHARGE, "退款": LineKind.REFUND}.get(row["业务类型"])
    if kind is None:
        raise sheet.bad(n, f"unknown 业务类型 {row['业务类型']!r}")
    trade_no, request_no = row["支付宝交易号"], row["退款批次号/请求号"]
    if not trade_no:
        raise sheet.bad(n, "支付宝交易号 is empty")
    order, received = _fen(sheet, n, row, "订单金额（元）"), _fen(sheet, n, row, "商家实收（元）")
    discount = _fen(sheet, n, row, "商家优惠（元）", empty=True)
    service = _fen(sheet, n, row, "服务费（元）")
    shared = _fen(sheet, n, row, "分润（元）", empty=True)
    if kind is LineKind.CHARGE:
        if received <= 0 or order != received + discount:
            raise sheet.bad(n, f"商家实收 {received} + 商家优惠 {discount} is not 订单金额 {order}")
        if service > 0 or shared > 0:
            raise sheet.bad(n, f"服务费 {service} / 分润 {shared} on a payment must be <= 0")
        line_id = trade_no
    else:
        if not 0 < -received <= order:
            raise sheet.bad(n, f"refund 商家实收 {received} is not within 订单金额 {order}")
        if not request_no:
            raise sheet.bad(n, "退款批次号/请求号 is empty on a refund")
        line_id = f"{trade_no}/{request_no}"
    fee = -(service + shared)
    return BillLine(
        line_id=line_id, kind=kind, raw_type=row["业务类型"], source_ref=trade_no,
        payment_ref=trade_no, refund_ref=None, amount=received, fee=fee, net=received - fee,
        currency=CURRENCY, occurred_at=_time(sheet, n, row, "完成时间", day),
        merchant_payment_ref=row["商户订单号"] or None,
        merchant_refund_ref=request_no if kind is LineKind.REFUND else None,
    )  # fmt: skip


# -- signcustomer (账务明细) ---------------------------------------------------------------
#: 业务类型 of the account flow → the line it makes (None: carried by the trade bill, no line).
_FLOWS: Mapping[str, LineKind | None] = {
    "在线支付": None, "交易退款": None, "收费": LineKind.FEE, "提现": LineKind.PAYOUT,
    "转账": LineKind.PAYOUT,
}  # fmt: skip
_INCOME_ONLY = frozenset({"在线支付"})
_EXPENSE_ONLY = frozenset({"交易退款", "收费", "提现"})


def _account_lines(detail: _Sheet, summary: _Sheet, day: date) -> tuple[BillLine, ...]:
    lines: list[BillLine] = []
    seen: set[str] = set()
    balance: int | None = None
    income = [0, 0]  # count, fen
    expense = [0, 0]
    for n, row in detail.rows:
        money_in = _fen(detail, n, row, "收入金额（+元）")
        money_out = _fen(detail, n, row, "支出金额（-元）")
        moved = _flow_money(detail, n, row, money_in, money_out)
        after = _fen(detail, n, row, "账户余额（元）")
        if balance is not None and after != balance + moved:
            raise detail.bad(n, f"账户余额 {after} is not {balance} + {moved}")
        balance = after
        flow_no = row["账务流水号"]
        if not flow_no or flow_no in seen:
            raise detail.bad(n, f"账务流水号 {flow_no!r} empty or listed twice")
        seen.add(flow_no)
        tally = income if moved > 0 else expense
        tally[0], tally[1] = tally[0] + 1, tally[1] + moved
        line = _account_line(detail, n, row, moved, day)
        if line is not None:
            lines.append(line)
    end = detail.trailer[0][0] if detail.trailer else 0
    for label, tally in (("收入合计", income), ("支出合计", expense)):
        count, total = _trailer(detail, rf"^#{label}：(\d+)笔，共([+-]?[\d.]+)元")
        _check(detail, end, f"#{label} count", count, tally[0])
        _check(detail, end, f"#{label} amount", total, tally[1])
    n, row = _total_row(summary, "业务类型")
    for column, counted in (("收入笔数", income[0]), ("支出笔数", expense[0])):
        if not row[column].isdigit():
            raise summary.bad(n, f"{column} {row[column]!r} is not a count")
        _check(summary, n, column, int(row[column]), counted)
    _check(summary, n, "收入金额", _fen(summary, n, row, "收入金额（+元）"), income[1])
    _check(summary, n, "支出金额", _fen(summary, n, row, "支出金额（-元）"), expense[1])
    return tuple(lines)


def _flow_money(sheet: _Sheet, n: int, row: Mapping[str, str], money_in: int, out: int) -> int:
    """The row's signed money: income ≥ 0, expense ≤ 0, exactly one of them, in the direction
    its 业务类型 allows."""
    kind = row["业务类型"]
    if kind not in _FLOWS:
        raise sheet.bad(n, f"unknown 业务类型 {kind!r}")
    if money_in < 0 or out > 0 or (money_in != 0) == (out != 0):
        raise sheet.bad(n, f"收入 {money_in} / 支出 {out}: want one, income >= 0, expense <= 0")
    if (kind in _INCOME_ONLY and out) or (kind in _EXPENSE_ONLY and money_in):
        raise sheet.bad(n, f"{kind} moving money the wrong way")
    return money_in + out


def _account_line(
    sheet: _Sheet, n: int, row: Mapping[str, str], moved: int, day: date
) -> BillLine | None:
    kind = _FLOWS[row["业务类型"]]
    occurred = _time(sheet, n, row, "发生时间", day)
    if kind is None or (kind is LineKind.FEE and row["商户订单号"]):
        return None  # the trade bill carries this money (see the module docstring)
    ref = row["业务流水号"] or None
    return BillLine(
        line_id=row["账务流水号"], kind=kind, raw_type=row["业务类型"], source_ref=ref,
        payment_ref=None, refund_ref=None, amount=moved, fee=0, net=moved, currency=CURRENCY,
        occurred_at=occurred,
    )  # fmt: skip
