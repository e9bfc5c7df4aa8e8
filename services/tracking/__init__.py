"""The tracking stage: which shipments to poll, and what a poll or push result changes.

Scheduling (beat, then a task; DESIGN.md §3.5 — no row lock during a provider call):

1. :func:`claim_due` — one short transaction: ``FOR UPDATE SKIP LOCKED`` the shipments whose
   ``next_poll_at`` passed and set a lease, so two beats never claim the same shipment. Commit.
2. The task layer takes rate-limit tokens (``adapters.ratelimit.TokenBucket.reserve``), hands
   the shipments it has no token for back with :func:`release_lease`, and queries the provider
   for the rest with no transaction open (:func:`poll_targets` gives what to send).
3. :func:`record_poll` — a new transaction per result (or per batch): apply it, clear the lease
   and schedule the next poll from the policy in :mod:`domain.tracking`.

Pushes go to :func:`apply_push` (:func:`apply_result` with ``source="push"``, then the end
rules). Locks are taken order first, then shipment — the same order as every other stage — so
a push and a poll of the same parcel serialize on the order row and never deadlock. Shipment
statuses only move forward (:func:`domain.tracking.can_advance`); a stale or out-of-order
result still adds its unseen events, and is recorded on the timeline as ignored.

The order follows its shipment: SHIPPED -> IN_TRANSIT -> DELIVERED (then
receipt and COMPLETED: :mod:`services.receipt`); EXCEPTION and
EXPIRED -> NEEDS_ATTENTION with the reason. An order flagged by a tracking exception is moved on
again when the carrier resolves the problem (a later IN_TRANSIT or DELIVERED); an order flagged
for any other reason is left to the operator. An order shipped as several parcels follows all of
them (:func:`domain.parcels.follow_parcels`): IN_TRANSIT once one moves, PARTIALLY_DELIVERED
once one is delivered, DELIVERED only when every one is; a parcel in exception flags the order
naming that parcel while the others are still tracked.

Polling stops for good once Kuaidi100 has finished with a parcel (a ``shutdown`` or ``abort``
push, ``ischeck=1``, state 4 退签), whatever its status — a parcel in EXCEPTION included: the
rules and their reasons are in :mod:`.finish`.

The package: :mod:`.leases` (claims and leases), :mod:`.schedule` (starting, handing back and
recording a poll), :mod:`.results` (applying a result, the order following its shipment) and
:mod:`.finish` (when tracking ends). Callers use ``from services import tracking`` and the names
below.
"""

from __future__ import annotations

from services.tracking.finish import apply_push, end_reason
from services.tracking.leases import (
    PollTarget,
    claim_ahead,
    claim_due,
    lease_expiry,
    poll_targets,
    release_lease,
)
from services.tracking.results import Source, apply_result, event_dedupe_key
from services.tracking.schedule import (
    PollStarted,
    abandon_poll,
    defer_pushed,
    hand_back_recent,
    record_poll,
    stale_shipments,
    start_poll,
)

__all__ = [
    "PollStarted",
    "PollTarget",
    "Source",
    "abandon_poll",
    "apply_push",
    "apply_result",
    "claim_ahead",
    "claim_due",
    "defer_pushed",
    "end_reason",
    "event_dedupe_key",
    "hand_back_recent",
    "lease_expiry",
    "poll_targets",
    "record_poll",
    "release_lease",
    "stale_shipments",
    "start_poll",
]
