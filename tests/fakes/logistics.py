"""The fake warehouse and carrier (see :mod:`tests.fakes`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from adapters.logistics.base import (
    Booked,
    BookShipment,
    PushUpdate,
    TrackingEvent,
    TrackingResult,
)
from domain.errors import ProviderRejected, ProviderUnavailable
from domain.tracking import ShipmentStatus
from tests.fakes.base import Clock, Faulty, signature, verified


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
        #: warehouse -> refusal code for new bookings from it (``out_of_stock``, ...).
        self.refusing: dict[str, str] = {}

    def book(self, request: BookShipment) -> Booked:
        return self._call(lambda: self._book(request))

    def _book(self, request: BookShipment) -> Booked:
        if request.idempotency_key in self.bookings:
            stored, booked = self.bookings[request.idempotency_key]
            if stored != request:
                raise ProviderRejected(self.name, "key reused", code="idempotency_conflict")
            return booked
        refusal = self.refusing.get(request.warehouse or "")
        if refusal is not None:
            raise ProviderRejected(self.name, "warehouse cannot ship it", code=refusal)
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
        param = verified(self.name, self.salt, form.get("param"), form.get("sign"))
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
        return {"param": param, "sign": signature(self.salt, param)}

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
