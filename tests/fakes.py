"""In-memory fakes of the adapter Protocols, for unit tests (DESIGN.md §6).

* :class:`FakePaymentProvider` — :class:`adapters.payments.base.PaymentProvider`
* :class:`FakeBookingService` — :class:`adapters.logistics.base.BookingService`
* :class:`FakeTrackingProvider` — :class:`adapters.logistics.base.TrackingProvider`
* :class:`FakeGate` — :class:`services.provider_calls.ProviderGate` (a circuit that can be opened)
* :class:`FakeSender` — :class:`adapters.callbacks.CallbackSender` (scripted answers)

They keep the contract the real adapters keep against the simulators (tests/unit/test_fakes.py
checks it): idempotent by the same keys, statuses only move forward, notifications and pushes
verified before anything is read, and the same error tree (``ProviderUnavailable`` retryable,
``ProviderRejected`` with a ``code``, ``SignatureInvalid``). Where the real providers disagree
the fake picks one documented behaviour (noted on the method). Every fake can be told to fail its
next calls (:meth:`Faulty.fail_next`, :meth:`Faulty.reject_next`); the ledgers (``trades``,
``refunds``, ``bookings``, ``queries`` …) are public so tests assert outcomes, not calls.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from adapters.callbacks import PostResult
from adapters.logistics.base import (
    Booked,
    BookShipment,
    PushUpdate,
    TrackingEvent,
    TrackingResult,
)
from adapters.payments.base import (
    ClosePayment,
    CloseResult,
    CreatePayment,
    Notification,
    NotificationKind,
    NotificationReply,
    PaymentCreated,
    PaymentRef,
    PaymentState,
    RefundRequest,
    RefundResult,
    RefundState,
    TradeStatus,
)
from domain.errors import ProviderError, ProviderRejected, ProviderUnavailable, SignatureInvalid
from domain.money import Money
from domain.tracking import ShipmentStatus

R = TypeVar("R")
Clock = Callable[[], datetime]


class ManualClock:
    """A clock that moves only when told: ``clock()`` is now (aware, UTC)."""

    def __init__(self, start: datetime = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class FakeGate:
    """Calls straight through and keeps each call's ``(provider, operation, order_id)`` in
    ``calls``; while ``open`` is set it raises ``CircuitOpen`` without calling, as the real
    gate does for an open circuit."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.open: set[str] = set()

    def call(
        self, provider: str, operation: str, order_id: str, fn: Callable[[], R], *,
        request: Any = None,
    ) -> R:  # fmt: skip
        from services.provider_calls import CircuitOpen

        if provider in self.open:
            raise CircuitOpen(provider, "circuit open (fake)")
        self.calls.append((provider, operation, order_id))
        return fn()


class FakeSender:
    """A callback receiver that answers from a script: each POST takes the next of
    ``answers`` (a :class:`PostResult`, default 204) and lands in ``sent``; ``clock`` and
    ``takes_s`` let a test make each POST take time on a :class:`ManualClock`."""

    def __init__(self, clock: ManualClock | None = None, takes_s: float = 0.0) -> None:
        self.answers: deque[PostResult] = deque()
        self.sent: list[tuple[str, bytes, dict[str, str]]] = []
        self.clock, self.takes_s = clock, takes_s

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> PostResult:
        self.sent.append((url, body, dict(headers)))
        if self.clock is not None:
            self.clock.advance(self.takes_s)
        return self.answers.popleft() if self.answers else PostResult(True, 204)


class Faulty:
    """Scripted faults: each provider call consumes the next one queued, in order.

    ``fail_next(n)``: the next ``n`` calls raise :class:`ProviderUnavailable` and change nothing;
    with ``after=True`` the call does its work first and then raises (the answer was lost).
    ``reject_next(code)``: the next call raises :class:`ProviderRejected` with ``code``.
    """

    name: str

    def __init__(self) -> None:
        self._faults: deque[tuple[ProviderError, bool]] = deque()

    def fail_next(self, n: int = 1, *, code: str | None = None, after: bool = False) -> None:
        for _ in range(n):
            self._faults.append((ProviderUnavailable(self.name, "injected", code=code), after))

    def reject_next(self, code: str, n: int = 1) -> None:
        for _ in range(n):
            self._faults.append((ProviderRejected(self.name, "injected", code=code), False))

    def _call(self, work: Callable[[], R]) -> R:
        fault, after = self._faults.popleft() if self._faults else (None, False)
        if fault is not None and not after:
            raise fault
        result = work()
        if fault is not None:
            raise fault
        return result


