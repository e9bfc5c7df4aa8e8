# ruff: noqa: RUF001, RUF002, RUF003 -- Alipay's files use full-width punctuation (：，（）)
"""Settlement bills (对账单) for the Alipay simulator:
``alipay.data.dataservice.bill.downloadurl.query`` and the short-lived download it answers.

Written from Alipay's documentation of the method and from the bill layout that public
integrations parse (the column lists of 业务明细 and 账务明细), like the rest of
:mod:`simulators.alipay`: nothing is imported from ``adapters/``, ``services/`` or ``domain/``.

* **The query** (biz_content ``bill_type``, ``bill_date``) answers ``bill_download_url``: a URL on
  this simulator, valid ``url_ttl_s`` seconds (30, as Alipay's), that serves a ZIP. An expired or
  unknown link gets an HTML error page (HTTP 403; Alipay's exact answer is unconfirmed).
  ``bill_type`` other than ``trade``/``signcustomer`` → ``isv.invalid-bill-type``; a
  ``bill_date`` that is not a daily ``yyyy-MM-dd`` (monthly bills are not simulated), or is today
  or later → ``isv.invalid-bill-date`` (sub_code spellings unconfirmed); the bill of day D asked
  before D+1 09:00 Beijing → ``isp.bill_not_exist`` (the sub_code several SDKs test for). "Now"
  is the bill clock (``clock`` below), so tests can ask for today's bill as if it were tomorrow.
* **The ZIP** holds two GBK-encoded CSV files, named in GBK without the UTF-8 flag as Alipay's
  are: ``<pid>_<yyyymmdd>_业务明细.csv`` and ``<pid>_<yyyymmdd>_业务明细(汇总).csv`` for
  ``trade``, ``…_账务明细.csv`` and ``…_账务明细(汇总).csv`` for ``signcustomer``. Each has
  ``#`` header lines (title, ``#账号：[<pid>0156]``, ``#起始日期：[…]   终止日期：[…]``), a list
  marker, the column header row, the rows (every value followed by a tab, as Alipay writes them
  so that spreadsheets keep long numbers), an end marker and trailer lines (totals, ``#导出时间``).
* **Rows** come from the simulator's own trades and refunds (dashboard refunds included) whose
  完成时间 falls on the Beijing day: a trade row (业务类型 交易) per payment with a fee of
  0.6 % of the amount rounded half up to the fen (服务费, written negative: money taken), a
  refund row (退款, 商家实收 negative, no fee) per refund. The account-flow bill (账务明细) books
  each payment as 在线支付 income, its fee as a separate 收费 expense naming the order, each
  refund as 交易退款 expense, with a running 账户余额 over the account's whole history.
* **Control** (``POST /_sim/bills``, JSON ``{"action": …}``): ``clock`` (``now``: ISO 8601 or
  null for the real clock), ``books`` (``offset_s``: every movement is booked that many seconds
off its real time — a test on real workers, whose clocks it cannot move, finds today's payments
on a past day's bill), ``ttl`` (``seconds``: the links' lifetime), ``trade`` (``amount``
  yuan: a payment the merchant never made, paid now), ``omit`` (``ref``: a ``trade_no`` /
  ``out_trade_no`` leaves the payment's rows out, an ``out_request_no`` the refund's), ``shift``
  (``ref`` as for omit, ``by`` fen added to the money moved), ``fee`` (``amount`` yuan: a 收费
  row that names no order, in the account-flow bill), ``corrupt`` (``mode``: ``truncate`` — the
  zip cut in half, ``utf8`` — the CSV files encoded as UTF-8, ``unknown_type`` — the first row's
  业务类型 becomes 神秘业务, ``other_account`` — another pid in the names and the header,
  ``bad_total`` — the trailer counts one row too many; null ends it). ``/_sim/reset`` clears it.
"""

from __future__ import annotations

import hashlib
import io
import secrets
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from simulators.harness import Request, Response

