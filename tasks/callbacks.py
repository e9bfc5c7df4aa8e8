"""Status-callback tasks (see :mod:`services.callbacks` for the outbox and signature scheme).

* ``maintenance.dispatch_callbacks`` (beat): claim due deliveries, publish ``callbacks.deliver``
  per chunk (one endpoint per chunk) after the commit. A lost publish is harmless: the claim
  is only a lease, and the rows are claimed again when it runs out.
* ``callbacks.deliver(ids)`` (queue ``callbacks``, best on a threads pool): for each delivery,
  build the signed request (short transaction), POST it with no transaction open and short
  timeouts, then record the outcome (new transaction). After the first failure the rest of the
  chunk is handed back untried (the endpoint is now gated), and the chunk stops when its time
  budget is spent, so a slow receiver holds one worker thread for seconds, not minutes.
"""

from __future__ import annotations

import logging
import time

import requests

from services import callbacks
from services.task_names import CALLBACKS_DELIVER, MAINTENANCE_DISPATCH_CALLBACKS
from services.unit_of_work import unit_of_work
from settings import get_settings
from tasks.base import OrderflowTask, utcnow
from workers.app import app

log = logging.getLogger(__name__)


def retry_policy() -> callbacks.RetryPolicy:
    s = get_settings()
    return callbacks.RetryPolicy(
        backoff_first_s=s.callback_backoff_first_s,
        backoff_cap_s=s.callback_backoff_cap_s,
        pause_after=s.callback_pause_after,
        max_attempts=s.callback_max_attempts,
    )


def timeouts() -> tuple[float, float]:
    """(connect, read) seconds: short, so a dead receiver costs a few seconds of one thread."""
    s = get_settings()
    return (s.callback_connect_timeout_s, s.callback_read_timeout_s)


def post(
    request: callbacks.DeliveryRequest, timeout: tuple[float, float]
) -> tuple[bool, int | None, str | None]:
    """POST one request: ``(ok, status_code, error)``. Never raises for the receiver's faults.

    The error text is the exception class and a short reason, never the URL's query or the
    body (they may hold tokens or personal data). Redirects are not followed: a receiver that
    moved must be re-registered, so a signed event never reaches an unregistered host.
    """
    try:
        response = requests.post(
            request.url, data=request.body, headers=request.headers, timeout=timeout,
            allow_redirects=False, stream=True,
        )  # fmt: skip
        response.close()  # the answer's body is not needed; do not read an unbounded one
    except requests.Timeout as exc:
        return False, None, f"{type(exc).__name__}: no answer within {timeout}s"
    except requests.RequestException as exc:
        return False, None, f"{type(exc).__name__}: could not reach the receiver"
    ok = 200 <= response.status_code < 300
    return ok, response.status_code, None if ok else f"HTTP {response.status_code}"


def deliver_chunk(
    delivery_ids: list[int],
    *,
    policy: callbacks.RetryPolicy | None = None,
    timeout: tuple[float, float] | None = None,
    budget_s: float | None = None,
) -> dict[str, int]:
    """Deliver a chunk (the body of ``callbacks.deliver``; tests call it directly).

    Returns counts by outcome. Deliveries not attempted (after a failure, or past the time
    budget) are released: due again, no attempt counted. The keyword arguments override the
    settings (tests use tiny backoffs and timeouts).
    """
    started = time.monotonic()
    budget = get_settings().callback_task_budget_s if budget_s is None else budget_s
    policy = policy or retry_policy()
    timeout = timeout or timeouts()
    outcomes: dict[str, int] = {}
    for index, delivery_id in enumerate(delivery_ids):
        if time.monotonic() - started > budget:
            _release(delivery_ids[index:])
            outcomes["released"] = len(delivery_ids) - index
            break
        with unit_of_work() as session:
            request = callbacks.delivery_request(session, delivery_id, now=utcnow())
        if request is None:
            outcomes["skipped"] = outcomes.get("skipped", 0) + 1
            continue
        sent = time.monotonic()
        ok, code, error = post(request, timeout)  # no transaction open during the call
        ms = round((time.monotonic() - sent) * 1000)
        with unit_of_work() as session:
            status = callbacks.record_attempt(
                session, delivery_id, ok=ok, status_code=code, error=error, now=utcnow(),
                policy=policy, duration_ms=ms,
            )  # fmt: skip
        outcomes[status] = outcomes.get(status, 0) + 1
        if not ok:
            log.warning("callback %s to endpoint %s failed: %s", delivery_id,
                        request.endpoint_id, error)  # fmt: skip
            _release(delivery_ids[index + 1 :])
            if len(delivery_ids) > index + 1:
                outcomes["released"] = len(delivery_ids) - index - 1
            break
    return outcomes


def _release(delivery_ids: list[int]) -> None:
    if delivery_ids:
        with unit_of_work() as session:
            callbacks.release(session, delivery_ids, now=utcnow())


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


@app.task(name=CALLBACKS_DELIVER, base=OrderflowTask, bind=True)
def deliver(self: OrderflowTask, delivery_ids: list[int]) -> dict[str, int]:
    """POST a chunk of callbacks (one endpoint); the receiver's failures are recorded, not
    raised. Only our own faults (database unreachable) are retried."""
    ids = [int(i) for i in delivery_ids]
    try:
        return deliver_chunk(ids)
    except Exception as exc:
        self.retry_or_fail(exc)
