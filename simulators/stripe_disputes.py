"""Disputes for the Stripe simulator: a buyer disputes a paid charge, the dispute moves, closes.

Written from Stripe's documentation of the Dispute object and its events, like the rest of
:mod:`simulators.stripe` (nothing imported from ``adapters/``, ``services/`` or ``domain/``).

* A Dispute object as Stripe sends it today: ``id`` (``dp_…``), ``object: "dispute"``, ``amount``,
  ``currency``, ``charge``, ``payment_intent``, ``reason``, ``status``, ``evidence`` (all fields
  null until evidence is staged), ``evidence_details{due_by, enhanced_eligibility, has_evidence,
  past_due, submission_count}``, ``balance_transactions``, ``created``, ``livemode``,
  ``is_charge_refundable``, ``metadata``, ``payment_method_details``,
  ``enhanced_eligibility_types``.
* :meth:`DisputeDesk.open`: ``charge.dispute.created``; a chargeback (``needs_response``) also
  takes the money at once: a ``-amount`` balance transaction (fee 1500) and
  ``charge.dispute.funds_withdrawn``. An inquiry (``warning_needs_response``) takes nothing.
  The charge gets ``disputed: true``.
* :meth:`DisputeDesk.update`: ``charge.dispute.updated`` with ``data.previous_attributes``
  (``needs_response`` → ``under_review`` stages evidence and counts one submission).
* :meth:`DisputeDesk.close`: ``won``/``lost`` (``warning_closed`` for an inquiry) and
  ``charge.dispute.closed``; a won chargeback gives the money back: a ``+amount`` balance
  transaction and ``charge.dispute.funds_reinstated``.
* HTTP: ``POST /_sim/dispute`` with JSON ``{"action": "open", "payment_intent"|"out_trade_no":
  …, "reason"?, "status"?, "due_in_s"?}``, ``{"action": "update", "id": "dp_…", "status"?}`` or
  ``{"action": "close", "id": "dp_…", "outcome": "won"|"lost"}``; answers the dispute (404 for an
  unknown one, 409 for a move Stripe would not make).
"""

from __future__ import annotations

import copy
import secrets
import string
import time
from collections.abc import Callable
from typing import Any

_ALPHABET = string.ascii_letters + string.digits
_REASONS = frozenset(
    {
        "bank_cannot_process", "check_returned", "credit_not_processed", "customer_initiated",
        "debit_not_authorized", "duplicate", "fraudulent", "general", "incorrect_account_details",
        "insufficient_funds", "product_not_received", "product_unacceptable",
        "subscription_canceled", "unrecognized",
    }
)  # fmt: skip
_OPENING = frozenset({"needs_response", "warning_needs_response"})
_MOVES = {
    "needs_response": {"under_review"},
    "warning_needs_response": {"warning_under_review", "needs_response"},
    "warning_under_review": {"needs_response"},
    "under_review": set(),
}
_EVIDENCE_FIELDS = (
    "access_activity_log", "billing_address", "customer_communication", "customer_email_address",
    "customer_name", "product_description", "receipt", "shipping_address",
    "shipping_documentation", "shipping_tracking_number", "uncategorized_text",
)  # fmt: skip
DISPUTE_FEE = 1500

Emit = Callable[..., None]


def _new_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(24))