__all__ = ["BillDesk", "BillError", "alipay_fee"]

BEIJING = timezone(timedelta(hours=8))
TS_FORMAT = "%Y-%m-%d %H:%M:%S"
FEE_PER_10K = 60  # 0.6 %
READY_HOUR = 9  # the bill of D is published by D+1 09:00 Beijing
OTHER_PID = "2088999999999999"
_ACCOUNT_SUFFIX = "0156"  # the account number is the pid plus this suffix
_CORRUPT_MODES = frozenset({"truncate", "utf8", "unknown_type", "other_account", "bad_total"})
_RULE = "-" * 41

TRADE_COLUMNS = (
    "支付宝交易号", "商户订单号", "业务类型", "商品名称", "创建时间", "完成时间", "门店编号",
    "门店名称", "操作员", "终端号", "对方账户", "订单金额（元）", "商家实收（元）",
    "支付宝红包（元）", "集分宝（元）", "支付宝优惠（元）", "商家优惠（元）", "券核销金额（元）",
    "券名称", "商家红包消费金额（元）", "卡消费金额（元）", "退款批次号/请求号", "服务费（元）",
    "分润（元）", "备注",
)  # fmt: skip
TRADE_SUMMARY_COLUMNS = (
    "门店编号", "门店名称", "交易订单总笔数", "退款订单总笔数", "订单金额（元）", "商家实收（元）",
    "支付宝优惠（元）", "商家优惠（元）", "卡消费金额（元）", "服务费（元）", "分润（元）",
    "实收净额（元）",
)  # fmt: skip
ACCOUNT_COLUMNS = (
    "账务流水号", "业务流水号", "商户订单号", "商品名称", "发生时间", "对方账号",
    "收入金额（+元）", "支出金额（-元）", "账户余额（元）", "交易渠道", "业务类型", "备注",
)  # fmt: skip
ACCOUNT_SUMMARY_COLUMNS = ("业务类型", "收入笔数", "收入金额（+元）", "支出笔数", "支出金额（-元）")

Ledger = Callable[[], tuple[list[dict[str, Any]], list[dict[str, Any]]]]


class BillError(Exception):
    """A signed business failure (code 40004) for the gateway to emit."""

    def __init__(self, sub_code: str, sub_msg: str) -> None:
        super().__init__(sub_code)
        self.sub_code, self.sub_msg = sub_code, sub_msg


def alipay_fee(fen: int) -> int:
    """0.6 % of ``fen``, rounded half up to the fen."""
    return (fen * FEE_PER_10K + 5000) // 10000


def _yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


def _fen(text: Any) -> int:
    try:
        value = Decimal(str(text))
    except InvalidOperation as exc:
        raise ValueError(f"amount {text!r} is not yuan") from exc
    if value != value.quantize(Decimal("0.01")) or value <= 0:
        raise ValueError(f"amount {text!r} is not a positive yuan amount")
    return int(value * 100)


def _cn_time(moment: datetime) -> str:
    return moment.strftime("%Y年%m月%d日 %H:%M:%S")


def _parse_ts(text: str) -> datetime:
    return datetime.strptime(text, TS_FORMAT).replace(tzinfo=BEIJING)


@dataclass
class _Event:
    """One movement of money on the account, before it is written as rows."""

    at: datetime
    kind: str  # trade | refund | fee
    trade_no: str
    out_trade_no: str
    subject: str
    created: str
    fen: int  # positive: the payment, the refund or the extra fee
    total_fen: int  # the trade's amount (refund rows show it as 订单金额)
    request_no: str = ""
    memo: str = ""


