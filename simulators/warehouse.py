"""Warehouse booking simulator: orderflow's own booking contract (no public standard exists).

``POST /v1/bookings`` with header ``X-Api-Key`` and JSON body ``{order_id, idempotency_key,
recipient, phone, address, warehouse?, items: [{sku, quantity}, …]}`` (``warehouse``, when
given, a non-empty string: the site the parcel leaves from):

* ``201 {"carrier": "yuantong", "waybill": "YT…"}`` for a new key; ``200`` with the same answer
  for a replay of the same key and body (nothing new is booked; a replay is answered even by a
  warehouse that refuses new bookings since)
* ``422 {"error": "out_of_stock" | "warehouse_closed"}`` for a new booking from a warehouse told
  to refuse them (:meth:`WarehouseSimulator.refuse`)
* ``401 {"error": "unauthorized"}`` for a wrong key, ``422 {"error": "invalid_request"}`` for a bad
  body, ``409 {"error": "idempotency_conflict"}`` for the same key with a different body
* harness faults: ``error_rate`` → ``503 {"error": "unavailable"}``, timeouts, resets;
  ``business_error`` → ``422 {"error": <that code>}``

With ``tracker`` (a :class:`~simulators.kuaidi100.Kuaidi100Simulator`) each new waybill is
registered there with ``tracker_script`` (or the script set for its warehouse with
:meth:`~WarehouseSimulator.script_for`), so the parcel can be tracked at once.

Test harness: :meth:`~WarehouseSimulator.hold_after` makes new bookings wait (the request is
held open) once that many exist, until :meth:`~WarehouseSimulator.release`; ``held`` in the
ledger counts the requests waiting — a test kills its worker in that gap between two bookings.
Imports nothing from ``adapters/``, ``services/`` or ``domain/``.
"""

from __future__ import annotations

import argparse
import hmac
import os
import random
import threading
from typing import Any

from simulators.harness import Request, Response, SimulatorServer, serve_forever
from simulators.kuaidi100 import Kuaidi100Simulator

__all__ = ["WarehouseSimulator", "main"]

_FIELDS = ("order_id", "idempotency_key", "recipient", "phone", "address")


def _error(status: int, code: str, message: str) -> Response:
    return Response.json({"error": code, "message": message}, status)


def _validate(body: Any) -> str | None:
    """The first problem with a booking body, as "field: reason", or None."""
    if not isinstance(body, dict):
        return "body: must be a JSON object"
    for name in _FIELDS:
        if not isinstance(body.get(name), str) or not body[name].strip():
            return f"{name}: required non-empty string"
    warehouse = body.get("warehouse")
    if warehouse is not None and (not isinstance(warehouse, str) or not warehouse.strip()):
        return "warehouse: non-empty string when given"
    items = body.get("items")
    if not isinstance(items, list) or not items:
        return "items: required non-empty list"
    for i, item in enumerate(items):
        ok = isinstance(item, dict) and isinstance(item.get("sku"), str)
        qty = item.get("quantity") if isinstance(item, dict) else None
        if not ok or not isinstance(qty, int) or isinstance(qty, bool) or qty <= 0:
            return f"items[{i}]: needs sku (string) and quantity (positive integer)"
    return None


