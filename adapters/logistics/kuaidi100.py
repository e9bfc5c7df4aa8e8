"""Kuaidi100 (快递100) tracking adapter (the warehouse booking client is in :mod:`.warehouse`).

Kuaidi100 (provider-protocols.md §4)
------------------------------------
* **Query** ``POST query_url`` form ``customer``, ``param`` (JSON), ``sign`` with
  ``sign = upper(MD5(param + key + customer))`` over the exact ``param`` string sent.
  Success → :class:`TrackingResult` (events oldest first, ``raw_state`` kept). Failure bodies
  ``{"result": false, "returnCode": …}``: 500 → PENDING result without events (no trace yet);
  400 / 408 (phone needed) / 503 (bad signature) / 601 (quota) and unknown codes →
  :class:`ProviderRejected`; 501 / 502 (server error / busy, also what a throttled number gets
  from our simulator) → :class:`ProviderUnavailable`. Network errors, timeouts, HTTP 5xx and 429 →
  :class:`ProviderUnavailable`.
* **Subscribe** ``POST subscribe_url`` form ``schema=json``, ``param`` (JSON with the ``key``
  inside; no separate sign). 200 → ``True``; 501 (already polling) → ``False``; 500 / 502 →
  :class:`ProviderUnavailable`; 600 / 601 / 700 / 701 and unknown codes → :class:`ProviderRejected`.
* **Push** form ``param`` + ``sign = upper(MD5(param + salt))``, verified in constant time before
  anything is read (:class:`SignatureInvalid` otherwise). ``abort`` with "60天无变化" → EXPIRED;
  ``abort`` with "3天查询无记录" (never found) → EXCEPTION with a ``note`` saying why, so the
  order is flagged for a person instead of waiting silently.

State codes are normalized by the one table :data:`STATE_TABLE` (§5 of the protocol doc).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, NoReturn

import requests

from adapters.http import json_object, post_classified
from adapters.logistics.base import (
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
    PushUpdate,
    SignatureInvalid,
    TrackingEvent,
    TrackingResult,
)
from domain.tracking import ShipmentStatus

__all__ = [
    "STATE_TABLE",
    "Kuaidi100Config",
    "Kuaidi100Provider",
    "normalize_state",
]

_S = ShipmentStatus

#: Kuaidi100 ``state`` / ``statusCode`` → normalized status (basic and ``resultv2=4`` codes).
#: 103 (picked up) is not in the §5 table; it is a sub-code of 1 (collected), so IN_TRANSIT.
STATE_TABLE: Mapping[str, ShipmentStatus] = {
    **dict.fromkeys(
        ("0", "1", "7", "10", "11", "12", "103", "1001", "1002", "1003"), _S.IN_TRANSIT
    ),
    **dict.fromkeys(("101", "102"), _S.INFO_RECEIVED),
    "5": _S.OUT_FOR_DELIVERY,
    "501": _S.AVAILABLE_FOR_PICKUP,
    **dict.fromkeys(("3", "301", "302", "303", "304"), _S.DELIVERED),
    **dict.fromkeys(("2", "4", "6", "13", "14", "401"), _S.EXCEPTION),
}

#: Codes for a parcel that will not reach the customer: 4 returned and signed for by the sender
#: (退签), 6 being returned (退回), 14 refused by the recipient (拒签), 401 cancelled. They are
#: EXCEPTION like 2 (疑难) and 13 (customs), but unlike those they do not resolve themselves.
RETURNED_STATES = frozenset({"4", "6", "14", "401"})

# With resultv2=1 (or none) an event carries a status *name* instead of a code.
_STATUS_NAMES: Mapping[str, str] = {
    "在途": "0",
    "揽收": "1",
    "疑难": "2",
    "签收": "3",
    "退签": "4",
    "派件": "5",
    "退回": "6",
    "转投": "7",
    "待清关": "10",
    "清关中": "11",
    "已清关": "12",
    "清关异常": "13",
    "拒签": "14",
}

_CHINA_TZ = timezone(timedelta(hours=8))  # Kuaidi100 times are Beijing time without an offset
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_EXPIRED_MARKER = "60天无变化"
_NOT_FOUND_MARKER = "3天查询无记录"
NOT_FOUND_NOTE = "no trace 3 days after subscribing (3天查询无记录): check carrier and waybill"

_QUERY_TRANSIENT = frozenset({"501", "502"})  # server error / busy (and throttled numbers)
_SUBSCRIBE_TRANSIENT = frozenset({"500", "502"})

_PUSH_ACK = {"result": True, "returnCode": "200", "message": "成功"}
_PUSH_NACK = {"result": False, "returnCode": "500", "message": "失败"}


def normalize_state(code: str) -> ShipmentStatus:
    """Map a Kuaidi100 state/status code (or status name) to :class:`ShipmentStatus`.

    Unknown three-digit codes fall back to their parent code (the first digit: 2xx are problem
    sub-codes, 3xx signed variants, …) so a new sub-code is not misread; anything else still
    unknown counts as IN_TRANSIT, the mildest status that says "the parcel has a trace".
    """
    code = _STATUS_NAMES.get(code.strip(), code.strip())
    if code in STATE_TABLE:
        return STATE_TABLE[code]
    if len(code) == 3 and code.isdigit() and code[0] in STATE_TABLE:
        return STATE_TABLE[code[0]]
    return _S.IN_TRANSIT


def _md5_upper(text: str) -> str:
    # MD5 is what the Kuaidi100 protocol mandates for both request and push signatures.
    return hashlib.md5(text.encode("utf-8")).hexdigest().upper()  # noqa: S324


def _compact_json(payload: Mapping[str, Any]) -> str:
    """The exact ``param`` string sent (and signed): compact, UTF-8, key order preserved."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


