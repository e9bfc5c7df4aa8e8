"""Balance transactions for the Stripe simulator: ``GET /v1/balance_transactions``.

Written from Stripe's documentation of the BalanceTransaction object and its list endpoint, like
the rest of :mod:`simulators.stripe` (nothing imported from ``adapters/``, ``services/`` or
``domain/``).

* The ledger is derived from the simulator's own objects at request time: each succeeded charge
  books a ``charge`` transaction (``fee`` = Stripe's standard card pricing, 2.9 % + 30 minor
  units, in ``fee_details`` as a ``stripe_fee``), each refund a ``refund`` transaction of
  ``-amount`` without fee (and a failed or canceled one a ``refund_failure`` of ``+amount``), and
  the dispute desk's chargeback withdrawals and reversals their ``adjustment`` transactions
  (kept on the disputes, :mod:`simulators.stripe_disputes`). Ids are stable (``txn_`` + a hash
  of the source), ``created`` is the source's, ``available_on`` two days later, ``status``
  ``available`` once that has passed, else ``pending``.
* The list: ``created[gte|gt|lt|lte]``, ``type``, ``source``, ``currency``, ``limit`` (1-100,
  default 10), ``starting_after``/``ending_before``, ``expand[]=data.source`` (the charge,
  refund or dispute object in place of its id); newest first; ``has_more``, ``url``.
* Control (``POST /_sim/settlement``, JSON ``{"action": …}``), for reconciliation tests:
  ``charge`` (``amount``, ``currency``: a charge of a PaymentIntent the merchant never created),
  ``shift`` (``source``: a ``pi_``/``ch_``/``re_`` id, ``by``: minor units added to its
  transaction's amount, net following), ``fee`` (``amount``, ``currency``: a ``stripe_fee``
  transaction), ``omit`` (``source``: its transaction is left out), ``corrupt`` (``mode``:
  ``truncate`` — list pages are cut in half, ``unknown_type`` — the first line's type becomes
  ``mystery``, ``bad_net`` — the first line's net is off by one; ``null`` ends it). Injected
  transactions are ``created`` now unless ``created`` is given. ``/_sim/reset`` clears it all.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable
from typing import Any

from simulators.harness import Request, Response

FEE_PERMILLE = 29
FEE_FIXED = 30
_DAY = 86400
_LIST_PARAMS = frozenset(
    {"created", "limit", "starting_after", "ending_before", "expand", "type", "source",
     "currency", "payout"}
)  # fmt: skip
_CORRUPT_MODES = frozenset({"truncate", "unknown_type", "bad_net"})

Objects = Callable[[], dict[str, dict[str, Any]]]


def stripe_fee(amount: int) -> int:
    """2.9 % + 30, rounded half up: Stripe's standard card pricing."""
    return (amount * FEE_PERMILLE + 500) // 1000 + FEE_FIXED


def _txn_id(source: str, kind: str = "") -> str:
    return "txn_" + hashlib.sha256(f"{kind}{source}".encode()).hexdigest()[:24]


def _error(status: int, message: str, param: str | None = None) -> Response:
    error: dict[str, Any] = {"type": "invalid_request_error", "message": message}
    if param:
        error["param"] = param
    return Response.json({"error": error}, status)


