"""Status-callback tasks (see :mod:`services.callbacks` for the outbox and signature scheme).

* ``maintenance.dispatch_callbacks`` (beat): claim due deliveries, publish ``callbacks.deliver``
  per chunk (one endpoint per chunk) after the commit. A lost publish is harmless: the claim
  is only a lease, and the rows are claimed again when it runs out.
* ``callbacks.deliver(ids)`` (queue ``callbacks``, best on a threads pool): one service step,
  :func:`services.callbacks.deliver`.
"""

from __future__ import annotations

import logging

from services import callbacks
from services.ports import utcnow
from services.secrets_at_rest import cipher_from_setting
from services.task_names import CALLBACKS_DELIVER, MAINTENANCE_DISPATCH_CALLBACKS
from services.unit_of_work import unit_of_work
from settings import get_settings
from tasks.base import OrderflowTask
from workers.app import app
from workers.ports import callback_policy, callback_sender, ports

log = logging.getLogger(__name__)


@app.task(name=CALLBACKS_DELIVER, base=OrderflowTask, bind=True)
def deliver(self: OrderflowTask, delivery_ids: list[int]) -> dict[str, int]:
    """POST a chunk of callbacks (one endpoint); the receiver's failures are recorded, not
    raised. Only our own faults (database unreachable) are retried."""
    ids = [int(i) for i in delivery_ids]
    s = get_settings()
    try:
        cipher = cipher_from_setting(s.key_encryption_key)  # decrypts endpoint secrets
        return callbacks.deliver(ids, callback_sender(), ports(), policy=callback_policy(),
                                 budget_s=s.callback_task_budget_s, cipher=cipher)  # fmt: skip
    except Exception as exc:
        self.retry_or_fail(exc)


def dispatch() -> int:
    """Claim due deliveries and publish them in chunks after the commit; returns tasks sent."""
    s = get_settings()
    with unit_of_work() as session:
        claims = callbacks.claim_due(
            session, now=utcnow(), limit=s.callback_batch, lease_s=s.callback_lease_s,
            per_endpoint=s.callback_chunk,
        )  # fmt: skip
    chunks = callbacks.chunk_claims(claims, s.callback_chunk)
    sent = 0
    try:
        with app.producer_or_acquire() as producer:
            for chunk in chunks:
                app.send_task(CALLBACKS_DELIVER, args=[chunk], producer=producer)
                sent += 1
    except Exception:
        # The rows stay leased until lease_s passes, then the next tick claims them again.
        log.exception("published %d of %d callback chunks", sent, len(chunks))
    return sent


@app.task(name=MAINTENANCE_DISPATCH_CALLBACKS, base=OrderflowTask, bind=True)
def dispatch_callbacks(self: OrderflowTask) -> int:
    """Beat: publish due status callbacks."""
    try:
        return dispatch()
    except Exception as exc:
        self.retry_or_fail(exc)