# -- HTTP plumbing shared by both clients ------------------------------------------------------


def _fail(provider: str, code: str, message: str, transient: frozenset[str]) -> NoReturn:
    """Raise the classified error for a Kuaidi100 ``returnCode`` failure."""
    error: type[ProviderError] = ProviderUnavailable if code in transient else ProviderRejected
    raise error(provider, message or "request failed", code=code)


# -- Kuaidi100 -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Kuaidi100Config:
    query_url: str  # e.g. https://poll.kuaidi100.com/poll/query.do
    subscribe_url: str  # e.g. https://poll.kuaidi100.com/poll
    customer: str
    key: str = field(repr=False)
    callback_salt: str = field(repr=False)
    resultv2: str = "4"  # advanced status codes + cities
    connect_timeout: float = 3.05
    read_timeout: float = 10


class Kuaidi100Provider:
    """:class:`~adapters.logistics.base.TrackingProvider` for Kuaidi100 (see module docstring)."""

    name = "kuaidi100"

    def __init__(self, config: Kuaidi100Config, session: requests.Session | None = None) -> None:
        self._config = config
        self._session = session or requests.Session()
        self._timeout = (config.connect_timeout, config.read_timeout)

    # -- query ---------------------------------------------------------------------------------
    def query(self, carrier: str, waybill: str, phone: str | None = None) -> TrackingResult:
        """Real-time query. PENDING without events when Kuaidi100 has no trace yet (500).

        Raises :class:`ProviderUnavailable` (retry later) or :class:`ProviderRejected`.
        """
        param: dict[str, str] = {"com": carrier, "num": waybill}
        if phone:
            param["phone"] = phone
        # Ask for newest-first explicitly: _tracking_result relies on that order for ties.
        param.update(resultv2=self._config.resultv2, show="0", order="desc")
        body = self._post_signed_query(_compact_json(param))
        if body.get("result") is False or "returnCode" in body:
            code = str(body.get("returnCode", ""))
            if code == "500":
                return TrackingResult(carrier, waybill, _S.PENDING, raw_state="", events=())
            _fail(self.name, code, str(body.get("message", "")), _QUERY_TRANSIENT)
        return _tracking_result(self.name, body, carrier, waybill)

    def _post_signed_query(self, param: str) -> dict[str, Any]:
        cfg = self._config
        form = {
            "customer": cfg.customer,
            "param": param,
            "sign": _md5_upper(param + cfg.key + cfg.customer),
        }
        resp = post_classified(self._session, self.name, cfg.query_url, self._timeout, data=form)
        return json_object(self.name, resp)

    # -- subscribe -----------------------------------------------------------------------------
    def subscribe(self, carrier: str, waybill: str, callback_url: str, phone: str | None) -> bool:
        """Subscribe to pushes. True if newly subscribed, False if already polling (501)."""
        cfg = self._config
        # The salt makes Kuaidi100 sign its pushes; without it parse_push could verify nothing.
        parameters = {
            "callbackurl": callback_url,
            "salt": cfg.callback_salt,
            "resultv2": cfg.resultv2,
        }
        if phone:
            parameters["phone"] = phone
        param = {"company": carrier, "number": waybill, "key": cfg.key, "parameters": parameters}
        form = {"schema": "json", "param": _compact_json(param)}
        resp = post_classified(
            self._session, self.name, cfg.subscribe_url, self._timeout, data=form
        )
        body = json_object(self.name, resp)
        code = str(body.get("returnCode", ""))
        if code == "200" and body.get("result") is True:
            return True
        if code == "501":
            return False
        _fail(self.name, code, str(body.get("message", "")), _SUBSCRIBE_TRANSIENT)

    # -- push ----------------------------------------------------------------------------------
    def parse_push(self, form: Mapping[str, str]) -> PushUpdate:
        """Verify ``sign`` over ``param`` with the callback salt, then parse the push.

        Raises :class:`SignatureInvalid` when either field is missing or the sign differs;
        nothing of ``param`` is read before that check.
        """
        param, sign = form.get("param"), form.get("sign")
        if not param or not sign:
            raise SignatureInvalid(self.name, "push without param or sign")
        expected = _md5_upper(param + self._config.callback_salt).encode("ascii")
        # Constant-time, so response timing leaks nothing about the expected sign.
        if not hmac.compare_digest(expected, sign.strip().upper().encode("utf-8")):
            raise SignatureInvalid(self.name, "push sign mismatch")
        return self._push_update(param)

    def _push_update(self, param: str) -> PushUpdate:
        try:
            payload = json.loads(param)
        except ValueError as exc:
            raise ProviderRejected(self.name, "signed push with malformed param") from exc
        if not isinstance(payload, dict):
            raise ProviderRejected(self.name, "signed push param is not an object")
        status, message = str(payload.get("status", "")), str(payload.get("message", ""))
        last = payload.get("lastResult")
        result = None
        if isinstance(last, dict):
            carrier, waybill = str(last.get("com", "")), str(last.get("nu", ""))
            result = _tracking_result(self.name, last, carrier, waybill)
            if status == "abort" and _EXPIRED_MARKER in message:
                result = replace(result, status=_S.EXPIRED, note=message)
            elif status == "abort" and _NOT_FOUND_MARKER in message:
                # Kuaidi100 gave up on a number it never found a trace for: most likely a wrong
                # carrier or waybill. Silence would leave the order waiting forever.
                result = replace(result, status=_S.EXCEPTION, note=NOT_FOUND_NOTE)
        return PushUpdate(push_status=status, message=message, result=result)

    def push_reply(self, ok: bool) -> tuple[int, bytes, str]:
        """The ack Kuaidi100 expects; anything but ``result: true`` makes it retry the push."""
        status, payload = (200, _PUSH_ACK) if ok else (500, _PUSH_NACK)
        return status, _compact_json(payload).encode("utf-8"), "application/json"


