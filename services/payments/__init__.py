"""The payment stage: create, confirm, expire, cancel and refund — without ever holding a row
lock during a provider call.

Every provider interaction is split in three (DESIGN.md §3.5):

1. ``prepare_*`` — in a transaction: lock the order, check its status, store the intent (the
   idempotency key, the refund number) and return what to send. Commit.
2. The provider is called through the gate (:mod:`services.provider_calls`) with no
   transaction open.
3. ``finish_*`` / ``apply_*`` — in a new transaction: lock the order again, re-check, record the
   outcome with forward-only status moves, and return :class:`Followup` tasks to enqueue after
   the commit.

One function per step runs the three parts and decides what each provider answer means:
:func:`create`, :func:`query`, :func:`close` (expiry and cancel) and :func:`refund`. The task
around it only passes ids and ports in and publishes the :class:`~services.ports.Outcome`.

Locks are always taken order first, then payment, then refund, so concurrent webhooks, polls,
expiries and cancels serialize on the order row and never deadlock.

The package, by use case: :mod:`.create`, :mod:`.confirm` (notifications and polling),
:mod:`.close` (expiry and cancel), :mod:`.refunds`, :mod:`.provider_refunds` (refunds made at
the provider, and looking refunds up), :mod:`.attention` (flagged payments),
:mod:`.view`, and :mod:`.common`. Callers use
``from services import payments`` and the names below.
"""

from __future__ import annotations

from services.payments.attention import acknowledge
from services.payments.close import (
    cancel_order,
    close,
    finish_close,
    prepare_close,
)
from services.payments.common import (
    AWAITING,
    LEASE_S,
    REFUND_QUERY_S,
    REFUND_REDRIVE_S,
    SHIP_BY_S,
    PaymentConfig,
    ProviderCall,
    Providers,
    expire_order,
    lock_payment,
    move_payment,
    provider_ref,
)
from services.payments.confirm import (
    apply_notification,
    apply_status,
    claim_due,
    finish_query,
    prepare_query,
    query,
)
from services.payments.create import (
    create,
    fail_create,
    finish_create,
    prepare_create,
    rotate_create_key,
    settled_on_create,
)
from services.payments.refunds import (
    finish_refund,
    prepare_refund,
    refund,
    refund_for_order,
    request_refund,
)
from services.payments.view import (
    payment_view,
)

__all__ = [
    "AWAITING",
    "LEASE_S",
    "REFUND_QUERY_S",
    "REFUND_REDRIVE_S",
    "SHIP_BY_S",
    "PaymentConfig",
    "ProviderCall",
    "Providers",
    "acknowledge",
    "apply_notification",
    "apply_status",
    "cancel_order",
    "claim_due",
    "close",
    "create",
    "expire_order",
    "fail_create",
    "finish_close",
    "finish_create",
    "finish_query",
    "finish_refund",
    "lock_payment",
    "move_payment",
    "payment_view",
    "prepare_close",
    "prepare_create",
    "prepare_query",
    "prepare_refund",
    "provider_ref",
    "query",
    "refund",
    "refund_for_order",
    "request_refund",
    "rotate_create_key",
    "settled_on_create",
]
