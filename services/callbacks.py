"""Status callbacks: every order status change, announced to the order's source over HTTP.

How it works (a transactional outbox):

1. :func:`record_status_change` runs inside the transaction that changes the order's status and
   inserts one ``callback_deliveries`` row for the source's endpoint (there is at most one per
   source). The change is therefore announced if and only if it commits. Sources with no
   active endpoint cost one unique-index lookup and nothing else.
2. Beat calls :func:`claim_due` (``FOR UPDATE SKIP LOCKED``; ``next_attempt_at`` pushed forward
   as a lease, so two beats never claim the same row) and publishes ``callbacks.deliver`` tasks
   of at most a chunk of deliveries, each chunk for a single endpoint.
3. The task builds each request with :func:`delivery_request` (short transaction), POSTs it with
   no transaction open, then :func:`record_attempt` writes the outcome.

Delivery is at least once: a crash between the POST and the record, or a resend, repeats an
event. Receivers drop repeats by ``X-Orderflow-Event-Id`` (the same for every attempt and every
resend of one event). Events of one order are not guaranteed to arrive in order (a retried
event can arrive after a later one): ``sequence`` grows with each change of an order (changes of
one order are serialized by its row lock), so a receiver keeps the highest it has seen.

Signature scheme, for receivers::

    X-Orderflow-Event-Id:  <uuid>                     stable across retries and resends
    X-Orderflow-Timestamp: <unix seconds>             when this attempt was signed
    X-Orderflow-Signature: t=<unix seconds>,v1=<hex>  hex = HMAC-SHA256(secret, f"{t}." + body)

Recompute the HMAC over the raw body bytes exactly as received, compare in constant time, and
refuse timestamps more than 5 minutes away from your clock (replay protection);
:func:`verify_signature` is a reference implementation. Any 2xx answer is success; anything
else (including redirects, which are not followed) is a failure and is retried.

Keeping a dead receiver cheap: after a failure the endpoint is gated (``retry_after``, capped
exponential backoff with jitter) and, while it has failures, only one delivery at a time probes
it; after ``pause_after`` consecutive failures it is paused (its deliveries become PAUSED) until
an operator runs :func:`resume`. Callbacks run on their own ``callbacks`` queue, so they never
take a worker from the order pipeline.
"""

from __future__ import annotations

import hmac
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlsplit

from pydantic import SecretStr
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.orm import Session

from domain.backoff import equal_jitter_s
from domain.errors import NotFound, ValidationError
from domain.orders import OrderStatus
from models import CallbackDelivery, CallbackEndpoint, Shipment, TrackingEvent
from models.callbacks import CallbackAttempt

EVENT_TYPE = "order.status_changed"
SIGNATURE_HEADER = "X-Orderflow-Signature"
EVENT_ID_HEADER = "X-Orderflow-Event-Id"
TIMESTAMP_HEADER = "X-Orderflow-Timestamp"
#: Receivers should refuse signatures older (or newer) than this.
SIGNATURE_TOLERANCE_S = 300

PENDING, DELIVERED, FAILED, PAUSED = "PENDING", "DELIVERED", "FAILED", "PAUSED"
DELIVERY_STATUSES = (PENDING, DELIVERED, FAILED, PAUSED)

