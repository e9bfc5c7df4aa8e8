"""Delivering a chunk of claimed callbacks (one endpoint): the body of ``callbacks.deliver``."""

from __future__ import annotations

import logging
from collections import Counter

from adapters.callbacks import CallbackSender
from services.api_keys import SecretCipher
from services.callbacks.delivery import delivery_request, record_attempt, release
from services.callbacks.rules import RetryPolicy
from services.ports import Ports

log = logging.getLogger(__name__)


def deliver(
    delivery_ids: list[int],
    sender: CallbackSender,
    ports: Ports,
    *,
    policy: RetryPolicy,
    budget_s: float,
    cipher: SecretCipher | None = None,
) -> dict[str, int]:
    """For each delivery: build the signed request (short transaction), POST it through
    ``sender`` with no transaction open, record the outcome (new transaction). Returns counts
    by outcome (a delivery status, ``skipped`` or ``released``).

    After the first failure the rest of the chunk is released untried (due again, no attempt
    counted: the endpoint is now gated), and so is what is left once ``budget_s`` has passed,
    so a slow receiver holds one worker thread for seconds, not minutes. The receiver's
    faults are recorded, never raised; only our own reach the task: the database, or an
    endpoint secret ``cipher`` (``KEY_ENCRYPTION_KEY``) cannot decrypt (``SecretUnavailable``,
    not retryable: the task fails loudly, and the chunk's rows wait out their lease untried).
    """
    started = ports.clock()
    outcomes: Counter[str] = Counter()
    for index, delivery_id in enumerate(delivery_ids):
        if (ports.clock() - started).total_seconds() > budget_s:
            outcomes["released"] += _release(delivery_ids[index:], ports)
            break
        with ports.uow() as session:
            request = delivery_request(session, delivery_id, now=ports.clock(), cipher=cipher)
        if request is None:
            outcomes["skipped"] += 1
            continue
        sent = ports.clock()
        result = sender.post(request.url, request.body, request.headers)
        ms = round((ports.clock() - sent).total_seconds() * 1000)
        with ports.uow() as session:
            status = record_attempt(
                session, delivery_id, ok=result.ok, status_code=result.status_code,
                error=result.error, now=ports.clock(), policy=policy, duration_ms=ms,
            )  # fmt: skip
        outcomes[status] += 1
        if not result.ok:
            log.warning("callback %s to endpoint %s failed: %s", delivery_id,
                        request.endpoint_id, result.error)  # fmt: skip
            if rest := _release(delivery_ids[index + 1 :], ports):
                outcomes["released"] += rest
            break
    return dict(outcomes)


def _release(delivery_ids: list[int], ports: Ports) -> int:
    if delivery_ids:
        with ports.uow() as session:
            release(session, delivery_ids, now=ports.clock())
    return len(delivery_ids)