class DisputeDesk:
    """The disputes of one simulator; ``emit(type, obj, previous=None)`` sends a signed event,
    ``find_pi(ref)`` finds a PaymentIntent, ``charges`` are the simulator's charges; every
    method runs under the simulator's ``lock``."""

    def __init__(
        self,
        lock: Any,
        find_pi: Callable[[str], dict[str, Any]],
        charges: Callable[[], dict[str, dict[str, Any]]],
        emit: Emit,
    ) -> None:
        self._lock, self._find_pi, self._charges, self._emit = lock, find_pi, charges, emit
        self.disputes: dict[str, dict[str, Any]] = {}

    def reset(self) -> None:
        with self._lock:
            self.disputes.clear()

    def act(self, ref: str, body: dict[str, Any]) -> dict[str, Any]:
        """The ``/_sim/dispute`` control: ``body["action"]`` on ``ref`` (a PI for ``open``, a
        ``dp_`` id otherwise). Raises ``KeyError`` (unknown) or ``ValueError`` (bad move)."""
        action = body.get("action", "open")
        if action == "open":
            return self.open(
                ref, reason=body.get("reason", "fraudulent"),
                status=body.get("status", "needs_response"),
                due_in_s=int(body.get("due_in_s", 7 * 86400)),
            )  # fmt: skip
        if action == "update":
            return self.update(ref, body.get("status", "under_review"))
        if action == "close":
            return self.close(ref, body.get("outcome", ""))
        raise ValueError(f"unknown action {action!r}")

    def open(self, ref: str, *, reason: str, status: str, due_in_s: int) -> dict[str, Any]:
        """The buyer disputes the charge of PaymentIntent ``ref`` (must have succeeded)."""
        if reason not in _REASONS or status not in _OPENING:
            raise ValueError(f"cannot open a dispute with reason {reason!r}, status {status!r}")
        with self._lock:
            pi = self._find_pi(ref)
            charge = self._charges().get(pi.get("latest_charge") or "")
            if pi["status"] != "succeeded" or charge is None:
                raise ValueError(f"payment intent {pi['id']} has no successful charge")
            if charge.get("disputed"):
                raise ValueError(f"charge {charge['id']} is already disputed")
            charge["disputed"] = True
            dispute = _dispute(pi, charge, reason, status, int(time.time()) + due_in_s)
            self.disputes[dispute["id"]] = dispute
            self._emit("charge.dispute.created", dispute)
            if status == "needs_response":
                self._move_funds(dispute, -dispute["amount"], "charge.dispute.funds_withdrawn")
            return copy.deepcopy(dispute)

    def update(self, dispute_id: str, status: str) -> dict[str, Any]:
        """Move an open dispute on (``needs_response`` → ``under_review`` submits evidence)."""
        with self._lock:
            dispute = self._dispute_or_404(dispute_id)
            if status not in _MOVES.get(dispute["status"], set()):
                raise ValueError(f"dispute {dispute_id} is {dispute['status']}, not → {status}")
            previous = {"status": dispute["status"]}
            dispute["status"] = status
            if status.endswith("under_review"):
                details = dispute["evidence_details"]
                previous["evidence_details"] = copy.deepcopy(details)
                details.update(has_evidence=True, submission_count=details["submission_count"] + 1)
                dispute["evidence"]["uncategorized_text"] = "Delivered; tracking attached."
            self._emit("charge.dispute.updated", dispute, previous=previous)
            return copy.deepcopy(dispute)

    def close(self, dispute_id: str, outcome: str) -> dict[str, Any]:
        """Close an open dispute ``won`` or ``lost`` (an inquiry closes ``warning_closed``)."""
        if outcome not in ("won", "lost"):
            raise ValueError(f"outcome must be won or lost, not {outcome!r}")
        with self._lock:
            dispute = self._dispute_or_404(dispute_id)
            if dispute["status"] not in _MOVES:
                raise ValueError(f"dispute {dispute_id} is {dispute['status']}")
            inquiry = dispute["status"].startswith("warning_")
            dispute["status"] = "warning_closed" if inquiry else outcome
            self._emit("charge.dispute.closed", dispute)
            if outcome == "won" and not inquiry:
                self._move_funds(dispute, dispute["amount"], "charge.dispute.funds_reinstated")
            return copy.deepcopy(dispute)

    def _move_funds(self, dispute: dict[str, Any], amount: int, event_type: str) -> None:
        fee = DISPUTE_FEE if amount < 0 else 0
        dispute["balance_transactions"].append(
            {
                "id": _new_id("txn_"), "object": "balance_transaction", "amount": amount,
                "currency": dispute["currency"], "created": int(time.time()),
                "description": f"Chargeback {'withdrawal' if amount < 0 else 'reversal'} "
                f"for {dispute['charge']}",
                "fee": fee, "net": amount - fee, "reporting_category":
                "dispute" if amount < 0 else "dispute_reversal",
                "source": dispute["id"], "status": "available", "type": "adjustment",
            }
        )  # fmt: skip
        self._emit(event_type, dispute)

    def _dispute_or_404(self, dispute_id: str) -> dict[str, Any]:
        if dispute_id not in self.disputes:
            raise KeyError(f"no dispute {dispute_id!r}")
        return self.disputes[dispute_id]


def _dispute(
    pi: dict[str, Any], charge: dict[str, Any], reason: str, status: str, due_by: int
) -> dict[str, Any]:
    return {
        "id": _new_id("dp_"), "object": "dispute", "amount": charge["amount"],
        "balance_transactions": [], "charge": charge["id"], "created": int(time.time()),
        "currency": charge["currency"], "enhanced_eligibility_types": [],
        "evidence": dict.fromkeys(_EVIDENCE_FIELDS),
        "evidence_details": {
            "due_by": due_by, "enhanced_eligibility": {}, "has_evidence": False,
            "past_due": False, "submission_count": 0,
        },
        "is_charge_refundable": False, "livemode": False, "metadata": {},
        "payment_intent": pi["id"],
        "payment_method_details": {
            "card": {"brand": "visa", "case_type": "inquiry" if status.startswith("warning_")
                     else "chargeback", "network_reason_code": "10.4"},
            "type": "card",
        },
        "reason": reason, "status": status,
    }  # fmt: skip