def _sign(secret: str, text: str) -> str:
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def _verified(provider: str, secret: str, text: str | None, sign: str | None) -> str:
    """``text`` if ``sign`` is its HMAC under ``secret`` (constant time); else SignatureInvalid."""
    if not text or not sign or not hmac.compare_digest(_sign(secret, text), sign):
        raise SignatureInvalid(provider, "bad or missing signature")
    return text


# -- payments -------------------------------------------------------------------------------


@dataclass
class FakeTrade:
    request: CreatePayment
    provider_ref: str
    state: PaymentState = PaymentState.PENDING
    paid: Money | None = None  # what the buyer paid (may differ from the request, on purpose)
    paid_at: datetime | None = None
    refunded: int = 0  # minor units committed to refunds that did not fail


class FakePaymentProvider(Faulty):
    """A payment provider keyed by ``out_trade_no`` (like Alipay and WeChat Pay).

    * ``create``: the same request again returns the same :class:`PaymentCreated`; another
      amount for the same ``out_trade_no`` → ``CONTEXT_INCONSISTENT``; an idempotency key reused
      for another trade → ``idempotency_error``; a trade already paid or closed →
      ``ORDERPAID`` / ``ORDER_CLOSED`` (both in ``SETTLED_ON_CREATE``).
    * ``query``: ``NOT_FOUND`` for an unknown trade, else PENDING → PAID → REFUNDED, or CLOSED.
    * ``close``: unknown trade → closed, ``NOT_FOUND``; paid/refunded → ``closed=False``.
    * ``refund``: idempotent by ``refund_no`` (another amount → ``INVALID_REQUEST``); only a paid
      trade (``TRADE_NOT_PAID``), at most what remains (``NOTENOUGH``). Succeeds at once, or
      stays PENDING until :meth:`settle_refund` when ``refunds_start_pending``.
    * Notifications (queued in ``outbox`` on pay and on refund success) are JSON objects signed
      with ``secret`` in their ``sign`` field; headers are ignored.
    """

    name = "fake"

    def __init__(self, *, secret: str = "fake-secret", refunds_start_pending: bool = False) -> None:
        super().__init__()
        self.secret = secret
        self.refunds_start_pending = refunds_start_pending
        self.trades: dict[str, FakeTrade] = {}
        self.refunds: dict[str, tuple[str, RefundResult]] = {}  # refund_no -> (trade, result)
        self.outbox: list[bytes] = []
        self._keys: dict[str, str] = {}  # idempotency key -> out_trade_no

    # -- the Protocol ----------------------------------------------------------------------
    def create(self, request: CreatePayment) -> PaymentCreated:
        return self._call(lambda: self._create(request))

    def query(self, ref: PaymentRef) -> TradeStatus:
        return self._call(lambda: self._status(ref.out_trade_no))

    def close(self, request: ClosePayment) -> CloseResult:
        return self._call(lambda: self._close(request.ref.out_trade_no))

    def refund(self, request: RefundRequest) -> RefundResult:
        return self._call(lambda: self._refund(request))

    def query_refund(self, ref: PaymentRef, refund_no: str) -> RefundResult:
        return self._call(lambda: self._stored_refund(refund_no))

    def parse_notification(self, headers: Mapping[str, str], body: bytes) -> Notification:
        """Verify ``sign`` over the other fields, then parse; SignatureInvalid otherwise."""
        try:
            fields = json.loads(body)
        except ValueError as exc:
            raise SignatureInvalid(self.name, "unreadable notification") from exc
        if not isinstance(fields, dict):
            raise SignatureInvalid(self.name, "notification is not an object")
        sign = fields.pop("sign", None)
        _verified(
            self.name, self.secret, _canonical(fields), sign if isinstance(sign, str) else None
        )
        return _notification(fields)

    def notification_reply(self, ok: bool) -> NotificationReply:
        return (
            NotificationReply(200, b"success", "text/plain")
            if ok
            else NotificationReply(400, b"fail", "text/plain")
        )

    # -- test controls ---------------------------------------------------------------------
    def pay(self, out_trade_no: str, amount: Money | None = None) -> None:
        """The buyer pays (``amount`` defaults to the trade's). ValueError unless PENDING."""
        trade = self.trades.get(out_trade_no)
        if trade is None or trade.state is not PaymentState.PENDING:
            raise ValueError(f"{out_trade_no} cannot be paid")
        trade.state, trade.paid = PaymentState.PAID, amount or trade.request.amount
        trade.paid_at = datetime.now(UTC)
        self._notify("payment", trade)

    def settle_refund(self, refund_no: str, *, succeeded: bool = True) -> None:
        """Finish a PENDING refund; a failed one gives its amount back to the trade."""
        out_trade_no, result = self.refunds[refund_no]
        if result.state is not RefundState.PENDING:
            raise ValueError(f"refund {refund_no} is {result.state}")
        trade = self.trades[out_trade_no]
        state = RefundState.SUCCEEDED if succeeded else RefundState.FAILED
        if not succeeded:
            trade.refunded -= result.amount.amount if result.amount else 0
        self._settled(trade, refund_no, replace(result, state=state, raw_status=state.value))

    def sign_notification(self, fields: Mapping[str, str]) -> bytes:
        """A notification body as this provider sends it (tests forge with another secret)."""
        return json.dumps({**fields, "sign": _sign(self.secret, _canonical(fields))}).encode()

    # -- behaviour ---------------------------------------------------------------------------
    def _create(self, request: CreatePayment) -> PaymentCreated:
        bound = self._keys.get(request.idempotency_key, request.out_trade_no)
        if bound != request.out_trade_no:
            raise ProviderRejected(
                self.name, "key used for another trade", code="idempotency_error"
            )
        trade = self.trades.get(request.out_trade_no)
        if trade is None:
            trade = FakeTrade(request, provider_ref=f"fake-{len(self.trades) + 1:06d}")
            self.trades[request.out_trade_no] = trade
        elif trade.request.amount != request.amount:
            raise ProviderRejected(self.name, "amount differs", code="CONTEXT_INCONSISTENT")
        elif trade.state in (PaymentState.PAID, PaymentState.REFUNDED):
            raise ProviderRejected(self.name, "trade already paid", code="ORDERPAID")
        elif trade.state is PaymentState.CLOSED:
            raise ProviderRejected(self.name, "trade closed", code="ORDER_CLOSED")
        self._keys[request.idempotency_key] = request.out_trade_no
        return PaymentCreated(trade.provider_ref, {"qr_code": f"fake://pay/{trade.provider_ref}"})

    def _status(self, out_trade_no: str) -> TradeStatus:
        trade = self.trades.get(out_trade_no)
        if trade is None:
            return TradeStatus(PaymentState.NOT_FOUND, "NOT_FOUND")
        amount = trade.paid or trade.request.amount
        return TradeStatus(
            trade.state, trade.state.value, trade.provider_ref, amount, trade.paid_at
        )

    def _close(self, out_trade_no: str) -> CloseResult:
        trade = self.trades.get(out_trade_no)
        if trade is not None and trade.state is PaymentState.PENDING:
            trade.state = PaymentState.CLOSED
        status = self._status(out_trade_no)
        return CloseResult(status.state not in (PaymentState.PAID, PaymentState.REFUNDED), status)

    def _refund(self, request: RefundRequest) -> RefundResult:
        no, out_trade_no = request.refund_no, request.ref.out_trade_no
        if no in self.refunds:
            stored_trade, stored = self.refunds[no]
            if (stored_trade, stored.amount) != (out_trade_no, request.amount):
                raise ProviderRejected(self.name, "refund_no reused", code="INVALID_REQUEST")
            return stored
        trade = self.trades.get(out_trade_no)
        if trade is None or trade.state not in (PaymentState.PAID, PaymentState.REFUNDED):
            raise ProviderRejected(self.name, "trade not paid", code="TRADE_NOT_PAID")
        paid = trade.paid or trade.request.amount
        if request.amount.currency != paid.currency:
            raise ProviderRejected(self.name, "currency differs", code="PARAM_ERROR")
        if not 0 < request.amount.amount <= paid.amount - trade.refunded:
            raise ProviderRejected(self.name, "more than remains", code="NOTENOUGH")
        trade.refunded += request.amount.amount
        state = RefundState.PENDING if self.refunds_start_pending else RefundState.SUCCEEDED
        result = RefundResult(
            no, state, state.value, request.amount, f"fake-rf-{len(self.refunds) + 1}"
        )
        self.refunds[no] = (out_trade_no, result)
        if state is RefundState.SUCCEEDED:
            self._settled(trade, no, result)
        return result

    def _settled(self, trade: FakeTrade, refund_no: str, result: RefundResult) -> None:
        self.refunds[refund_no] = (trade.request.out_trade_no, result)
        if result.state is not RefundState.SUCCEEDED:
            return
        settled = sum(
            r.amount.amount
            for t, r in self.refunds.values()
            if t == trade.request.out_trade_no and r.state is RefundState.SUCCEEDED and r.amount
        )
        if settled >= (trade.paid or trade.request.amount).amount:
            trade.state = PaymentState.REFUNDED
        self._notify("refund", trade, result)

    def _stored_refund(self, refund_no: str) -> RefundResult:
        if refund_no not in self.refunds:
            raise ProviderRejected(self.name, "no such refund", code="RESOURCE_NOT_EXISTS")
        return self.refunds[refund_no][1]

    def _notify(self, kind: str, trade: FakeTrade, refund: RefundResult | None = None) -> None:
        status = self._status(trade.request.out_trade_no)
        fields = {
            "event_id": f"evt-{len(self.outbox) + 1}",
            "type": kind,
            "out_trade_no": trade.request.out_trade_no,
            "state": status.state.value,
            "provider_ref": trade.provider_ref,
            "amount": str(status.amount.amount if status.amount else ""),
            "currency": status.amount.currency if status.amount else "",
        }
        if refund is not None:
            fields |= {"refund_no": refund.refund_no, "refund_state": refund.state.value}
        self.outbox.append(self.sign_notification(fields))