#: Statuses whose event carries the parcel's tracking.
SHIPPED_OR_LATER = frozenset(
    {OrderStatus.SHIPPED, OrderStatus.IN_TRANSIT, OrderStatus.DELIVERED, OrderStatus.COMPLETED}
)
MIN_SECRET_LEN = 16
MAX_URL_LEN = 2000
MAX_ERROR_LEN = 500


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How failures are retried. The task layer builds it from settings."""

    backoff_first_s: float = 10.0  # first retry after ~this; doubles per attempt
    backoff_cap_s: float = 900.0  # longest gap between two attempts of one delivery
    pause_after: int = 10  # consecutive endpoint failures that pause the endpoint
    max_attempts: int = 20  # a delivery that failed this often is FAILED (resend revives it)

    def backoff_s(self, failures: int) -> float:
        """The delay after the ``failures``-th failure (:func:`domain.backoff.equal_jitter_s`)."""
        return equal_jitter_s(failures, first_s=self.backoff_first_s, cap_s=self.backoff_cap_s)


# -- recording (inside the caller's transaction) ----------------------------------------------


class OrderFields(Protocol):
    """What an event says about the order: an ``Order`` row or an :class:`OrderSnapshot`."""

    @property
    def id(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def external_id(self) -> str: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def total_amount(self) -> int: ...
    @property
    def currency(self) -> str: ...


@dataclass(frozen=True, slots=True)
class OrderSnapshot:
    """For callers that changed the order without an ``Order`` object (intake's INSERT)."""

    id: str
    source: str
    external_id: str
    currency: str
    total_amount: int = 0
    reason: str | None = None


# Runs on every status change of every order: a plain statement, built once.
_ACTIVE_ENDPOINT = text(
    "SELECT id, paused_at FROM callback_endpoints WHERE source = :source AND active"
)


def record_status_change(
    session: Session, order: OrderFields, previous: str | None, target: str
) -> None:
    """Queue the event "``order`` moved from ``previous`` to ``target``" for the order's source.

    Must run in the transaction that changes the status (it never commits). Cost: one
    unique-index lookup when the source has no active endpoint; otherwise that, the payment or
    shipment lookups the event needs, and one INSERT. A paused endpoint still gets its rows
    (as PAUSED), delivered once it is resumed.
    """
    endpoint = (
        session.connection().execute(_ACTIVE_ENDPOINT, {"source": order.source}).one_or_none()
    )
    if endpoint is None:
        return
    session.execute(
        insert(CallbackDelivery).values(
            event_id=uuid.uuid4(),
            endpoint_id=endpoint.id,
            order_id=order.id,
            event_type=EVENT_TYPE,
            payload=_payload(session, order, previous, target),
            status=PENDING if endpoint.paused_at is None else PAUSED,
            next_attempt_at=func.now(),
        )
    )


def _payload(
    session: Session, order: OrderFields, previous: str | None, target: str
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "order": {
            "id": order.id,
            "source": order.source,
            "external_id": order.external_id,
            "status": str(target),
            "previous_status": str(previous) if previous is not None else None,
            "reason": order.reason,
            "total_amount": order.total_amount,
            "currency": order.currency,
        }
    }
    if target == OrderStatus.AWAITING_PAYMENT:
        data["payment"] = _payment_part(session, order.id)
    if target in SHIPPED_OR_LATER or (
        target == OrderStatus.NEEDS_ATTENTION and previous in SHIPPED_OR_LATER
    ):
        data["tracking"] = _tracking_part(session, order.id)
    return data


def _payment_part(session: Session, order_id: str) -> dict[str, Any] | None:
    """What the customer needs to pay: the fields of ``GET /v1/orders/{id}``'s payment."""
    from services.payments import payment_view  # payments -> order_state -> callbacks

    view = payment_view(session, order_id)
    if view is None:
        return None
    keys = ("provider", "status", "out_trade_no", "amount", "currency", "instructions")
    return {key: view[key] for key in keys}


def _tracking_part(session: Session, order_id: str) -> dict[str, Any] | None:
    """Carrier, waybill and the latest tracking event only (not the whole history)."""
    shipment = session.scalar(
        select(Shipment).where(Shipment.order_id == order_id).order_by(Shipment.id.desc()).limit(1)
    )
    if shipment is None:
        return None
    latest = session.scalar(
        select(TrackingEvent)
        .where(TrackingEvent.shipment_id == shipment.id)
        .order_by(TrackingEvent.occurred_at.desc())
        .limit(1)
    )
    return {
        "carrier": shipment.carrier,
        "waybill": shipment.waybill,
        "status": shipment.status,
        "latest": None
        if latest is None
        else {
            "at": latest.occurred_at.isoformat(),
            "status": latest.status,
            "description": latest.description,
            "location": latest.location,
        },
    }


# -- endpoints ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointView:
    """An endpoint as operators see it: never the secret."""

    id: int
    source: str
    url: str
    active: bool
    paused_at: datetime | None
    consecutive_failures: int
    pending: int


def check_source(source: str) -> str:
    source = source.strip()
    if not source or len(source) > 64:
        raise ValidationError("source", "1 to 64 characters")
    return source


def check_url(url: str) -> str:
    """http(s) with a host; no credentials (they would end up in logs) and no fragment."""
    url = url.strip()
    if len(url) > MAX_URL_LEN:
        raise ValidationError("url", f"at most {MAX_URL_LEN} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as exc:
        raise ValidationError("url", f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise ValidationError("url", "must start with http:// or https://")
    if not parts.hostname:
        raise ValidationError("url", "has no host")
    if parts.username is not None or parts.password is not None:
        raise ValidationError("url", "must not contain credentials; the HMAC secret signs it")
    if parts.fragment:
        raise ValidationError("url", "must not contain a #fragment")
    return url


def check_secret(secret: SecretStr) -> SecretStr:
    value = secret.get_secret_value()
    if len(value) < MIN_SECRET_LEN or len(value) > 200:
        raise ValidationError("secret", f"{MIN_SECRET_LEN} to 200 characters")
    if not value.isprintable() or value != value.strip():
        raise ValidationError("secret", "printable characters without surrounding spaces")
    return secret


def register_endpoint(
    session: Session, source: str, url: str, secret: SecretStr
) -> CallbackEndpoint:
    """Create the source's endpoint, or replace its URL and secret (and re-activate it).

    Re-registering keeps a paused endpoint paused: resuming is a separate, explicit step.
    """
    source, url, secret = check_source(source), check_url(url), check_secret(secret)
    endpoint = session.scalar(
        select(CallbackEndpoint).where(CallbackEndpoint.source == source).with_for_update()
    )
    if endpoint is None:
        endpoint = CallbackEndpoint(source=source, url=url, secret=secret.get_secret_value())
        session.add(endpoint)
    else:
        endpoint.url, endpoint.secret = url, secret.get_secret_value()
        endpoint.active = True
    session.flush()
    return endpoint


def list_endpoints(session: Session) -> list[EndpointView]:
    pending = (
        select(CallbackDelivery.endpoint_id, func.count().label("n"))
        .where(CallbackDelivery.status.in_([PENDING, PAUSED]))
        .group_by(CallbackDelivery.endpoint_id)
        .subquery()
    )
    rows = session.execute(
        select(CallbackEndpoint, func.coalesce(pending.c.n, 0))
        .outerjoin(pending, pending.c.endpoint_id == CallbackEndpoint.id)
        .order_by(CallbackEndpoint.source)
    ).all()
    return [
        EndpointView(e.id, e.source, e.url, e.active, e.paused_at, e.consecutive_failures, n)
        for e, n in rows
    ]


def _endpoint_by_source(session: Session, source: str) -> CallbackEndpoint:
    endpoint = session.scalar(
        select(CallbackEndpoint).where(CallbackEndpoint.source == source).with_for_update()
    )
    if endpoint is None:
        raise NotFound(f"source: no callback endpoint for {source!r}")
    return endpoint


def resume(session: Session, source: str, *, now: datetime) -> int:
    """Un-pause the source's endpoint; its PAUSED deliveries are due now. Returns their count."""
    endpoint = _endpoint_by_source(session, check_source(source))
    endpoint.paused_at = None
    endpoint.retry_after = None
    endpoint.consecutive_failures = 0
    result = session.execute(
        update(CallbackDelivery)
        .where(CallbackDelivery.endpoint_id == endpoint.id, CallbackDelivery.status == PAUSED)
        .values(status=PENDING, next_attempt_at=now)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


# -- claiming and delivering --------------------------------------------------------------------


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


def event_body(delivery: CallbackDelivery) -> bytes:
    """The event as JSON bytes; the same bytes for every attempt and resend of the event."""
    event = {
        "id": str(delivery.event_id),
        "type": delivery.event_type,
        "created_at": delivery.created_at.isoformat(),
        "sequence": delivery.id,
        "data": delivery.payload,
    }
    return json.dumps(event, separators=(",", ":"), sort_keys=True, default=str).encode()


def sign(secret: SecretStr, timestamp: int, body: bytes) -> str:
    """The ``X-Orderflow-Signature`` value for ``body`` signed at ``timestamp``."""
    mac = hmac.new(secret.get_secret_value().encode(), f"{timestamp}.".encode() + body, "sha256")
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(
    secret: SecretStr,
    header: str,
    body: bytes,
    *,
    now: float,
    tolerance_s: float = SIGNATURE_TOLERANCE_S,
) -> bool:
    """Reference check for receivers: a valid ``v1`` MAC and a timestamp within tolerance."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).rpartition("v1=")[2]
    return hmac.compare_digest(expected, fields.get("v1", ""))


def delivery_request(
    session: Session, delivery_id: int, *, now: datetime
) -> DeliveryRequest | None:
    """The signed request for a claimed delivery, or None if it should not be sent any more
    (already delivered by a duplicate task, paused, or its endpoint deactivated)."""
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
        SIGNATURE_HEADER: sign(SecretStr(endpoint.secret), timestamp, body),
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
    policy: RetryPolicy = RetryPolicy(),  # frozen: a safe default
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
        raise NotFound(f"delivery {delivery_id}")
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
    endpoint.retry_after = now + timedelta(seconds=policy.backoff_s(endpoint.consecutive_failures))
    if delivery.attempts >= policy.max_attempts:
        delivery.status, delivery.next_attempt_at = FAILED, None
    else:
        delivery.next_attempt_at = now + timedelta(seconds=policy.backoff_s(delivery.attempts))
    if endpoint.consecutive_failures >= policy.pause_after and endpoint.paused_at is None:
        _pause(session, endpoint, now=now)
    return delivery.status


def _pause(session: Session, endpoint: CallbackEndpoint, *, now: datetime) -> None:
    endpoint.paused_at = now
    session.flush()  # the delivery's own changes first, so the UPDATE below sees them
    session.execute(
        update(CallbackDelivery)
        .where(CallbackDelivery.endpoint_id == endpoint.id, CallbackDelivery.status == PENDING)
        .values(status=PAUSED),
        execution_options={"synchronize_session": "fetch"},
    )


def release(session: Session, delivery_ids: list[int], *, now: datetime) -> None:
    """Hand back claimed deliveries that were not attempted (no attempt counted)."""
    if delivery_ids:
        session.execute(
            update(CallbackDelivery)
            .where(CallbackDelivery.id.in_(delivery_ids), CallbackDelivery.status == PENDING)
            .values(next_attempt_at=now)
        )


# -- operator actions and the log ---------------------------------------------------------------


def resend(
    session: Session, *, now: datetime, event_id: str | None = None, order_id: str | None = None
) -> int:
    """Send an event (or every event of an order) again, with the SAME event id.

    The delivery gets a fresh retry budget (``attempts`` starts again from 0) and is due now;
    on a paused endpoint it waits, PAUSED, for :func:`resume`. Returns how many were queued.
    """
    if (event_id is None) == (order_id is None):
        raise ValidationError("event_id", "give exactly one of an event id or an order id")
    stmt = select(CallbackDelivery).with_for_update()
    if event_id is not None:
        try:
            stmt = stmt.where(CallbackDelivery.event_id == uuid.UUID(event_id))
        except ValueError:
            raise ValidationError("event_id", f"not a UUID: {event_id!r}") from None
    else:
        stmt = stmt.where(CallbackDelivery.order_id == order_id)
    deliveries = list(session.scalars(stmt.order_by(CallbackDelivery.id)))
    if not deliveries:
        what = f"event {event_id}" if event_id is not None else f"order {order_id}"
        raise NotFound(f"no callback deliveries for {what}")
    paused = set(
        session.scalars(
            select(CallbackEndpoint.id).where(
                CallbackEndpoint.id.in_({d.endpoint_id for d in deliveries}),
                CallbackEndpoint.paused_at.is_not(None),
            )
        )
    )
    for d in deliveries:
        d.status = PAUSED if d.endpoint_id in paused else PENDING
        d.attempts, d.next_attempt_at, d.delivered_at = 0, now, None
    return len(deliveries)


@dataclass(frozen=True, slots=True)
class AttemptView:
    at: datetime
    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: int | None


@dataclass(frozen=True, slots=True)
class DeliveryView:
    id: int
    event_id: str
    source: str
    order_id: str
    order_status: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None
    attempt_log: tuple[AttemptView, ...] = ()


def list_deliveries(
    session: Session,
    *,
    order_id: str | None = None,
    status: str | None = None,
    source: str | None = None,
    limit: int = 100,
) -> list[DeliveryView]:
    """The delivery log, newest first, each with its attempts oldest first (payloads are not
    included: they may hold secrets)."""
    if status is not None and status not in DELIVERY_STATUSES:
        raise ValidationError("status", f"one of {', '.join(DELIVERY_STATUSES)}")
    if not 1 <= limit <= 10_000:
        raise ValidationError("limit", "1 to 10000")
    stmt = (
        select(CallbackDelivery, CallbackEndpoint.source)
        .join(CallbackEndpoint, CallbackEndpoint.id == CallbackDelivery.endpoint_id)
        .order_by(CallbackDelivery.id.desc())
        .limit(limit)
    )
    if order_id is not None:
        stmt = stmt.where(CallbackDelivery.order_id == order_id)
    if status is not None:
        stmt = stmt.where(CallbackDelivery.status == status)
    if source is not None:
        stmt = stmt.where(CallbackEndpoint.source == source)
    found = session.execute(stmt).tuples().all()
    log = _attempts(session, [d.id for d, _ in found])
    return [
        DeliveryView(
            d.id,
            str(d.event_id),
            src,
            d.order_id,
            str(d.payload.get("order", {}).get("status")),
            d.status,
            d.attempts,
            d.last_status_code,
            d.last_error,
            d.next_attempt_at,
            d.created_at,
            d.delivered_at,
            tuple(log.get(d.id, ())),
        )
        for d, src in found
    ]


def _attempts(session: Session, delivery_ids: list[int]) -> dict[int, list[AttemptView]]:
    log: dict[int, list[AttemptView]] = {}
    if not delivery_ids:
        return log
    rows = session.scalars(
        select(CallbackAttempt)
        .where(CallbackAttempt.delivery_id.in_(delivery_ids))
        .order_by(CallbackAttempt.delivery_id, CallbackAttempt.id)
    )
    for a in rows:
        log.setdefault(a.delivery_id, []).append(
            AttemptView(a.at, a.ok, a.status_code, a.error, a.duration_ms)
        )
    return log
