"""Claiming due deliveries (leases under ``FOR UPDATE SKIP LOCKED``), building each signed request
and recording each attempt's outcome, with the endpoint's gate and pause."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from domain.errors import NotFound
from models import CallbackDelivery, CallbackEndpoint
from models.callbacks import CallbackAttempt
from services.api_keys import SecretCipher
from services.callbacks.endpoints import hold
from services.callbacks.rules import (
    DELIVERED,
    EVENT_ID_HEADER,
    FAILED,
    MAX_ERROR_LEN,
    PENDING,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    RetryPolicy,
)
from services.callbacks.signing import event_body, sign
from services.secrets_at_rest import open_callback_secret

_DEFAULT_POLICY = RetryPolicy()  # frozen: safe to share as a default


@dataclass(frozen=True, slots=True)
class Claim:
    delivery_id: int
    endpoint_id: int


def claim_due(
    session: Session, *, now: datetime, limit: int, lease_s: float, per_endpoint: int = 20
) -> list[Claim]:
    """Claim due deliveries of healthy endpoints; ``next_attempt_at`` becomes ``now + lease_s``.

    ``lease_s`` must exceed a delivery task's hard time limit, or a slow task's rows could be
    claimed twice. An endpoint gets at most ``per_endpoint`` rows per call, and one with recent
    failures only one (a probe; the endpoint is gated for the lease meanwhile), so a dead
    receiver never ties up more than a worker thread or two. Rows of endpoints that are paused,
    inactive, gated, or being written by another transaction are left for a later call.
    """
    rows = session.execute(
        select(
            CallbackDelivery.id, CallbackDelivery.endpoint_id, CallbackEndpoint.consecutive_failures
        )
        .join(CallbackEndpoint, CallbackEndpoint.id == CallbackDelivery.endpoint_id)
        .where(
            CallbackDelivery.status == PENDING,
            CallbackDelivery.next_attempt_at <= now,
            CallbackEndpoint.active.is_(True),
            CallbackEndpoint.paused_at.is_(None),
            (CallbackEndpoint.retry_after.is_(None)) | (CallbackEndpoint.retry_after <= now),
        )
        .order_by(CallbackDelivery.next_attempt_at, CallbackDelivery.id)
        .limit(limit)
        .with_for_update(of=CallbackDelivery, skip_locked=True)
    ).all()
    failing = {r.endpoint_id for r in rows if r.consecutive_failures > 0}
    probing = _lock_endpoints(session, failing)
    claims: list[Claim] = []
    taken: dict[int, int] = {}
    for r in rows:
        if r.endpoint_id in failing and r.endpoint_id not in probing:
            continue  # another transaction holds the endpoint: it is being recorded; next time
        cap = 1 if r.endpoint_id in failing else per_endpoint
        if taken.get(r.endpoint_id, 0) < cap:
            taken[r.endpoint_id] = taken.get(r.endpoint_id, 0) + 1
            claims.append(Claim(r.id, r.endpoint_id))
    lease_until = now + timedelta(seconds=lease_s)
    if claims:
        session.execute(
            update(CallbackDelivery)
            .where(CallbackDelivery.id.in_([c.delivery_id for c in claims]))
            .values(next_attempt_at=lease_until)
        )
    if probing:
        session.execute(
            update(CallbackEndpoint)
            .where(CallbackEndpoint.id.in_(probing))
            .values(retry_after=lease_until)
        )
    return claims


def _lock_endpoints(session: Session, ids: set[int]) -> set[int]:
    # SKIP LOCKED: claiming never waits for (or deadlocks with) record_attempt holding one.
    if not ids:
        return set()
    return set(
        session.scalars(
            select(CallbackEndpoint.id)
            .where(CallbackEndpoint.id.in_(ids))
            .with_for_update(skip_locked=True)
        )
    )


def chunk_claims(claims: Iterable[Claim], size: int) -> list[list[int]]:
    """Delivery ids in chunks of at most ``size``, each chunk for one endpoint (one task each)."""
    by_endpoint: dict[int, list[int]] = {}
    for c in claims:
        by_endpoint.setdefault(c.endpoint_id, []).append(c.delivery_id)
    return [ids[i : i + size] for ids in by_endpoint.values() for i in range(0, len(ids), size)]


@dataclass(frozen=True, slots=True)
class DeliveryRequest:
    """One signed POST. ``headers`` hold the signature, never the secret."""

    delivery_id: int
    endpoint_id: int
    url: str
    body: bytes = field(repr=False)
    headers: dict[str, str] = field(repr=False)


def delivery_request(
    session: Session, delivery_id: int, *, now: datetime, cipher: SecretCipher | None = None
) -> DeliveryRequest | None:
    """The signed request for a claimed delivery, or None if it should not be sent any more
    (already delivered by a duplicate task, paused, or its endpoint deactivated).

    The endpoint's secret is decrypted with ``cipher`` (a legacy ``clear`` row needs none);
    one that cannot be decrypted raises ``SecretUnavailable``: our setup's fault, so nothing
    is recorded against the receiver, and the delivery waits out its lease and is claimed
    again (once the key is back, it goes out)."""
    row = session.execute(
        select(CallbackDelivery, CallbackEndpoint)
        .join(CallbackEndpoint, CallbackEndpoint.id == CallbackDelivery.endpoint_id)
        .where(CallbackDelivery.id == delivery_id)
    ).one_or_none()
    if row is None:
        return None
    delivery, endpoint = row.tuple()
    if delivery.status != PENDING or not endpoint.active or endpoint.paused_at is not None:
        return None
    body = event_body(delivery)
    timestamp = int(now.timestamp())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "orderflow-callbacks/1",
        EVENT_ID_HEADER: str(delivery.event_id),
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(open_callback_secret(endpoint, cipher), timestamp, body),
    }
    return DeliveryRequest(delivery.id, endpoint.id, endpoint.url, body, headers)


def record_attempt(
    session: Session,
    delivery_id: int,
    *,
    ok: bool,
    status_code: int | None,
    error: str | None,
    now: datetime,
    policy: RetryPolicy = _DEFAULT_POLICY,
    duration_ms: int | None = None,
) -> str:
    """Write one attempt's outcome; returns the delivery's status afterwards (or ``"stale"``).

    Each counted attempt is also kept as a ``callback_attempts`` row (the delivery row holds
    only the latest outcome); a stale one is not counted, as a duplicate of a recorded POST.

    Success: DELIVERED, and the endpoint's failure run ends. Failure: the delivery retries after
    a capped, jittered backoff (FAILED after ``policy.max_attempts``); the endpoint is gated for
    a backoff of its own and paused after ``policy.pause_after`` consecutive failures.
    ``error`` must not contain secrets (the task passes the exception class and a short reason).
    Locks the endpoint, then the delivery (the order :func:`resume` uses too).
    """
    endpoint_id = session.scalar(
        select(CallbackDelivery.endpoint_id).where(CallbackDelivery.id == delivery_id)
    )
    if endpoint_id is None:
        raise NotFound(f"delivery {delivery_id} not found", field="delivery_id")
    endpoint = session.get_one(CallbackEndpoint, endpoint_id, with_for_update=True)
    delivery = session.get_one(CallbackDelivery, delivery_id, with_for_update=True)
    if delivery.status != PENDING:
        return "stale"  # a duplicate task already recorded it, or it was paused meanwhile
    delivery.attempts += 1
    delivery.last_status_code = status_code
    session.add(
        CallbackAttempt(
            delivery_id=delivery.id, at=now, ok=ok, status_code=status_code,
            error=None if ok else (error or "failed")[:MAX_ERROR_LEN], duration_ms=duration_ms,
        )
    )  # fmt: skip
    if ok:
        delivery.status, delivery.delivered_at = DELIVERED, now
        delivery.next_attempt_at, delivery.last_error = None, None
        endpoint.consecutive_failures, endpoint.retry_after = 0, None
        return DELIVERED
    delivery.last_error = (error or "failed")[:MAX_ERROR_LEN]
    endpoint.consecutive_failures += 1
    then = policy.after_failure(delivery.attempts, endpoint.consecutive_failures)
    endpoint.retry_after = now + timedelta(seconds=then.gate_s)
    if then.retry_in_s is None:
        delivery.status, delivery.next_attempt_at = FAILED, None
    else:
        delivery.next_attempt_at = now + timedelta(seconds=then.retry_in_s)
    if then.pause_endpoint and endpoint.paused_at is None:
        hold(session, endpoint, now=now)
    return delivery.status


def release(session: Session, delivery_ids: list[int], *, now: datetime) -> None:
    """Hand back claimed deliveries that were not attempted (no attempt counted)."""
    if delivery_ids:
        session.execute(
            update(CallbackDelivery)
            .where(CallbackDelivery.id.in_(delivery_ids), CallbackDelivery.status == PENDING)
            .values(next_attempt_at=now)
        )
