"""Status callbacks: every order status change, announced to the order's source over HTTP.

How it works (a transactional outbox):

1. :func:`record_status_change` runs inside the transaction that changes the order's status and
   inserts one ``callback_deliveries`` row for the source's endpoint (there is at most one per
   source). The change is therefore announced if and only if it commits. Sources with no
   active endpoint cost one unique-index lookup and nothing else.
2. Beat calls :func:`claim_due` (``FOR UPDATE SKIP LOCKED``; ``next_attempt_at`` pushed forward
   as a lease, so two beats never claim the same row) and publishes ``callbacks.deliver`` tasks
   of at most a chunk of deliveries, each chunk for a single endpoint.
3. :func:`deliver` builds each request with :func:`delivery_request` (short transaction), POSTs
   it through the sender port (``adapters.callbacks``) with no transaction open, then
   :func:`record_attempt` writes the outcome.

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

The package: :mod:`.rules` (constants, retry policy), :mod:`.outbox` (recording),
:mod:`.endpoints`, :mod:`.signing`, :mod:`.delivery` (claim, request, attempt), :mod:`.send`
(a chunk's delivery) and :mod:`.log`
(resend, the delivery log). Callers use ``from services import callbacks`` and the names below.
"""

from __future__ import annotations

from services.callbacks.delivery import (
    Claim,
    DeliveryRequest,
    chunk_claims,
    claim_due,
    delivery_request,
    record_attempt,
    release,
)
from services.callbacks.endpoints import (
    EndpointView,
    check_secret,
    check_source,
    check_url,
    list_endpoints,
    pause,
    register_endpoint,
    resume,
)
from services.callbacks.log import (
    AttemptView,
    DeliveryView,
    list_deliveries,
    resend,
)
from services.callbacks.outbox import (
    OrderFields,
    OrderSnapshot,
    record_parcel_change,
    record_status_change,
    record_status_changes,
)
from services.callbacks.rules import (
    DELIVERED,
    DELIVERY_STATUSES,
    EVENT_ID_HEADER,
    EVENT_TYPE,
    FAILED,
    MAX_ERROR_LEN,
    MAX_URL_LEN,
    MIN_SECRET_LEN,
    PARCEL_EVENT_TYPE,
    PAUSED,
    PENDING,
    SHIPPED_OR_LATER,
    SIGNATURE_HEADER,
    SIGNATURE_TOLERANCE_S,
    TIMESTAMP_HEADER,
    RetryPolicy,
)
from services.callbacks.send import deliver
from services.callbacks.signing import (
    event_body,
    sign,
    verify_signature,
)

__all__ = [
    "DELIVERED",
    "DELIVERY_STATUSES",
    "EVENT_ID_HEADER",
    "EVENT_TYPE",
    "FAILED",
    "MAX_ERROR_LEN",
    "MAX_URL_LEN",
    "MIN_SECRET_LEN",
    "PARCEL_EVENT_TYPE",
    "PAUSED",
    "PENDING",
    "SHIPPED_OR_LATER",
    "SIGNATURE_HEADER",
    "SIGNATURE_TOLERANCE_S",
    "TIMESTAMP_HEADER",
    "AttemptView",
    "Claim",
    "DeliveryRequest",
    "DeliveryView",
    "EndpointView",
    "OrderFields",
    "OrderSnapshot",
    "RetryPolicy",
    "check_secret",
    "check_source",
    "check_url",
    "chunk_claims",
    "claim_due",
    "deliver",
    "delivery_request",
    "event_body",
    "list_deliveries",
    "list_endpoints",
    "pause",
    "record_attempt",
    "record_parcel_change",
    "record_status_change",
    "record_status_changes",
    "register_endpoint",
    "release",
    "resend",
    "resume",
    "sign",
    "verify_signature",
]