class WarehouseSimulator(SimulatorServer):
    """Idempotent booking API; ``ledger()`` lists bookings by idempotency key."""

    def __init__(
        self,
        api_key: str,
        *,
        carrier: str = "yuantong",
        tracker: Kuaidi100Simulator | None = None,
        tracker_script: str = "normal",
        port: int = 0,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            "warehouse",
            port=port,
            error_response=lambda _r: _error(503, "unavailable", "simulated outage"),
        )
        self.api_key, self.carrier = api_key, carrier
        self.tracker, self.tracker_script = tracker, tracker_script
        self._rng = random.Random(seed)
        self._state = threading.Lock()
        self._released = threading.Event()
        self._clear()
        self.ledger_provider = self.ledger
        self.reset_hooks.append(self._clear)
        self.route("POST", "/v1/bookings", self._book)

    def _clear(self) -> None:
        with self._state:
            self._bookings: dict[str, dict[str, Any]] = {}
            self._calls = 0
            self._replays = 0
            self._conflicts = 0
            self._refusing: dict[str, str] = {}  # warehouse -> refusal code
            self._refusals: list[dict[str, Any]] = []
            self._scripts: dict[str, str] = {}  # warehouse -> tracker script
            self._hold_after: int | None = None
            self._held = 0
        self._released.set()

    def ledger(self) -> dict[str, Any]:
        """``bookings`` by idempotency key (each with its ``warehouse``, ``items`` and the
        ``replays`` it answered), the refused attempts, and call counts."""
        with self._state:
            return {
                "bookings": {k: dict(v) for k, v in self._bookings.items()},
                "refusals": list(self._refusals),
                "held": self._held,
                "calls": self._calls,
                "replays": self._replays,
                "conflicts": self._conflicts,
            }

    def _book(self, req: Request) -> Response:
        with self._state:
            self._calls += 1
        if not hmac.compare_digest(
            req.headers.get("x-api-key", "").encode(), self.api_key.encode()
        ):
            return _error(401, "unauthorized", "bad X-Api-Key")
        if self.faults.business_error:
            return _error(422, self.faults.business_error, "simulated business error")
        try:
            body = req.json()
        except ValueError:
            return _error(422, "invalid_request", "body: not JSON")
        problem = _validate(body)
        if problem:
            return _error(422, "invalid_request", problem)
        self._wait_if_held(body["idempotency_key"])
        return self._book_once(body)

    def hold_after(self, bookings: int) -> None:
        """New bookings wait (held open, up to 60 s) once ``bookings`` exist; replays don't."""
        with self._state:
            self._hold_after = bookings
            self._released.clear()

    def release(self) -> None:
        """Let held and later bookings through."""
        with self._state:
            self._hold_after = None
        self._released.set()

    def script_for(self, warehouse: str, script: str) -> None:
        """Parcels booked from ``warehouse`` are tracked with ``script`` (e.g. ``exception``)."""
        with self._state:
            self._scripts[warehouse] = script

    def _wait_if_held(self, key: str) -> None:
        with self._state:
            limit = self._hold_after
            if limit is None or key in self._bookings or len(self._bookings) < limit:
                return
            self._held += 1
        try:
            self._released.wait(60)
        finally:
            with self._state:
                self._held -= 1

    def refuse(self, warehouse: str, code: str | None = "out_of_stock") -> None:
        """From now on ``warehouse`` refuses new bookings with ``code`` (``out_of_stock`` or
        ``warehouse_closed``); ``code=None`` lets it book again. Replays are still answered."""
        with self._state:
            if code is None:
                self._refusing.pop(warehouse, None)
            else:
                self._refusing[warehouse] = code

    def _book_once(self, body: dict[str, Any]) -> Response:
        # One lock around check-and-insert: concurrent replays of a key get one waybill.
        with self._state:
            existing = self._bookings.get(body["idempotency_key"])
            if existing is not None:
                if existing["request"] != body:
                    self._conflicts += 1
                    return _error(409, "idempotency_conflict", "same key, different body")
                self._replays += 1
                existing["replays"] += 1
                return Response.json(_answer(existing), 200)
            refusal = self._refusing.get(body.get("warehouse", ""))
            if refusal is not None:
                self._refusals.append(
                    {
                        "idempotency_key": body["idempotency_key"],
                        "warehouse": body.get("warehouse"),
                        "error": refusal,
                    }
                )
                return _error(422, refusal, "this warehouse cannot ship the parcel")
            waybill = f"YT{self._rng.randrange(10**12, 10**13)}"
            booking = {
                "carrier": self.carrier, "waybill": waybill, "request": body,
                "warehouse": body.get("warehouse"),
                "items": [(i["sku"], i["quantity"]) for i in body["items"]], "replays": 0,
            }  # fmt: skip
            self._bookings[body["idempotency_key"]] = booking
        if self.tracker is not None:
            script = self._scripts.get(body.get("warehouse", ""), self.tracker_script)
            self.tracker.register_waybill(self.carrier, waybill, script, body["phone"])
        return Response.json(_answer(booking), 201)


def _answer(booking: dict[str, Any]) -> dict[str, str]:
    return {"carrier": booking["carrier"], "waybill": booking["waybill"]}


def main(argv: list[str] | None = None) -> None:
    """``python -m simulators.warehouse`` — run the booking simulator alone (no tracker)."""
    ap = argparse.ArgumentParser(description="orderflow warehouse booking simulator")
    ap.add_argument("--port", type=int, default=int(os.environ.get("WAREHOUSE_SIM_PORT", "8711")))
    ap.add_argument("--api-key", default=os.environ.get("WAREHOUSE_API_KEY", "sim-warehouse-key"))
    args = ap.parse_args(argv)
    serve_forever(WarehouseSimulator(args.api_key, port=args.port))


if __name__ == "__main__":
    main()