def _canonical(fields: Mapping[str, Any]) -> str:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def _notification(fields: Mapping[str, Any]) -> Notification:
    state = PaymentState(fields["state"])
    amount = Money(int(fields["amount"]), fields["currency"]) if fields.get("amount") else None
    status = TradeStatus(state, state.value, fields.get("provider_ref"), amount)
    refund = None
    if fields.get("refund_no"):
        refund_state = RefundState(fields["refund_state"])
        refund = RefundResult(fields["refund_no"], refund_state, refund_state.value)
    kind = NotificationKind.REFUND if fields["type"] == "refund" else NotificationKind.PAYMENT
    return Notification(
        kind, fields["event_id"], fields["out_trade_no"], status, refund, raw_type=fields["type"]
    )


# -- logistics ------------------------------------------------------------------------------


class FakeBookingService(Faulty):
    """Books shipments: the same idempotency key and body return the same waybill; the same key
    with another body → ``idempotency_conflict``; no recipient → ``invalid_request``. A booked
    waybill is registered (without events) with ``tracker`` when one is given."""

    name = "fake-warehouse"

    def __init__(
        self, tracker: FakeTrackingProvider | None = None, carrier: str = "yuantong"
    ) -> None:
        super().__init__()
        self.tracker, self.carrier = tracker, carrier
        self.bookings: dict[str, tuple[BookShipment, Booked]] = {}

    def book(self, request: BookShipment) -> Booked:
        return self._call(lambda: self._book(request))

    def _book(self, request: BookShipment) -> Booked:
        if request.idempotency_key in self.bookings:
            stored, booked = self.bookings[request.idempotency_key]
            if stored != request:
                raise ProviderRejected(self.name, "key reused", code="idempotency_conflict")
            return booked
        if not request.recipient_name.strip():
            raise ProviderRejected(self.name, "recipient required", code="invalid_request")
        booked = Booked(self.carrier, f"YT{len(self.bookings) + 1:010d}")
        self.bookings[request.idempotency_key] = (request, booked)
        if self.tracker is not None:
            self.tracker.register(booked.carrier, booked.waybill, phone=request.phone)
        return booked


