"""Bills (对账单) for the WeChat Pay simulator: ``GET /v3/bill/tradebill``,
``GET /v3/bill/fundflowbill`` and the file download they point to.

Written from WeChat Pay's documentation of 申请交易账单 / 申请资金账单 / 下载账单 like the rest
of :mod:`simulators.wechatpay` (nothing imported from ``adapters/``, ``services/`` or
``domain/``). The simulator wraps the two ``/v3/bill/…`` routes like its other API routes
(merchant signature checked, answer signed); the download route checks the merchant signature
but its file answer is NOT signed (WeChat's bill FAQ: the download carries no signature
headers; the merchant verifies the file by ``hash_value``).

* **Apply** (``bill_date=yyyy-MM-dd``; tradebill ``bill_type`` ALL | SUCCESS | REFUND, default
  ALL; fundflowbill ``account_type`` BASIC | OPERATION | FEES, default BASIC; ``tar_type=GZIP``
  optional) → 200 ``{"hash_type": "SHA1", "hash_value", "download_url"}``.
  ``hash_value`` is the SHA-1 of the *uncompressed* file (the docs: "原始账单(gzip需要解压缩)
  的摘要值"), ``download_url`` is ``<simulator>/v3/billdownload/file?token=…``.
* **Not there yet.** Day D's bills are generated from D+1 10:00 Beijing time (the docs:
  generated after 9, fetch after 10). A day with no row at all → 400 ``NO_STATEMENT_EXIST``
  "请求的账单文件不存在" (at any time: WeChat's FAQ says to stop retrying on it); a day with
  rows asked before D+1 10:00 → 400 ``STATEMENT_CREATING`` "账单生成中". A bad date or one in
  the future → 400 ``PARAM_ERROR``. "Now" is the simulator's clock (settable, below).
* **Trade bill** (UTF-8 CSV): the header row, one row per paid trade (交易状态 ``SUCCESS``,
  交易时间 its ``success_time``) and per refund not ``CLOSED`` (``REFUND``, 交易时间 its
  ``create_time``, 退款状态 ``SUCCESS``/``PROCESSING``) of the Beijing day, then the summary
  header and its row. Every value of a data or summary row is prefixed with a backtick
  (WeChat's guard against spreadsheet number formatting); headers are not. Amounts are yuan
  with two decimals, 手续费 with five (as WeChat prints it) but always whole fen: the fee is
  0.6 % of 应结订单金额 rounded half up to the fen (费率 ``0.60%``), and a refund row carries
  the fee handed back on it, ``-round(0.6 % * 退款金额)``. Fields are written by
  :mod:`csv` (a field holding a comma or quote is quoted). ``SUCCESS`` bills drop the refund
  columns; ``REFUND`` bills add 退款申请时间/退款成功时间 (column order differs: read by name).
* **Fund flow bill** (BASIC account): per trade a 交易 收入 of its amount and a
  扣除交易手续费 支出 of its fee; per refund a 退款 支出 of the refund less the fee handed back
  (备注 "退款总金额X元;含手续费Y元"); 账户结余 is the running balance since the simulator
  started; summary 资金流水总笔数,收入笔数,收入金额,支出笔数,支出金额.
* **Control** (``POST /_sim/bills``, JSON ``{"action": …}``; ``/_sim/reset`` clears it all):
  ``now`` (``at``: ISO time, or null for the real clock); ``books`` (``offset_s``: every row
  booked that many seconds off its real time, so that a test on real workers finds today's
  payments on a past day's bill); ``charge`` (``amount`` fen,
  ``at``?: a paid trade the merchant never created); ``omit`` (``ref``: a transaction_id,
  out_trade_no, refund_id or out_refund_no: its rows are left out); ``shift`` (``ref``,
  ``by`` fen: the row's amounts moved, the summary following); ``fee`` (``ref``,
  ``amount`` fen: added to the row's 手续费); ``corrupt`` (``mode``: ``truncate`` — the served
  file is cut in half, ``hash`` — ``hash_value`` is of other content, ``unknown_state`` — the
  first trade row's 交易状态 is ``MYSTERY``, ``unknown_type`` — the first fund flow row's
  业务类型 is ``神秘业务``, ``mchid`` — trade rows name another merchant; ``null`` ends it).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from simulators.harness import Request, Response

CST = timezone(timedelta(hours=8))
FEE_RATE_PER_MILLE = 6  # 0.6 %
FEE_RATE_TEXT = "0.60%"
READY_AT = time(10, 0)  # D+1 10:00 Beijing time
RETENTION = timedelta(days=92)  # "仅支持三个月内的账单下载申请"
CORRUPT_MODES = frozenset({"truncate", "hash", "unknown_state", "unknown_type", "mchid"})
OTHER_MCHID = "1900009999"

TRADE_ALL_HEADER = [
    "交易时间", "公众账号ID", "商户号", "特约商户号", "设备号", "微信订单号", "商户订单号",
    "用户标识", "交易类型", "交易状态", "付款银行", "货币种类", "应结订单金额", "代金券金额",
    "微信退款单号", "商户退款单号", "退款金额", "充值券退款金额", "退款类型", "退款状态",
    "商品名称", "商户数据包", "手续费", "费率", "订单金额", "申请退款金额", "费率备注",
]  # fmt: skip
TRADE_SUCCESS_HEADER = [
    h for h in TRADE_ALL_HEADER
    if h not in ("微信退款单号", "商户退款单号", "退款金额", "充值券退款金额", "退款类型",
                 "退款状态", "申请退款金额")
]  # fmt: skip
TRADE_REFUND_HEADER = [
    *TRADE_ALL_HEADER[:14],
    "退款申请时间",
    "退款成功时间",
    *TRADE_ALL_HEADER[14:],
]
TRADE_SUMMARY_HEADER = [
    "总交易单数", "应结订单总金额", "退款总金额", "充值券退款总金额", "手续费总金额",
    "订单总金额", "申请退款总金额",
]  # fmt: skip
FUND_HEADER = [
    "记账时间",
    "微信支付业务单号",
    "资金流水单号",
    "业务名称",
    "业务类型",
    "收支类型",
    "收支金额\uff08元\uff09",
    "账户结余\uff08元\uff09",
    "资金变更提交申请人",
    "备注",
    "业务凭证号",
]  # fmt: skip  (full-width parentheses, as WeChat prints them)
FUND_SUMMARY_HEADER = ["资金流水总笔数", "收入笔数", "收入金额", "支出笔数", "支出金额"]

Rows = Callable[[], list[dict[str, Any]]]


def wechat_fee(amount: int) -> int:
    """0.6 % of ``amount`` fen, rounded half up to the fen."""
    return (amount * FEE_RATE_PER_MILLE + 500) // 1000


def yuan(fen: int, places: int = 2) -> str:
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(fen), 100)
    return f"{sign}{whole}.{cents:02d}" + "0" * (places - 2)


def _error(code: str, message: str, status: int = 400) -> Response:
    return Response.json({"code": code, "message": message}, status)


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


@dataclass(frozen=True)
class _Entry:
    """One booked event of the bills: a paid trade or a refund, with its (possibly injected)
    amounts."""

    kind: str  # trade | refund
    at: datetime
    transaction_id: str
    out_trade_no: str
    amount: int  # trade: 应结订单金额; refund: 退款金额 (positive)
    fee: int  # trade: fee kept; refund: fee handed back (positive)
    currency: str
    refund_id: str = ""
    out_refund_no: str = ""
    refund_status: str = ""
    openid: str = ""
    description: str = ""
    attach: str = ""

    @property
    def refs(self) -> set[str]:
        if self.kind == "trade":
            return {self.transaction_id, self.out_trade_no}
        return {self.refund_id, self.out_refund_no}


class BillDesk:
    """The bills of one simulator. ``orders`` and ``refunds`` give the simulator's objects (its
    ``_orders`` and ``_refunds`` values); every method runs under the simulator's ``lock``."""

    def __init__(
        self, lock: Any, *, mchid: str, appid: str, base_url: Callable[[], str],
        orders: Rows, refunds: Rows,
    ) -> None:  # fmt: skip
        self._lock = lock
        self._mchid, self._appid, self._base_url = mchid, appid, base_url
        self._orders, self._refunds = orders, refunds
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.now: datetime | None = None
            self.strays: list[_Entry] = []
            self.omitted: set[str] = set()
            self.shifts: dict[str, int] = {}
            self.extra_fees: dict[str, int] = {}
            self.corrupt: str | None = None
            self.files: dict[str, tuple[bytes, bool]] = {}  # token → (file, gzip)
            self.books_offset = timedelta(0)

    def clock(self) -> datetime:
        return self.now or datetime.now(CST)

    # -- the ledger ---------------------------------------------------------------------------
    def entries(self) -> list[_Entry]:
        """Every booked trade and refund, oldest first, injections applied."""
        found: list[_Entry] = []
        for order in self._orders():
            paid_at = _parse_time(order.get("success_time"))
            if order.get("transaction_id") and paid_at is not None:
                amount = int(order["paid_total"])
                found.append(
                    _Entry("trade", paid_at, order["transaction_id"], order["out_trade_no"],
                           amount, wechat_fee(amount), order["currency"],
                           openid=order.get("openid") or "",
                           description=order.get("description") or "",
                           attach=order.get("attach") or "")
                )  # fmt: skip
        for refund in self._refunds():
            created = _parse_time(refund.get("create_time"))
            if refund.get("status") == "CLOSED" or created is None:
                continue  # a closed refund moved no money: it is on no bill
            amount = int(refund["amount"])
            found.append(
                _Entry("refund", created, refund["transaction_id"], refund["out_trade_no"],
                       amount, wechat_fee(amount), refund["currency"],
                       refund_id=refund["refund_id"], out_refund_no=refund["out_refund_no"],
                       refund_status="SUCCESS" if refund["status"] == "SUCCESS" else "PROCESSING")
            )  # fmt: skip
        found.extend(self.strays)
        out: list[_Entry] = []
        for e in found:
            if e.refs & self.omitted:
                continue
            by = sum(self.shifts.get(r, 0) for r in e.refs)
            extra = sum(self.extra_fees.get(r, 0) for r in e.refs)
            out.append(replace(e, amount=e.amount + by, fee=e.fee + extra) if by or extra else e)
        if self.books_offset:
            out = [replace(e, at=e.at + self.books_offset) for e in out]
        out.sort(key=lambda e: e.at)
        return out

    # -- GET /v3/bill/tradebill and /v3/bill/fundflowbill ------------------------------------
    def tradebill(self, req: Request) -> Response:
        bill_type = req.query.get("bill_type", "ALL")
        if bill_type not in ("ALL", "SUCCESS", "REFUND"):
            return _error("PARAM_ERROR", f"参数错误: bill_type {bill_type} 不合法")
        return self._apply(req, lambda day: self._trade_file(day, bill_type))

    def fundflowbill(self, req: Request) -> Response:
        account = req.query.get("account_type", "BASIC")
        if account not in ("BASIC", "OPERATION", "FEES"):
            return _error("PARAM_ERROR", f"参数错误: account_type {account} 不合法")
        if account != "BASIC":
            return self._apply(req, lambda _day: None)  # nothing moves on those accounts here
        return self._apply(req, self._fund_file)

    def _apply(self, req: Request, build: Callable[[date], bytes | None]) -> Response:
        tar_type = req.query.get("tar_type")
        if tar_type not in (None, "GZIP"):
            return _error("PARAM_ERROR", f"参数错误: tar_type {tar_type} 不合法")
        try:
            day = date.fromisoformat(req.query.get("bill_date", ""))
        except ValueError:
            return _error("PARAM_ERROR", "参数错误: bill_date 格式须为 yyyy-MM-dd")
        with self._lock:
            now = self.clock().astimezone(CST)
            if day >= now.date() + timedelta(days=1) or day < now.date() - RETENTION:
                return _error("PARAM_ERROR", "参数错误: bill_date 须为三个月内的过去日期")
            content = build(day)
            if content is None:
                return _error("NO_STATEMENT_EXIST", "请求的账单文件不存在")
            if now < datetime.combine(day + timedelta(days=1), READY_AT, CST):
                return _error("STATEMENT_CREATING", "账单生成中")
            digest = hashlib.sha1(content).hexdigest()
            if self.corrupt == "hash":
                digest = hashlib.sha1(content + b"\n").hexdigest()
            token = secrets.token_urlsafe(24)
            self.files[token] = (content, tar_type == "GZIP")
        url = f"{self._base_url()}/v3/billdownload/file?token={token}"
        if tar_type == "GZIP":
            url += "&tartype=gzip"
        return Response.json({"hash_type": "SHA1", "hash_value": digest, "download_url": url})

    # -- GET /v3/billdownload/file -----------------------------------------------------------
    def download(self, req: Request) -> Response:
        """The file (gzip when it was asked so); unsigned, as WeChat serves it."""
        with self._lock:
            found = self.files.get(req.query.get("token", ""))
            corrupt = self.corrupt
        if found is None:
            return _error("INVALID_REQUEST", "下载链接无效或已过期")
        content, zipped = found
        body = gzip.compress(content, mtime=0) if zipped else content
        if corrupt == "truncate":
            body = body[: len(body) // 2]
        content_type = "application/x-gzip" if zipped else "text/plain; charset=utf-8"
        return Response(200, body, {"Content-Type": content_type})

    # -- the files ----------------------------------------------------------------------------
    def _day_entries(self, day: date) -> list[_Entry]:
        start = datetime.combine(day, time(), CST)
        end = start + timedelta(days=1)
        return [e for e in self.entries() if start <= e.at < end]

    def _trade_file(self, day: date, bill_type: str) -> bytes | None:
        entries = self._day_entries(day)
        if not entries:
            return None
        wanted = {"ALL": ("trade", "refund"), "SUCCESS": ("trade",), "REFUND": ("refund",)}
        rows = [self._trade_row(e) for e in entries if e.kind in wanted[bill_type]]
        if self.corrupt == "unknown_state" and rows:
            rows[0]["交易状态"] = "MYSTERY"
        header = {"ALL": TRADE_ALL_HEADER, "SUCCESS": TRADE_SUCCESS_HEADER,
                  "REFUND": TRADE_REFUND_HEADER}[bill_type]  # fmt: skip
        chosen = [e for e in entries if e.kind in wanted[bill_type]]
        trades = [e for e in chosen if e.kind == "trade"]
        refunds = [e for e in chosen if e.kind == "refund"]
        settled = sum(e.amount for e in trades)
        refunded = sum(e.amount for e in refunds)
        fees = sum(e.fee for e in trades) - sum(e.fee for e in refunds)
        summary = [str(len(rows)), yuan(settled), yuan(refunded), "0.00", yuan(fees, 5),
                   yuan(settled), yuan(refunded)]  # fmt: skip
        return _csv(header, [[row.get(h, "") for h in header] for row in rows],
                    TRADE_SUMMARY_HEADER, summary)  # fmt: skip

    def _trade_row(self, e: _Entry) -> dict[str, str]:
        row = {
            "交易时间": e.at.astimezone(CST).strftime("%Y-%m-%d %H:%M:%S"),
            "公众账号ID": self._appid,
            "商户号": OTHER_MCHID if self.corrupt == "mchid" else self._mchid,
            "特约商户号": "0", "设备号": "", "微信订单号": e.transaction_id,
            "商户订单号": e.out_trade_no, "用户标识": e.openid, "交易类型": "NATIVE",
            "付款银行": "OTHERS", "货币种类": e.currency, "代金券金额": "0.00",
            "充值券退款金额": "0.00", "商品名称": e.description, "商户数据包": e.attach,
            "费率": FEE_RATE_TEXT, "费率备注": "",
        }  # fmt: skip
        if e.kind == "trade":
            row.update({
                "交易状态": "SUCCESS", "应结订单金额": yuan(e.amount), "订单金额": yuan(e.amount),
                "微信退款单号": "0", "商户退款单号": "0", "退款金额": "0.00",
                "申请退款金额": "0.00", "退款类型": "", "退款状态": "",
                "手续费": yuan(e.fee, 5),
            })  # fmt: skip
        else:
            at = row["交易时间"]
            row.update({
                "交易状态": "REFUND", "应结订单金额": "0.00", "订单金额": "0.00",
                "微信退款单号": e.refund_id, "商户退款单号": e.out_refund_no,
                "退款金额": yuan(e.amount), "申请退款金额": yuan(e.amount),
                "退款类型": "ORIGINAL", "退款状态": e.refund_status, "手续费": yuan(-e.fee, 5),
                "退款申请时间": at, "退款成功时间": at if e.refund_status == "SUCCESS" else "",
            })  # fmt: skip
        return row

    def _fund_file(self, day: date) -> bytes | None:
        start = datetime.combine(day, time(), CST)
        end = start + timedelta(days=1)
        balance = 0
        rows: list[list[str]] = []
        for e in self.entries():
            for when, kind, name, direction, amount, applicant, note, voucher, ref in _flows(e):
                balance += amount if direction == "收入" else -amount
                if start <= when < end:
                    rows.append([
                        when.astimezone(CST).strftime("%Y-%m-%d %H:%M:%S"), ref,
                        _flow_id(kind, ref), name, kind, direction, yuan(amount), yuan(balance),
                        applicant or f"{self._mchid}API", note, voucher,
                    ])  # fmt: skip
        if not rows:
            return None
        if self.corrupt == "unknown_type":
            rows[0][4] = "神秘业务"
        income = [r for r in rows if r[5] == "收入"]
        spent = [r for r in rows if r[5] == "支出"]
        summary = [str(len(rows)), str(len(income)), _sum_yuan(income), str(len(spent)),
                   _sum_yuan(spent)]  # fmt: skip
        return _csv(FUND_HEADER, rows, FUND_SUMMARY_HEADER, summary)

    # -- POST /_sim/bills ---------------------------------------------------------------------
    def control(self, body: dict[str, Any]) -> dict[str, Any]:
        action = body.get("action")
        with self._lock:
            if action == "now":
                self.now = _parse_time(body.get("at"))
                return {"now": self.clock().isoformat()}
            if action == "books":
                self.books_offset = timedelta(seconds=float(body["offset_s"]))
                return {"offset_s": self.books_offset.total_seconds()}
            if action == "charge":
                return self._stray(int(body["amount"]), _parse_time(body.get("at")))
            if action == "corrupt":
                mode = body.get("mode")
                if mode is not None and mode not in CORRUPT_MODES:
                    raise ValueError(f"mode must be one of {sorted(CORRUPT_MODES)} or null")
                self.corrupt = mode
                return {"corrupt": mode}
            ref = str(body["ref"])
            if not any(ref in e.refs for e in self.entries()) and ref not in self.omitted:
                raise LookupError(f"no trade or refund {ref!r} on any bill")
            if action == "omit":
                self.omitted.add(ref)
            elif action == "shift":
                self.shifts[ref] = self.shifts.get(ref, 0) + int(body.get("by", 1))
            elif action == "fee":
                self.extra_fees[ref] = self.extra_fees.get(ref, 0) + int(body["amount"])
            else:
                raise ValueError("action must be now, books, charge, omit, shift, fee or corrupt")
            return {"ref": ref}

    def _stray(self, amount: int, at: datetime | None) -> dict[str, Any]:
        n = len(self.strays)
        tid = "4200" + str(int(hashlib.sha1(f"stray{n}{at}".encode()).hexdigest(), 16))[:24]
        entry = _Entry("trade", at or self.clock(), tid, f"STRAY{n:04d}{tid[-8:]}", amount,
                       wechat_fee(amount), "CNY", openid="o" + tid[-27:],
                       description="不是本店的订单")  # fmt: skip
        self.strays.append(entry)
        return {"transaction_id": entry.transaction_id, "out_trade_no": entry.out_trade_no}


def _flows(e: _Entry) -> list[tuple[datetime, str, str, str, int, str, str, str, str]]:
    """The fund flow rows of one entry: (time, 业务类型, 业务名称, 收支类型, amount, applicant,
    备注, 业务凭证号, 微信支付业务单号)."""
    if e.kind == "trade":
        return [
            (e.at, "交易", "交易", "收入", e.amount, "system", "", e.out_trade_no,
             e.transaction_id),
            (e.at, "扣除交易手续费", "交易", "支出", e.fee, "system", "", e.out_trade_no,
             e.transaction_id),
        ]  # fmt: skip
    note = f"退款总金额{yuan(e.amount)}元;含手续费{yuan(e.fee)}元"
    return [(e.at, "退款", "退款", "支出", e.amount - e.fee, "", note, e.out_refund_no,
             e.refund_id)]  # fmt: skip


def _flow_id(kind: str, ref: str) -> str:
    return str(int(hashlib.sha1(f"{kind}{ref}".encode()).hexdigest(), 16))[:28]


def _sum_yuan(rows: list[list[str]]) -> str:
    total = sum(int(r[6].replace(".", "")) for r in rows)  # yuan() always prints 2 decimals
    return yuan(total)


def _csv(header: list[str], rows: list[list[str]], summary_header: list[str],
         summary: list[str]) -> bytes:  # fmt: skip
    """Header, backticked rows, summary header, backticked summary, as UTF-8 bytes."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(["`" + v for v in row] for row in rows)
    writer.writerow(summary_header)
    writer.writerow("`" + v for v in summary)
    return out.getvalue().encode("utf-8")