class BillDesk:
    """The bills of one simulated merchant. ``ledger`` returns the simulator's trades and refunds
    (plain dicts) and is called under ``lock``; ``pid`` is the merchant's partner id."""

    def __init__(self, lock: Any, ledger: Ledger, pid: str, base_url: Callable[[], str]) -> None:
        self._lock = lock
        self._ledger = ledger
        self.pid = pid
        self._base_url = base_url
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.now: datetime | None = None
            self.url_ttl_s = 30.0
            self.links: dict[str, tuple[bytes, float]] = {}
            self.strays: list[_Event] = []
            self.fees: list[_Event] = []
            self.omitted: set[str] = set()
            self.shifts: dict[str, int] = {}
            self.corrupt: str | None = None
            self.books_offset = timedelta(0)

    def clock(self) -> datetime:
        return (self.now or datetime.now(BEIJING)).astimezone(BEIJING)

    # -- alipay.data.dataservice.bill.downloadurl.query ---------------------------------------
    def query(self, biz: dict[str, Any]) -> dict[str, Any]:
        """The download URL of a daily bill, or a :class:`BillError` (caller holds the lock)."""
        bill_type = biz.get("bill_type")
        if bill_type not in ("trade", "signcustomer"):
            raise BillError("isv.invalid-bill-type", f"账单类型不合法: {bill_type!r}")
        text = str(biz.get("bill_date") or "")
        try:
            day = datetime.strptime(text, "%Y-%m-%d").date()
        except ValueError:
            raise BillError("isv.invalid-bill-date", f"账单日期格式不合法: {text!r}") from None
        now = self.clock()
        if day >= now.date() or day < date(2016, 1, 1) or len(text) != 10:
            raise BillError("isv.invalid-bill-date", "不支持下载当日及未来的账单")
        if now < datetime.combine(day + timedelta(days=1), datetime.min.time(), BEIJING).replace(
            hour=READY_HOUR
        ):
            raise BillError("isp.bill_not_exist", "账单尚未生成，请于次日9点后再试")
        raw = self.bill_zip(str(bill_type), day)
        token = secrets.token_hex(16)
        self.links = {k: v for k, v in self.links.items() if v[1] > time.monotonic()}
        self.links[token] = (raw, time.monotonic() + self.url_ttl_s)
        pid, stamp = self._pid(), day.strftime("%Y%m%d")
        url = (
            f"{self._base_url()}/downloadBillFile.resource?bizType={bill_type}&userId={pid}"
            f"&fileType=csv.zip&bizDates={stamp}&downloadFileName={pid}_{stamp}.csv.zip"
            f"&fileId={token}&timestamp={int(time.time() * 1000)}&token={token}"
        )
        return {"bill_download_url": url}

    def download(self, req: Request) -> Response:
        """``GET /downloadBillFile.resource``: the ZIP while the link lives, else an error page."""
        token = req.query.get("token", "")
        with self._lock:
            found = self.links.get(token)
        if found is None or found[1] <= time.monotonic():
            page = "<html><body><h1>下载链接已失效</h1><p>请重新获取账单下载地址</p></body></html>"
            return Response(403, page.encode("utf-8"), {"Content-Type": "text/html;charset=utf-8"})
        return Response(200, found[0], {"Content-Type": "application/oct-stream"})

    # -- the files ----------------------------------------------------------------------------
    def bill_zip(self, bill_type: str, day: date) -> bytes:
        """The ZIP of ``day``'s bill of ``bill_type`` as published now (faults applied)."""
        pid, stamp = self._pid(), day.strftime("%Y%m%d")
        base = "业务明细" if bill_type == "trade" else "账务明细"
        if bill_type == "trade":
            detail, summary = self._trade_files(day, pid)
        else:
            detail, summary = self._account_files(day, pid)
        encoding = "utf-8" if self.corrupt == "utf8" else "gbk"
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, text in ((f"{pid}_{stamp}_{base}.csv", detail),
                               (f"{pid}_{stamp}_{base}(汇总).csv", summary)):  # fmt: skip
                archive.writestr(_GbkName(name), text.encode(encoding))
        raw = buffer.getvalue()
        return raw[: len(raw) // 2] if self.corrupt == "truncate" else raw

    def _pid(self) -> str:
        return OTHER_PID if self.corrupt == "other_account" else self.pid

    def _heading(self, title: str, pid: str, day: date) -> list[str]:
        start = datetime.combine(day, datetime.min.time())
        return [
            f"#{title}",
            f"#账号：[{pid}{_ACCOUNT_SUFFIX}]",
            f"#起始日期：[{_cn_time(start)}]   终止日期：[{_cn_time(start + timedelta(days=1))}]",
        ]

    def _exported(self) -> str:
        return f"#导出时间：[{_cn_time(self.clock().replace(tzinfo=None))}]"

    def _events(self) -> list[_Event]:
        """Every movement of money ever, oldest first, with omissions and shifts applied."""
        trades, refunds = self._ledger()
        by_trade = {t["trade_no"]: t for t in trades}
        events = [
            _Event(_parse_ts(t["paid_at"]), "trade", t["trade_no"], t["out_trade_no"],
                   t["subject"], t["gmt_create"], t["paid_fen"], t["paid_fen"])
            for t in trades if t.get("paid_at")
        ]  # fmt: skip
        for r in refunds:
            trade = by_trade[r["trade_no"]]
            events.append(
                _Event(_parse_ts(r["gmt_refund_pay"]), "refund", r["trade_no"],
                       r["out_trade_no"], trade["subject"], trade["gmt_create"],
                       _fen(r["amount"]), trade["paid_fen"], r["out_request_no"],
                       r.get("reason") or "")
            )  # fmt: skip
        events += self.strays + self.fees
        kept = []
        for e in events:
            refs = {e.request_no} if e.kind == "refund" else {e.trade_no, e.out_trade_no}
            if refs & self.omitted:
                continue
            shift = sum(self.shifts.get(ref, 0) for ref in refs if ref)
            if shift:
                e = _Event(**{**e.__dict__, "fen": e.fen + shift})
                if e.kind == "trade":
                    e.total_fen += shift
            if self.books_offset:
                e = _Event(**{**e.__dict__, "at": e.at + self.books_offset})
            kept.append(e)
        kept.sort(key=lambda e: e.at)  # stable: booking order within a second
        return kept

    def _trade_files(self, day: date, pid: str) -> tuple[str, str]:
        rows: list[list[str]] = []
        paid = refunded = fees = 0
        n_trades = n_refunds = 0
        for e in self._events():
            if e.at.date() != day or e.kind == "fee":
                continue
            done = e.at.strftime(TS_FORMAT)
            if e.kind == "trade":
                fee = alipay_fee(e.fen)
                n_trades, paid, fees = n_trades + 1, paid + e.fen, fees + fee
                cells = [e.trade_no, e.out_trade_no, "交易", e.subject, e.created, done, "", "", "",
                         "", "159****5620", _yuan(e.total_fen), _yuan(e.fen), "0.00", "0.00",
                         "0.00", "0.00", "0.00", "", "0.00", "0.00", "", _yuan(-fee), "0.00",
                         ""]  # fmt: skip
            else:
                n_refunds, refunded = n_refunds + 1, refunded + e.fen
                cells = [e.trade_no, e.out_trade_no, "退款", e.subject, e.created, done, "", "",
                         "", "", "159****5620", _yuan(e.total_fen), _yuan(-e.fen), "0.00", "0.00",
                         "0.00", "0.00", "0.00", "", "0.00", "0.00", e.request_no, "0.00", "0.00",
                         e.memo]  # fmt: skip
            rows.append(cells)
        self._corrupt_rows(rows, TRADE_COLUMNS.index("业务类型"))
        counted = n_trades + (1 if self.corrupt == "bad_total" else 0)
        detail = [
            *self._heading("支付宝交易记录明细查询", pid, day),
            f"#{_RULE}业务明细列表{_RULE}",
            ",".join(TRADE_COLUMNS),
            *(",".join(f"{c}\t" for c in cells) for cells in rows),
            f"#{_RULE}业务明细列表结束{_RULE}",
            f"#交易合计：{counted}笔，商家实收共{_yuan(paid)}元，商家优惠共0.00元",
            f"#退款合计：{n_refunds}笔，商家实收退款共{_yuan(-refunded)}元，商家优惠退款共0.00元",
            self._exported(),
        ]
        total = [
            "合计", "", str(n_trades), str(n_refunds), _yuan(paid), _yuan(paid - refunded),
            "0.00", "0.00", "0.00", _yuan(-fees), "0.00", _yuan(paid - refunded - fees),
        ]  # fmt: skip
        summary = [
            *self._heading("支付宝业务汇总查询", pid, day),
            f"#{_RULE}业务汇总列表{_RULE}",
            ",".join(TRADE_SUMMARY_COLUMNS),
            ",".join(f"{c}\t" for c in total),
            f"#{_RULE}业务汇总列表结束{_RULE}",
            self._exported(),
        ]
        return "\r\n".join(detail) + "\r\n", "\r\n".join(summary) + "\r\n"

    def _account_files(self, day: date, pid: str) -> tuple[str, str]:
        rows: list[list[str]] = []
        balance = 0
        sums: dict[str, list[int]] = {}  # 业务类型 -> [in count, in fen, out count, out fen]
        for n, (e, kind, money, memo) in enumerate(self._flows(), start=1):
            balance += money
            if e.at.date() != day:
                continue
            digest = hashlib.sha256(f"{n}{e.trade_no}{kind}".encode()).hexdigest()
            flow_no = e.at.strftime("%Y%m%d") + digest[:12]
            total = sums.setdefault(kind, [0, 0, 0, 0])
            if money > 0:
                total[0], total[1] = total[0] + 1, total[1] + money
            else:
                total[2], total[3] = total[2] + 1, total[3] + money
            rows.append([
                flow_no, e.trade_no, e.out_trade_no, e.subject, e.at.strftime(TS_FORMAT),
                "" if kind == "收费" else "159****5620", _yuan(max(money, 0)),
                _yuan(min(money, 0)), _yuan(balance), "支付宝", kind, memo,
            ])  # fmt: skip
        self._corrupt_rows(rows, ACCOUNT_COLUMNS.index("业务类型"))
        n_in = sum(t[0] for t in sums.values()) + (1 if self.corrupt == "bad_total" else 0)
        detail = [
            *self._heading("支付宝账务明细查询", pid, day),
            f"#{_RULE}账务明细列表{_RULE}",
            ",".join(ACCOUNT_COLUMNS),
            *(",".join(f"{c}\t" for c in cells) for cells in rows),
            f"#{_RULE}账务明细列表结束{_RULE}",
            f"#收入合计：{n_in}笔，共{_yuan(sum(t[1] for t in sums.values()))}元",
            f"#支出合计：{sum(t[2] for t in sums.values())}笔，"
            f"共{_yuan(sum(t[3] for t in sums.values()))}元",
            self._exported(),
        ]
        lines = [[k, str(t[0]), _yuan(t[1]), str(t[2]), _yuan(t[3])] for k, t in sums.items()]
        everything = [sum(t[i] for t in sums.values()) for i in range(4)]
        lines.append(["合计", str(everything[0]), _yuan(everything[1]), str(everything[2]),
                      _yuan(everything[3])])  # fmt: skip
        summary = [
            *self._heading("支付宝账务汇总查询", pid, day),
            f"#{_RULE}账务汇总列表{_RULE}",
            ",".join(ACCOUNT_SUMMARY_COLUMNS),
            *(",".join(f"{c}\t" for c in cells) for cells in lines),
            f"#{_RULE}账务汇总列表结束{_RULE}",
            self._exported(),
        ]
        return "\r\n".join(detail) + "\r\n", "\r\n".join(summary) + "\r\n"

    def _flows(self) -> list[tuple[_Event, str, int, str]]:
        """Account movements: (event, 业务类型, signed fen, 备注), oldest first."""
        flows: list[tuple[_Event, str, int, str]] = []
        for e in self._events():
            if e.kind == "trade":
                flows.append((e, "在线支付", e.fen, ""))
                flows.append((e, "收费", -alipay_fee(e.fen), f"交易服务费[{e.trade_no}]"))
            elif e.kind == "refund":
                flows.append((e, "交易退款", -e.fen, f"退款[{e.request_no}]"))
            else:
                flows.append((e, "收费", -e.fen, e.memo))
        return flows

    def _corrupt_rows(self, rows: list[list[str]], type_column: int) -> None:
        if self.corrupt == "unknown_type" and rows:
            rows[0][type_column] = "神秘业务"

    # -- POST /_sim/bills ---------------------------------------------------------------------
    def control(self, req: Request) -> Response:
        body = req.json() or {}
        action = body.get("action")
        try:
            with self._lock:
                result = self._act(action, body)
        except (KeyError, ValueError, TypeError) as exc:
            return Response.json({"error": f"{action}: {exc}"}, 400)
        return Response.json(result)

    def _act(self, action: Any, body: dict[str, Any]) -> dict[str, Any]:
        if action == "clock":
            now = body.get("now")
            self.now = datetime.fromisoformat(now) if now else None
            if self.now is not None and self.now.tzinfo is None:
                raise ValueError("now needs a UTC offset")
            return {"now": self.clock().isoformat()}
        if action == "books":
            self.books_offset = timedelta(seconds=float(body["offset_s"]))
            return {"offset_s": self.books_offset.total_seconds()}
        if action == "ttl":
            self.url_ttl_s = float(body["seconds"])
            return {"url_ttl_s": self.url_ttl_s}
        if action == "trade":
            return self._stray(_fen(body["amount"]))
        if action == "fee":
            fen, now = _fen(body["amount"]), datetime.now(BEIJING)
            memo = str(body.get("memo") or "服务费[年费]")
            self.fees.append(_Event(now, "fee", "", "", "", "", fen, 0, memo=memo))
            return {"amount": _yuan(fen), "at": now.strftime(TS_FORMAT)}
        if action in ("omit", "shift"):
            ref = str(body["ref"])
            if not ref:
                raise ValueError("ref is empty")
            if action == "omit":
                self.omitted.add(ref)
            else:
                self.shifts[ref] = self.shifts.get(ref, 0) + int(body.get("by", 1))
            return {"ref": ref}
        if action == "corrupt":
            mode = body.get("mode")
            if mode is not None and mode not in _CORRUPT_MODES:
                raise ValueError(f"mode must be one of {sorted(_CORRUPT_MODES)} or null")
            self.corrupt = mode
            return {"corrupt": mode}
        raise ValueError("action must be clock, books, ttl, trade, fee, omit, shift or corrupt")

    def _stray(self, fen: int) -> dict[str, Any]:
        now = datetime.now(BEIJING)
        trade_no = now.strftime("%Y%m%d") + "".join(secrets.choice("0123456789") for _ in range(20))
        out_trade_no = "STRAY" + secrets.token_hex(6).upper()
        stamp = now.strftime(TS_FORMAT)
        stray = _Event(now, "trade", trade_no, out_trade_no, "不明交易", stamp, fen, fen)
        self.strays.append(stray)
        return {"trade_no": trade_no, "out_trade_no": out_trade_no, "amount": _yuan(fen)}


class _GbkName(zipfile.ZipInfo):
    """A member name stored in GBK without the UTF-8 flag, as Alipay's archives have them
    (``zipfile`` would otherwise write UTF-8 and set the flag)."""

    def __init__(self, name: str) -> None:
        super().__init__(name, date_time=time.localtime()[:6])
        self.compress_type = zipfile.ZIP_DEFLATED

    def _encodeFilenameFlags(self) -> tuple[bytes, int]:  # zipfile's own hook
        return self.filename.encode("gbk"), self.flag_bits