@dataclass
class _Waybill:
    carrier: str
    events: list[TrackingEvent]
    phone: str | None


class FakeTrackingProvider(Faulty):
    """Kuaidi100-like tracking over scripted traces.

    * A trace is the events registered for a waybill (:meth:`register`); a query sees the ones
      whose time has come on ``clock``, oldest first. Status and ``raw_state`` are the newest
      event's; ``signed`` once DELIVERED. An unknown waybill, a wrong carrier or no event yet:
      PENDING without events (Kuaidi100's "no result yet").
    * Throttle: a waybill queried again within ``min_query_interval_s`` of its last *accepted*
      query → ``ProviderUnavailable`` code ``502`` (the lock does not restart the interval).
    * A waybill registered with a phone needs its last four digits (``408`` otherwise).
    * Pushes are ``{"param": json, "sign": HMAC(salt, param)}`` (:meth:`push_form`).
    """

    name = "fake-tracking"

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        min_query_interval_s: float = 1800.0,
        salt: str = "salt",
    ) -> None:
        super().__init__()
        self.clock: Clock = clock or (lambda: datetime.now(UTC))
        self.min_query_interval_s, self.salt = min_query_interval_s, salt
        self.waybills: dict[str, _Waybill] = {}
        self.queries: dict[str, int] = {}  # waybill -> queries received (throttled ones too)
        self.throttle_violations = 0
        self.subscriptions: dict[str, str] = {}  # waybill -> callback url
        self._last_query: dict[str, datetime] = {}

    def register(
        self,
        carrier: str,
        waybill: str,
        events: Sequence[TrackingEvent] = (),
        phone: str | None = None,
    ) -> None:
        self.waybills[waybill] = _Waybill(carrier, list(events), phone)

    def add_events(self, waybill: str, *events: TrackingEvent) -> None:
        self.waybills[waybill].events.extend(events)

    # -- the Protocol ----------------------------------------------------------------------
    def query(self, carrier: str, waybill: str, phone: str | None = None) -> TrackingResult:
        return self._call(lambda: self._query(carrier, waybill, phone))

    def subscribe(self, carrier: str, waybill: str, callback_url: str, phone: str | None) -> bool:
        """True if newly subscribed, False for a duplicate (Kuaidi100 501)."""
        return self._call(lambda: self._subscribe(waybill, callback_url))

    def parse_push(self, form: Mapping[str, str]) -> PushUpdate:
        """Verify ``sign`` over ``param``, then parse; SignatureInvalid when either is missing."""
        param = _verified(self.name, self.salt, form.get("param"), form.get("sign"))
        try:
            payload = json.loads(param)
            result = payload.get("result")
            parsed = _result_from(result) if isinstance(result, dict) else None
            return PushUpdate(str(payload["status"]), str(payload["message"]), parsed)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProviderRejected(self.name, "signed push with malformed param") from exc

    def push_reply(self, ok: bool) -> tuple[int, bytes, str]:
        body = json.dumps({"result": ok, "returnCode": "200" if ok else "500"}).encode()
        return (200 if ok else 500), body, "application/json"

    # -- test controls ---------------------------------------------------------------------
    def result(self, carrier: str, waybill: str) -> TrackingResult:
        """What a query would answer now (no throttle, no fault)."""
        wb = self.waybills.get(waybill)
        now = self.clock()
        seen = [] if wb is None or wb.carrier != carrier else [e for e in wb.events if e.at <= now]
        seen.sort(key=lambda e: e.at)
        if not seen:
            return TrackingResult(carrier, waybill, ShipmentStatus.PENDING, "", ())
        last = seen[-1]
        signed = last.status is ShipmentStatus.DELIVERED
        return TrackingResult(carrier, waybill, last.status, last.raw_code, tuple(seen), signed)

    def push_form(
        self,
        carrier: str,
        waybill: str,
        push_status: str = "polling",
        message: str = "",
        status: ShipmentStatus | None = None,
    ) -> dict[str, str]:
        """A signed push of the current trace; ``status`` overrides (e.g. EXPIRED on abort)."""
        result = self.result(carrier, waybill)
        if status is not None:
            result = replace(result, status=status, note=message)
        param = json.dumps(
            {"status": push_status, "message": message, "result": _result_to(result)}
        )
        return {"param": param, "sign": _sign(self.salt, param)}

    # -- behaviour ---------------------------------------------------------------------------
    def _subscribe(self, waybill: str, callback_url: str) -> bool:
        fresh = waybill not in self.subscriptions
        self.subscriptions.setdefault(waybill, callback_url)
        return fresh

    def _query(self, carrier: str, waybill: str, phone: str | None) -> TrackingResult:
        now = self.clock()
        self.queries[waybill] = self.queries.get(waybill, 0) + 1
        last = self._last_query.get(waybill)
        if last is not None and (now - last).total_seconds() < self.min_query_interval_s:
            self.throttle_violations += 1
            raise ProviderUnavailable(self.name, "number locked: queried too often", code="502")
        self._last_query[waybill] = now
        wb = self.waybills.get(waybill)
        if wb is not None and wb.phone and (not phone or not wb.phone.endswith(phone[-4:])):
            raise ProviderRejected(self.name, "phone check failed", code="408")
        return self.result(carrier, waybill)


def _result_to(result: TrackingResult) -> dict[str, Any]:
    events = [
        {"at": e.at.isoformat(), "description": e.description, "location": e.location,
         "status": e.status.value, "raw_code": e.raw_code}
        for e in result.events
    ]  # fmt: skip
    return {"carrier": result.carrier, "waybill": result.waybill, "status": result.status.value,
            "raw_state": result.raw_state, "events": events, "signed": result.signed,
            "note": result.note}  # fmt: skip


def _result_from(data: Mapping[str, Any]) -> TrackingResult:
    events = tuple(
        TrackingEvent(datetime.fromisoformat(e["at"]), e["description"], e["location"],
                      ShipmentStatus(e["status"]), e["raw_code"])
        for e in data["events"]
    )  # fmt: skip
    return TrackingResult(data["carrier"], data["waybill"], ShipmentStatus(data["status"]),
                          data["raw_state"], events, data["signed"], data["note"])  # fmt: skip
