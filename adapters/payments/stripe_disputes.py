"""Stripe ``charge.dispute.*`` events → :class:`~adapters.payments.base.DisputeEvent`.

Parsed from the event's ``data.object``, a Dispute object as Stripe sends it today: ``id``
(``dp_…``), ``object: "dispute"``, ``amount`` (minor units), ``currency``, ``charge``,
``payment_intent``, ``reason``, ``status``, ``evidence_details{due_by, has_evidence, past_due,
submission_count}``, ``balance_transactions`` (list of balance transactions), ``created``,
``livemode``, ``is_charge_refundable``. Contracts:

* Event types: ``charge.dispute.created|updated|closed|funds_withdrawn|funds_reinstated``
  (:data:`DISPUTE_EVENTS`); each carries the whole dispute, so each is applied the same way.
* ``evidence_details.due_by`` of ``0`` or ``null`` (the bank allows no response) → ``None``.
* ``funds_withdrawn`` is minus the sum of the negative balance transactions' ``amount``;
  ``funds_reinstated`` the sum of the positive ones (fees are in ``fee``, not counted here).
* ``event_at`` is the event's ``created``; an event without one is refused (it cannot be ordered).
* Called only after ``Stripe-Signature`` was verified (:meth:`StripeProvider.parse_notification`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from adapters.payments.base import (
    DisputeEvent,
    Notification,
    NotificationKind,
    ProviderRejected,
)
from domain.money import Money, MoneyError

NAME = "stripe"
DISPUTE_EVENTS = frozenset(
    {
        "charge.dispute.created",
        "charge.dispute.updated",
        "charge.dispute.closed",
        "charge.dispute.funds_withdrawn",
        "charge.dispute.funds_reinstated",
    }
)

Json = dict[str, Any]


def dispute_notification(event_id: str, event_type: str, event: Json, obj: Json) -> Notification:
    """The DISPUTE notification for a verified ``charge.dispute.*`` event whose data.object is
    ``obj``; raises ``ProviderRejected(code="invalid_payload")`` when it is not a dispute."""
    if obj.get("object") != "dispute":
        raise _invalid(f"{event_type} without a dispute object")
    event_at = _time(event.get("created"))
    if event_at is None:
        raise _invalid(f"{event_type} without a valid 'created'")
    withdrawn, reinstated = _funds(obj.get("balance_transactions"))
    details = obj.get("evidence_details")
    details = details if isinstance(details, dict) else {}
    dispute = DisputeEvent(
        dispute_id=_str(obj, "id"),
        provider_ref=_opt_str(obj, "payment_intent"),
        charge_ref=_opt_str(obj, "charge"),
        amount=_money(obj),
        reason=_opt_str(obj, "reason") or "general",
        status=_str(obj, "status"),
        evidence_due_by=_time(details.get("due_by")),
        has_evidence=details.get("has_evidence") is True,
        funds_withdrawn=withdrawn,
        funds_reinstated=reinstated,
        event_at=event_at,
    )
    return Notification(
        NotificationKind.DISPUTE, event_id, None, dispute=dispute, raw_type=event_type
    )


def _funds(transactions: object) -> tuple[int, int]:
    withdrawn = reinstated = 0
    items = transactions if isinstance(transactions, list) else []
    for txn in items:
        amount = txn.get("amount") if isinstance(txn, dict) else None
        if isinstance(amount, bool) or not isinstance(amount, int):
            continue
        if amount < 0:
            withdrawn -= amount
        else:
            reinstated += amount
    return withdrawn, reinstated


def _money(obj: Json) -> Money:
    amount, currency = obj.get("amount"), obj.get("currency")
    if isinstance(amount, bool) or not isinstance(amount, int) or not isinstance(currency, str):
        raise _invalid("dispute without a valid amount and currency")
    try:
        return Money(amount, currency.upper())
    except MoneyError as exc:
        raise ProviderRejected(NAME, str(exc), code="unsupported_currency") from exc


def _time(value: object) -> datetime | None:
    """A positive Unix time as an aware datetime; ``None`` for 0, null or nonsense."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _str(obj: Json, key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise _invalid(f"dispute without a valid {key!r}")
    return value


def _opt_str(obj: Json, key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) and value else None


def _invalid(message: str) -> ProviderRejected:
    return ProviderRejected(NAME, message, code="invalid_payload")