def _tracking_result(
    provider: str, body: Mapping[str, Any], carrier: str, waybill: str
) -> TrackingResult:
    """Parse a query-success body (or a push's ``lastResult``, same shape)."""
    data = body.get("data") or []
    if not isinstance(data, list):
        raise ProviderUnavailable(provider, "tracking data is not a list")
    # Provider order is newest first: reverse, then a stable sort keeps that order on equal times.
    events = sorted((_event(provider, item) for item in reversed(data)), key=lambda e: e.at)
    raw_state = str(body.get("state", ""))
    if not events:
        status = _S.PENDING
    elif raw_state:
        status = normalize_state(raw_state)
    else:
        status = events[-1].status
    signed = str(body.get("ischeck", "0")) == "1"
    code = raw_state or (events[-1].raw_code if events else "")
    returned = _STATUS_NAMES.get(code, code) in RETURNED_STATES
    return TrackingResult(
        carrier, waybill, status, raw_state, tuple(events), signed, returned=returned
    )


def _event(provider: str, item: Any) -> TrackingEvent:
    if not isinstance(item, dict):
        raise ProviderUnavailable(provider, "tracking event is not an object")
    raw_code = str(item.get("statusCode") or item.get("status") or "")
    location = item.get("location") or item.get("areaName") or ""
    return TrackingEvent(
        at=_parse_time(provider, str(item.get("time") or item.get("ftime") or "")),
        description=str(item.get("context", "")),
        location=str(location),
        status=normalize_state(raw_code) if raw_code else _S.IN_TRANSIT,
        raw_code=raw_code,
    )


def _parse_time(provider: str, text: str) -> datetime:
    try:
        return datetime.strptime(text.strip(), _TIME_FORMAT).replace(tzinfo=_CHINA_TZ)
    except ValueError as exc:
        raise ProviderUnavailable(provider, f"unparseable event time {text!r}") from exc
