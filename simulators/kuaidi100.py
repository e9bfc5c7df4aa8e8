"""Kuaidi100 (快递100) simulator: real-time query, subscription and signed pushes.

Written from the protocol description (provider-protocols.md §4), independently of the adapter:
it imports nothing from ``adapters/``, ``services/`` or ``domain/``.

Wire behaviour
--------------
``POST /poll/query.do`` (form ``customer``, ``param``, ``sign``), checked in this order; failures
are HTTP 200 with ``{"result": false, "returnCode": "<code>", "message": "…"}``:

* missing field or unknown ``customer`` → 400; ``sign != upper(MD5(param + key + customer))`` → 503
* more than ``quota`` accepted queries within ``quota_window_s`` → 601
* unparseable ``param``, missing ``com``/``num``, unknown carrier, number not 6-32 chars → 400
* **per-number throttle** (the official doc only says "keep ≥ 30 min or the number is locked"):
  a number queried again within ``min_query_interval_s`` real seconds gets ``lock_return_code``,
  default **"502" (server busy) — UNCONFIRMED**: the real code for a locked number is not
  documented anywhere we found; it is configurable. A locked query does not restart the interval.
* carrier in ``phone_required_carriers`` (default ``shunfeng``) without a matching phone → 408
* number unknown, registered under another carrier, or without a visible trace yet → 500
* otherwise the success body (``state``, ``ischeck``, ``data`` newest first unless ``order=asc``;
  ``resultv2`` 4/8 adds ``statusCode`` advanced codes and makes ``state`` an advanced code)

``POST /poll`` (form ``schema=json``, ``param`` with ``key`` inside): bad JSON / unsupported
carrier / bad number / bad ``callbackurl`` → 700; wrong ``key`` → 600; number already ``polling`` →
501; else 200 ``提交成功``. Re-subscribing after ``shutdown``/``abort`` is accepted at once (the
real 30-minute wait is not simulated).

Pushes: form ``param`` (+ ``sign = upper(MD5(param + salt))`` when a salt was given) to the
``callbackurl``. Each ``polling`` subscription is checked every ``push_interval_s`` simulated
seconds (first check ``first_push_delay_s`` after subscribing): a longer trace → ``polling``
push; a final trace (signed 3 / returned-signed 4) → ``shutdown``; no change for
``stuck_abort_after_s`` (60 days) → ``abort`` "60天无变化"; no trace at all for
``not_found_abort_after_s`` (3 days) → ``abort`` "3天查询无记录". A push is acknowledged only by a
JSON body with ``"result": true``; otherwise it is retried ``push_retries`` times, ~30 min
(simulated) apart. :class:`PushOptions` adds duplicates, delays and stale out-of-order re-sends.

Time: ``time_scale`` simulated seconds pass per real second; :meth:`Kuaidi100Simulator.advance`
jumps ahead. The throttle and quota windows are in *real* seconds.

Control plane (besides the harness's ``/_sim/ledger``, ``/_sim/faults``, ``/_sim/reset``):
``POST /_sim/register`` ``{carrier, waybill, script, phone}``, ``POST /_sim/advance``
``{seconds}``, ``POST /_sim/push_now`` ``{waybill, status}``, ``POST /_sim/push_options``.
Harness faults: ``error_rate`` → HTTP 502 page, timeouts, resets; ``business_error`` → every call
answers that ``returnCode``.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import requests

from simulators.harness import Notifier, Request, Response, SimulatorServer, serve_forever

__all__ = ["CARRIERS", "SCRIPTS", "Kuaidi100Simulator", "PushOptions", "main"]

CARRIERS = frozenset(
    {
        "yuantong",
        "zhongtong",
        "yunda",
        "shentong",
        "shunfeng",
        "jd",
        "ems",
        "jtexpress",
        "debangkuaidi",
    }
)
_CHINA_TZ = timezone(timedelta(hours=8))
_HOUR = 3600.0
_DAY = 86400.0
_FINAL_STATES = frozenset({"3", "4"})  # signed / returned and signed by the sender
_NAMES = {"0": "在途", "1": "揽收", "2": "疑难", "3": "签收", "4": "退签", "5": "派件", "6": "退回"}


# -- scripted traces ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    offset_h: float  # simulated hours after registration
    code: str  # advanced status code (resultv2=4)
    base: str  # basic state code
    context: str
    area: str


# (origin city, origin district, hub, destination city, destination district)
_ROUTES = (
    ("上海市", "青浦区", "杭州转运中心", "北京市", "朝阳区"),
    ("广州市", "白云区", "长沙转运中心", "武汉市", "洪山区"),
    ("杭州市", "余杭区", "南京转运中心", "成都市", "武侯区"),
    ("深圳市", "龙岗区", "郑州转运中心", "西安市", "雁塔区"),
)


def _first_leg(route: tuple[str, ...]) -> list[Step]:
    o, od, hub, _d, _dd = route
    return [
        Step(0.5, "102", "1", f"【{o}】商家已下单, 等待快递员揽收", o),
        Step(2, "103", "1", f"【{o}{od}公司】已揽收", o),
        Step(6, "1002", "0", f"快件离开【{o}{od}公司】, 已发往【{hub}】", o),
    ]


def _to_doorstep(route: tuple[str, ...]) -> list[Step]:
    _o, _od, hub, d, dd = route
    return [
        *_first_leg(route),
        Step(12, "1002", "0", f"快件已到达【{hub}】", hub),
        Step(14, "1002", "0", f"快件离开【{hub}】, 已发往【{d}转运中心】", hub),
        Step(24, "1001", "0", f"快件已到达【{d}{dd}公司】", d),
        Step(30, "5", "5", f"【{d}{dd}公司】派件员: 王师傅 13800138000 正在为您派件", d),
    ]


def _normal(route: tuple[str, ...]) -> list[Step]:
    d, dd = route[3], route[4]
    return [*_to_doorstep(route), Step(34, "301", "3", f"【{d}{dd}】快件已签收, 签收人: 本人", d)]


def _exception(route: tuple[str, ...]) -> list[Step]:
    d = route[3]
    text = "派件异常: 收件人电话无法接通, 快件滞留在站点"
    return [*_to_doorstep(route), Step(33, "2", "2", text, d)]


def _returned(route: tuple[str, ...]) -> list[Step]:
    o, d = route[0], route[3]
    return [
        *_to_doorstep(route),
        Step(32, "6", "6", "收件人拒收, 快件退回寄件人", d),
        Step(40, "6", "6", f"快件离开【{d}转运中心】, 退回【{o}】", d),
        Step(60, "4", "4", "快件已退回, 寄件人已签收", o),
    ]


def _never_found(_route: tuple[str, ...]) -> list[Step]:
    return []


SCRIPTS: dict[str, Callable[[tuple[str, ...]], list[Step]]] = {
    "normal": _normal,
    "exception": _exception,  # stays at state 2 (疑难)
    "returned": _returned,  # 6 (退回) then 4 (退签)
    "stuck": _first_leg,  # no update after the first hours
    "never_found": _never_found,  # no trace, ever
}


@dataclass
class _Waybill:
    carrier: str
    number: str
    script: str
    steps: list[Step]
    registered_sim: float
    phone: str | None

    def visible(self, sim_now: float) -> list[Step]:
        return [s for s in self.steps if self.registered_sim + s.offset_h * _HOUR <= sim_now]

    def step_time(self, step: Step) -> float:
        return self.registered_sim + step.offset_h * _HOUR


@dataclass
class _Subscription:
    carrier: str
    number: str
    callbackurl: str
    salt: str | None
    resultv2: str
    subscribed_sim: float
    next_check_sim: float
    status: str = "polling"
    pushed_events: int = 0
    last_body: bytes | None = None  # previous push, re-sent stale when out_of_order is on


@dataclass
class PushOptions:
    """How pushes misbehave: ``duplicate`` sends two copies concurrently, ``delay_s`` (real)
    delivers late, ``out_of_order`` re-sends the previous push ``stale_delay_s`` after the new one,
    so a stale snapshot arrives last."""

    duplicate: bool = False
    delay_s: float = 0.0
    out_of_order: bool = False
    stale_delay_s: float = 0.2


def _md5_upper(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest().upper()


def _compact(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def _fail(code: str, message: str) -> Response:
    return Response.json({"result": False, "returnCode": code, "message": message})


def _busy_page(_req: Request) -> Response:
    # What an overloaded gateway in front of the API answers: HTML, not the JSON protocol.
    body = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
    return Response(502, body, {"Content-Type": "text/html"})


class Kuaidi100Simulator(SimulatorServer):
    """Kuaidi100 on 127.0.0.1 (see the module docstring for the exact behaviour)."""

    def __init__(
        self,
        customer: str,
        key: str,
        *,
        time_scale: float = 3600.0,
        min_query_interval_s: float = 1800.0,
        lock_return_code: str = "502",
        quota: int | None = None,
        quota_window_s: float = _DAY,
        phone_required_carriers: frozenset[str] = frozenset({"shunfeng"}),
        push_interval_s: float = 4 * _HOUR,
        first_push_delay_s: float = 15 * 60,
        push_retries: int = 3,
        push_retry_delays: tuple[float, ...] | None = None,
        stuck_abort_after_s: float = 60 * _DAY,
        not_found_abort_after_s: float = 3 * _DAY,
        tick_s: float = 0.02,
        port: int = 0,
    ) -> None:
        super().__init__("kuaidi100", port=port, error_response=_busy_page)
        self.customer, self.key, self.time_scale = customer, key, time_scale
        self.min_query_interval_s, self.lock_return_code = min_query_interval_s, lock_return_code
        self.quota, self.quota_window_s = quota, quota_window_s
        self.phone_required_carriers = phone_required_carriers
        self.push_interval_s, self.first_push_delay_s = push_interval_s, first_push_delay_s
        self.stuck_abort_after_s = stuck_abort_after_s
        self.not_found_abort_after_s = not_found_abort_after_s
        self.push_options = PushOptions()
        self._tick_s = tick_s
        #: The clock of the throttle and quota windows (real seconds); a test may set its own.
        self.window_clock: Callable[[], float] = time.monotonic
        self._state = threading.RLock()
        self._sim_origin, self._mono_origin, self._advanced = time.time(), time.monotonic(), 0.0
        self._clear_state()
        # Real retries come ~30-35 min apart; compress them with the clock.
        delays = push_retry_delays or (1800.0 / time_scale,) * push_retries
        self._notifier = Notifier(self._is_ack, retry_delays=delays)
        self._ticker_stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self.ledger_provider = self.ledger
        self.reset_hooks.append(self._clear_state)
        self._add_routes()

    def _clear_state(self) -> None:
        with self._state:
            self._waybills: dict[str, _Waybill] = {}
            self._subs: dict[str, _Subscription] = {}
            self._queries: dict[str, dict[str, Any]] = {}
            self._last_query: dict[str, float] = {}  # number -> monotonic time of last accepted
            self._quota_times: deque[float] = deque()
            self._query_times: list[float] = []  # every query request received, any outcome
            self._quota_rejections = 0
            self._throttle_violations = 0
            self._pushes: dict[str, dict[str, Any]] = {}
            self.push_options = PushOptions()

    def _add_routes(self) -> None:
        self.route("POST", "/poll/query.do", self._query)
        self.route("POST", "/poll", self._subscribe)
        self.route("POST", "/_sim/register", self._ctl_register)
        self.route("POST", "/_sim/advance", self._ctl_advance)
        self.route("POST", "/_sim/push_now", self._ctl_push_now)
        self.route("POST", "/_sim/push_options", self._ctl_push_options)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> Kuaidi100Simulator:
        super().start()
        self._ticker = threading.Thread(target=self._tick_loop, name="sim-k100-tick", daemon=True)
        self._ticker.start()
        return self

    def stop(self) -> None:
        self._ticker_stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
        self._notifier.stop()
        super().stop()

    def __enter__(self) -> Kuaidi100Simulator:
        return self.start()

    # -- clock ---------------------------------------------------------------------------------
    def sim_now(self) -> float:
        """Simulated Unix time: starts at real time, runs ``time_scale`` times faster."""
        with self._state:
            elapsed = time.monotonic() - self._mono_origin
            return self._sim_origin + elapsed * self.time_scale + self._advanced

    def advance(self, seconds: float) -> None:
        """Jump the simulated clock ahead, then run the push check at once."""
        with self._state:
            self._advanced += seconds
        self.tick()

    # -- control -------------------------------------------------------------------------------
    def register_waybill(
        self, carrier: str, waybill: str, script: str = "normal", phone: str | None = None
    ) -> None:
        """Make ``waybill`` known; its ``script`` trace starts now (simulated time)."""
        if script not in SCRIPTS:
            raise ValueError(f"unknown script {script!r}; one of {sorted(SCRIPTS)}")
        route = _ROUTES[zlib.crc32(waybill.encode()) % len(_ROUTES)]
        with self._state:
            self._waybills[waybill] = _Waybill(
                carrier, waybill, script, SCRIPTS[script](route), self.sim_now(), phone
            )

    def set_push_options(self, **changes: Any) -> None:
        names = {f.name for f in fields(PushOptions)}
        if set(changes) - names:
            raise ValueError(f"unknown push options: {sorted(set(changes) - names)}")
        with self._state:
            for name, value in changes.items():
                setattr(self.push_options, name, value)

    def push_now(self, waybill: str, status: str | None = None) -> bool:
        """Push the current trace to the subscriber now; False if ``waybill`` has no subscription.

        ``status`` defaults to ``polling`` (``shutdown`` once the trace is final); ``shutdown`` and
        ``abort`` end the subscription.
        """
        with self._state:
            sub = self._subs.get(waybill)
            if sub is None:
                return False
            steps = self._visible(sub.carrier, waybill, self.sim_now())
            sub.pushed_events = len(steps)
            final = bool(steps) and steps[-1].base in _FINAL_STATES
            status = status or ("shutdown" if final else "polling")
            if status in ("shutdown", "abort"):
                sub.status = status  # those end the subscription, as real ones do
            param = self._push_param(sub, status, "")
        self._send_push(sub, param)
        return True

    def ledger(self) -> dict[str, Any]:
        """Queries per number (count, Unix timestamps, throttle violations), the receipt time of
        every query request (``query_times``, whatever its outcome, for rate checks), subscriptions,
        pushes per number (sent, answered, acked, log) and raw delivery attempts."""
        with self._state:
            return {
                "queries": json.loads(json.dumps(self._queries)),
                "query_times": list(self._query_times),
                "throttle_violations": self._throttle_violations,
                "quota_rejections": self._quota_rejections,
                "waybills": {
                    n: {"carrier": w.carrier, "script": w.script} for n, w in self._waybills.items()
                },
                "subscriptions": {n: self._sub_view(s) for n, s in self._subs.items()},
                "pushes": json.loads(json.dumps(self._pushes, ensure_ascii=False)),
                "deliveries": [list(d) for d in self._notifier.deliveries],
                "sim_now": self.sim_now(),
            }

    @staticmethod
    def _sub_view(sub: _Subscription) -> dict[str, Any]:
        view = asdict(sub)
        view.pop("last_body")
        view.pop("salt")
        return view

    # -- query ---------------------------------------------------------------------------------
    def _query(self, req: Request) -> Response:
        with self._state:
            self._query_times.append(time.time())
        if self.faults.business_error:
            return _fail(self.faults.business_error, "simulated business error")
        form = req.form()
        customer, param, sign = form.get("customer"), form.get("param"), form.get("sign")
        if not (customer and param and sign):
            return _fail("400", "参数不完整")
        if customer != self.customer:
            return _fail("400", "账号未授权")
        if not hmac.compare_digest(_md5_upper(param + self.key + customer), sign):
            return _fail("503", "验证签名失败")
        if not self._take_quota():
            return _fail("601", "key已过期或查询量不足")
        return self._answer_query(param)

    def _answer_query(self, param: str) -> Response:
        try:
            p = json.loads(param)
        except ValueError:
            return _fail("400", "param不是合法的JSON")
        if not isinstance(p, dict):
            return _fail("400", "param不是JSON对象")
        com, num = str(p.get("com") or ""), str(p.get("num") or "")
        if com not in CARRIERS or not 6 <= len(num) <= 32:
            return _fail("400", "快递公司或单号不合法")
        if self._throttled(num):
            return _fail(self.lock_return_code, "查询过于频繁, 单号已锁定")
        with self._state:
            wb = self._waybills.get(num)
            if com in self.phone_required_carriers and not _phone_ok(p.get("phone"), wb):
                return _fail("408", "手机号码校验失败")
            body = self._snapshot(com, num, str(p.get("resultv2") or ""), str(p.get("order") or ""))
        return Response.json(body) if body else _fail("500", "查询无结果, 请隔段时间再查")

    def _take_quota(self) -> bool:
        now = self.window_clock()
        with self._state:
            while self._quota_times and now - self._quota_times[0] >= self.quota_window_s:
                self._quota_times.popleft()
            if self.quota is not None and len(self._quota_times) >= self.quota:
                self._quota_rejections += 1
                return False
            self._quota_times.append(now)
            return True

    def _throttled(self, num: str) -> bool:
        """Record the query; True when it comes within ``min_query_interval_s`` of the last
        accepted one (the lock does not restart the interval)."""
        now = self.window_clock()
        with self._state:
            rec = self._queries.setdefault(
                num, {"count": 0, "timestamps": [], "throttle_violations": 0}
            )
            rec["count"] += 1
            rec["timestamps"].append(time.time())
            last = self._last_query.get(num)
            if last is not None and now - last < self.min_query_interval_s:
                rec["throttle_violations"] += 1
                self._throttle_violations += 1
                return True
            self._last_query[num] = now
            return False

    def _visible(self, carrier: str, num: str, sim_now: float) -> list[Step]:
        wb = self._waybills.get(num)
        return wb.visible(sim_now) if wb is not None and wb.carrier == carrier else []

    def _snapshot(self, carrier: str, num: str, resultv2: str, order: str) -> dict[str, Any] | None:
        """The query-success body (also a push's ``lastResult``); None without a trace."""
        steps = self._visible(carrier, num, self.sim_now())
        if not steps:
            return None
        wb = self._waybills[num]
        advanced = resultv2 in ("4", "8")
        data = [_event_json(wb, s, resultv2) for s in steps]
        if order != "asc":
            data.reverse()
        last = steps[-1]
        return {
            "message": "ok",
            "nu": num,
            "ischeck": "1" if last.base == "3" else "0",
            "condition": "F00",
            "com": carrier,
            "status": "200",
            "state": last.code if advanced else last.base,
            "data": data,
        }

    # -- subscription --------------------------------------------------------------------------
    def _subscribe(self, req: Request) -> Response:
        if self.faults.business_error:
            return _fail(self.faults.business_error, "simulated business error")
        try:
            p = json.loads(req.form().get("param") or "")
        except ValueError:
            return _fail("700", "param不是合法的JSON")
        if not isinstance(p, dict) or not isinstance(p.get("parameters", {}), dict):
            return _fail("700", "参数格式错误")
        if not hmac.compare_digest(str(p.get("key") or "").encode(), self.key.encode()):
            return _fail("600", "您不是合法的订阅者")
        error = _subscription_error(p)
        if error:
            return _fail("700", error)
        return self._add_subscription(p)

    def _add_subscription(self, p: dict[str, Any]) -> Response:
        params: dict[str, Any] = p.get("parameters") or {}
        num = str(p["number"])
        with self._state:
            existing = self._subs.get(num)
            if existing is not None and existing.status == "polling":
                return _fail("501", "重复订阅")
            now = self.sim_now()
            self._subs[num] = _Subscription(
                carrier=str(p["company"]),
                number=num,
                callbackurl=str(params["callbackurl"]),
                salt=str(params["salt"]) if params.get("salt") else None,
                resultv2=str(params.get("resultv2") or ""),
                subscribed_sim=now,
                next_check_sim=now + self.first_push_delay_s,
            )
        return Response.json({"result": True, "returnCode": "200", "message": "提交成功"})

    # -- pushes --------------------------------------------------------------------------------
    def _tick_loop(self) -> None:
        while not self._ticker_stop.wait(self._tick_s):
            self.tick()

    def tick(self) -> None:
        """Check every due ``polling`` subscription and push what changed."""
        pushes: list[tuple[_Subscription, str]] = []
        with self._state:
            now = self.sim_now()
            for sub in self._subs.values():
                if sub.status == "polling" and now >= sub.next_check_sim:
                    sub.next_check_sim = now + self.push_interval_s
                    param = self._evaluate(sub, now)
                    if param is not None:
                        pushes.append((sub, param))
        for sub, param in pushes:
            self._send_push(sub, param)

    def _evaluate(self, sub: _Subscription, now: float) -> str | None:
        """The push ``param`` a check produces, or None; ends the subscription when final."""
        steps = self._visible(sub.carrier, sub.number, now)
        if not steps:
            if now - sub.subscribed_sim >= self.not_found_abort_after_s:
                return self._end(sub, "abort", "3天查询无记录")
            return None
        if len(steps) > sub.pushed_events:
            sub.pushed_events = len(steps)
            if steps[-1].base in _FINAL_STATES:
                return self._end(sub, "shutdown", "")
            return self._push_param(sub, "polling", "")
        if now - self._waybills[sub.number].step_time(steps[-1]) >= self.stuck_abort_after_s:
            return self._end(sub, "abort", "60天无变化")
        return None

    def _end(self, sub: _Subscription, status: str, message: str) -> str:
        sub.status = status
        return self._push_param(sub, status, message)

    def _push_param(self, sub: _Subscription, status: str, message: str) -> str:
        last = self._snapshot(sub.carrier, sub.number, sub.resultv2, "desc") or {
            "message": "",
            "nu": sub.number,
            "ischeck": "0",
            "condition": "",
            "com": sub.carrier,
            "status": "200",
            "state": "",
            "data": [],
        }
        payload = {
            "status": status,
            "message": message,
            "autoCheck": "0",
            "comOld": "",
            "comNew": "",
        }
        return _compact({**payload, "lastResult": last})

    def _send_push(self, sub: _Subscription, param: str) -> None:
        form = {"param": param}
        if sub.salt:
            form["sign"] = _md5_upper(param + sub.salt)
        body = urlencode(form).encode("ascii")
        headers = {"Content-Type": "application/x-www-form-urlencoded;charset=UTF-8"}
        with self._state:
            opts = PushOptions(**asdict(self.push_options))
            stale, sub.last_body = sub.last_body, body
            copies = 2 if opts.duplicate else 1
            rec = self._push_record(sub.number)
            rec["sent"] += copies + (1 if opts.out_of_order and stale else 0)
            rec["log"].append({"status": json.loads(param)["status"], "copies": copies})
        self._notifier.send(sub.callbackurl, body, headers, delay=opts.delay_s, copies=copies)
        if opts.out_of_order and stale is not None:
            self._notifier.send(
                sub.callbackurl, stale, headers, delay=opts.delay_s + opts.stale_delay_s
            )

    def _push_record(self, num: str) -> dict[str, Any]:
        return self._pushes.setdefault(num, {"sent": 0, "answered": 0, "acked": 0, "log": []})

    def _is_ack(self, resp: requests.Response) -> bool:
        """Kuaidi100 wants the JSON ack ``result: true``; any other answer means "retry"."""
        try:
            ok = resp.json().get("result") is True
        except (ValueError, AttributeError):
            ok = False
        num = _pushed_number(resp.request.body)
        with self._state:
            rec = self._push_record(num)
            rec["answered"] += 1
            rec["acked"] += 1 if ok else 0
        return ok

    # -- control plane over HTTP ---------------------------------------------------------------
    def _ctl_register(self, req: Request) -> Response:
        b = req.json() or {}
        try:
            self.register_waybill(
                b["carrier"], b["waybill"], b.get("script", "normal"), b.get("phone")
            )
        except (KeyError, ValueError) as exc:
            return Response.json({"error": str(exc)}, 400)
        return Response.json({"ok": True})

    def _ctl_advance(self, req: Request) -> Response:
        self.advance(float((req.json() or {}).get("seconds", 0)))
        return Response.json({"sim_now": self.sim_now()})

    def _ctl_push_now(self, req: Request) -> Response:
        b = req.json() or {}
        return Response.json({"pushed": self.push_now(str(b.get("waybill")), b.get("status"))})

    def _ctl_push_options(self, req: Request) -> Response:
        try:
            self.set_push_options(**(req.json() or {}))
        except ValueError as exc:
            return Response.json({"error": str(exc)}, 400)
        return Response.json(asdict(self.push_options))


def _phone_ok(phone: Any, wb: _Waybill | None) -> bool:
    """A phone is required; when the waybill has one on file, the full number or its last four
    digits must match."""
    if not phone:
        return False
    if wb is None or not wb.phone:
        return True
    return str(phone) in (wb.phone, wb.phone[-4:])


def _subscription_error(p: dict[str, Any]) -> str | None:
    params = p.get("parameters") or {}
    number = str(p.get("number") or "")
    if str(p.get("company") or "") not in CARRIERS:
        return "不支持的快递公司"
    if not 6 <= len(number) <= 32:
        return "单号为空或过长"
    if urlsplit(str(params.get("callbackurl") or "")).scheme not in ("http", "https"):
        return "回调地址不合法"
    return None


def _event_json(wb: _Waybill, step: Step, resultv2: str) -> dict[str, str]:
    when = datetime.fromtimestamp(wb.step_time(step), _CHINA_TZ).strftime("%Y-%m-%d %H:%M:%S")
    event = {"time": when, "ftime": when, "context": step.context}
    if resultv2:  # resultv2 >= 1: area parsing and status names
        event.update(location=step.area, areaName=step.area, status=_NAMES.get(step.base, "在途"))
    if resultv2 in ("4", "8"):
        event["statusCode"] = step.code
    return event


def _pushed_number(body: Any) -> str:
    """The waybill number inside a push body (for the ledger)."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else str(body)
        param = json.loads(parse_qs(text)["param"][0])
        return str(param["lastResult"]["nu"])
    except (KeyError, ValueError, IndexError, TypeError):
        return "?"


def main(argv: list[str] | None = None) -> None:
    """``python -m simulators.kuaidi100`` — run the simulator (and optionally the warehouse)."""
    env = os.environ.get
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--port", type=int, default=int(env("KUAIDI100_SIM_PORT", "8710")))
    ap.add_argument("--customer", default=env("KUAIDI100_CUSTOMER", "sim-customer"))
    ap.add_argument("--key", default=env("KUAIDI100_KEY", "sim-key"))
    ap.add_argument("--time-scale", type=float, default=3600.0)
    ap.add_argument("--min-query-interval", type=float, default=1800.0)
    ap.add_argument("--quota", type=int, default=None)
    ap.add_argument("--warehouse-port", type=int, default=int(env("WAREHOUSE_SIM_PORT", "0")))
    ap.add_argument("--warehouse-api-key", default=env("WAREHOUSE_API_KEY", "sim-warehouse-key"))
    args = ap.parse_args(argv)
    sim = Kuaidi100Simulator(
        args.customer,
        args.key,
        time_scale=args.time_scale,
        min_query_interval_s=args.min_query_interval,
        quota=args.quota,
        port=args.port,
    )
    if args.warehouse_port:
        from simulators.warehouse import WarehouseSimulator

        warehouse = WarehouseSimulator(
            args.warehouse_api_key, tracker=sim, port=args.warehouse_port
        )
        warehouse.start()
        print(f"warehouse simulator listening on {warehouse.url}", flush=True)
    serve_forever(sim)


if __name__ == "__main__":
    main()