class BalanceBook:
    """The balance transactions of one simulator. ``charges``, ``refunds`` and ``disputes`` give
    the simulator's objects; every method runs under the simulator's ``lock``."""

    def __init__(self, lock: Any, charges: Objects, refunds: Objects, disputes: Objects) -> None:
        self._lock = lock
        self._charges, self._refunds, self._disputes = charges, refunds, disputes
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.extra: list[dict[str, Any]] = []
            self.extra_sources: dict[str, dict[str, Any]] = {}
            self.shifts: dict[str, int] = {}
            self.omitted: set[str] = set()
            self.corrupt: str | None = None

    # -- the ledger ---------------------------------------------------------------------------
    def transactions(self) -> list[dict[str, Any]]:
        """Every balance transaction, oldest first (ties in booking order)."""
        with self._lock:
            txns: list[dict[str, Any]] = []
            refunds = self._refunds()
            for charge in self._charges().values():
                if charge.get("status") == "succeeded":
                    txns.append(self._charge_txn(charge))
            for refund in refunds.values():
                txns.append(
                    _txn(refund["id"], "refund", -refund["amount"], 0, refund["currency"],
                         refund["created"], "refund", "REFUND FOR CHARGE")
                )  # fmt: skip
                if refund.get("status") in ("failed", "canceled"):
                    txns.append(
                        _txn(refund["id"], "refund_failure", refund["amount"], 0,
                             refund["currency"], refund["created"], "refund_failure",
                             "REFUND FAILURE", kind="failure:")
                    )  # fmt: skip
            for dispute in self._disputes().values():
                for booked in dispute.get("balance_transactions") or []:
                    txns.append(_with_defaults(copy.deepcopy(booked)))
            txns.extend(copy.deepcopy(self.extra))
            txns = [t for t in txns if t["source"] not in self.omitted]
            for t in txns:
                by = self.shifts.get(t["source"] or "", 0)
                if by:
                    t["amount"] += by
                    t["net"] += by
            txns.sort(key=lambda t: t["created"])  # stable: booking order within a second
            return txns

    def _charge_txn(self, charge: dict[str, Any]) -> dict[str, Any]:
        fee = stripe_fee(charge["amount"])
        return _txn(charge["id"], "charge", charge["amount"], fee, charge["currency"],
                    charge["created"], "charge", "Payment")  # fmt: skip

    def _source(self, source_id: str | None) -> Any:
        if source_id is None:
            return None
        for objects in (self._charges(), self._refunds(), self._disputes(), self.extra_sources):
            if source_id in objects:
                found = copy.deepcopy(objects[source_id])
                found.pop("refunds", None)
                found.pop("balance_transactions", None)
                return found
        return source_id

    # -- GET /v1/balance_transactions ---------------------------------------------------------
    def list(self, params: dict[str, Any]) -> Response:
        unknown = set(params) - _LIST_PARAMS
        if unknown:
            name = sorted(unknown)[0]
            return _error(400, f"Received unknown parameter: {name}", name)
        raw_limit = str(params.get("limit", "10"))
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 100:
            return _error(400, "limit must be between 1 and 100", "limit")
        limit = int(raw_limit)
        created = params.get("created")
        if created is not None and not isinstance(created, dict):
            created = {"eq": created}
        try:
            bounds = {k: int(v) for k, v in (created or {}).items()}
        except (TypeError, ValueError):
            return _error(400, "Invalid integer for created", "created")
        expand = "data.source" in (params.get("expand") or [])
        with self._lock:
            found = [
                t for t in reversed(self.transactions())
                if _in_window(t["created"], bounds)
                and params.get("type") in (None, t["type"])
                and params.get("source") in (None, t["source"])
                and params.get("currency") in (None, t["currency"])
            ]  # fmt: skip
            ids = [t["id"] for t in found]
            start, end = 0, len(found)
            if (after := params.get("starting_after")) is not None:
                if after not in ids:
                    return _error(404, f"No such balance transaction: '{after}'", "starting_after")
                start = ids.index(after) + 1
            if (before := params.get("ending_before")) is not None:
                if before not in ids:
                    return _error(404, f"No such balance transaction: '{before}'", "ending_before")
                end = ids.index(before)
                start = max(start, end - limit)
            page = found[start : min(end, start + limit)]
            if expand:
                for t in page:
                    t["source"] = self._source(t["source"])
            body = {
                "object": "list", "data": page, "has_more": start + limit < end,
                "url": "/v1/balance_transactions",
            }  # fmt: skip
            return self._corrupted(body)

    def _corrupted(self, body: dict[str, Any]) -> Response:
        if self.corrupt in ("unknown_type", "bad_net") and body["data"]:
            first = body["data"][0]
            if self.corrupt == "unknown_type":
                first["type"] = "mystery"
            else:
                first["net"] += 1
        response = Response.json(body)
        if self.corrupt == "truncate":
            response.body = response.body[: len(response.body) // 2]
        return response

    # -- POST /_sim/settlement ----------------------------------------------------------------
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
        created = int(body.get("created") or time.time())
        if action == "charge":
            return self._stray_charge(
                int(body["amount"]), str(body.get("currency", "usd")), created
            )
        if action == "fee":
            amount = int(body["amount"])
            txn = _txn(None, "stripe_fee", -amount, 0, str(body.get("currency", "usd")), created,
                       "fee", str(body.get("description", "Radar for Fraud Teams")),
                       kind=f"fee:{len(self.extra)}:")  # fmt: skip
            self.extra.append(txn)
            return txn
        if action in ("shift", "omit"):
            source = self._source_of(str(body["source"]))
            if action == "omit":
                self.omitted.add(source)
            else:
                self.shifts[source] = self.shifts.get(source, 0) + int(body.get("by", 1))
            return {"source": source}
        if action == "corrupt":
            mode = body.get("mode")
            if mode is not None and mode not in _CORRUPT_MODES:
                raise ValueError(f"mode must be one of {sorted(_CORRUPT_MODES)} or null")
            self.corrupt = mode
            return {"corrupt": mode}
        raise ValueError("action must be charge, fee, shift, omit or corrupt")

    def _stray_charge(self, amount: int, currency: str, created: int) -> dict[str, Any]:
        n = len(self.extra_sources)
        charge_id = "ch_stray" + hashlib.sha256(f"{n}{created}".encode()).hexdigest()[:16]
        self.extra_sources[charge_id] = {
            "id": charge_id, "object": "charge", "amount": amount, "amount_captured": amount,
            "amount_refunded": 0, "captured": True, "created": created, "currency": currency,
            "metadata": {}, "paid": True, "refunded": False, "status": "succeeded",
            "payment_intent": "pi_stray" + charge_id[8:],
        }  # fmt: skip
        txn = self._charge_txn(self.extra_sources[charge_id])
        self.extra.append(txn)
        return txn

    def _source_of(self, ref: str) -> str:
        """A ``pi_`` id names its latest charge; ``ch_``/``re_``/``dp_`` ids name themselves."""
        if ref.startswith("pi_"):
            for charge in self._charges().values():
                if charge.get("payment_intent") == ref:
                    return str(charge["id"])
            raise KeyError(f"no charge for {ref}")
        return ref


def _txn(
    source: str | None, type_: str, amount: int, fee: int, currency: str, created: int,
    category: str, description: str, *, kind: str = "",
) -> dict[str, Any]:  # fmt: skip
    fee_details = (
        [{"amount": fee, "application": None, "currency": currency,
          "description": "Stripe processing fees", "type": "stripe_fee"}] if fee else []
    )  # fmt: skip
    return _with_defaults(
        {
            "id": _txn_id(source or "", kind), "object": "balance_transaction",
            "amount": amount, "created": created, "currency": currency,
            "description": description, "fee": fee, "fee_details": fee_details,
            "net": amount - fee, "reporting_category": category, "source": source,
            "type": type_,
        }
    )  # fmt: skip


def _with_defaults(txn: dict[str, Any]) -> dict[str, Any]:
    available_on = txn["created"] + 2 * _DAY
    txn.setdefault("available_on", available_on)
    txn.setdefault("exchange_rate", None)
    txn.setdefault("fee_details", [])
    txn["status"] = "available" if available_on <= time.time() else "pending"
    return txn


def _in_window(created: int, bounds: dict[str, int]) -> bool:
    checks = {
        "gte": created >= bounds.get("gte", created),
        "gt": created > bounds["gt"] if "gt" in bounds else True,
        "lt": created < bounds["lt"] if "lt" in bounds else True,
        "lte": created <= bounds.get("lte", created),
        "eq": created == bounds.get("eq", created),
    }
    return all(checks.values())
