"""Status callbacks to receivers that fail or hang, on real PostgreSQL and real HTTP: failures
back off, pause the endpoint and resume; a delivery fails after its attempts (each one logged);
a hanging receiver holds up no other endpoint, and one past the read timeout costs a single
attempt.

Backoffs are not waited out: the deliveries run on a :class:`tests.fakes.ManualClock` that the
test moves past each one (claims, attempts and gates all read that clock).
"""

from __future__ import annotations

import threading

from services import callbacks
from services.unit_of_work import unit_of_work
from tests.conftest import wait_until
from tests.fakes import ManualClock
from tests.integration.callbacks_support import (
    cli,
    deliver_chunk,
    deliveries,
    endpoint,
    new_order,
    now,
    register,
    run_deliveries,
)

#: A clock step longer than any backoff these tests use (``FAST`` caps them at 0.05 s).
PAST_BACKOFF_S = 1.0


def test_failures_back_off_pause_and_resume(catalog, receiver):
    catalog({"A": 10})
    receiver.modes["/web"] = "fail"
    register("web", receiver.url + "/web")
    orders = [new_order() for _ in range(3)]
    clock = ManualClock(now())  # started after the orders: their deliveries are due
    tries = 0
    while endpoint("web").paused_at is None:
        tries += 1
        assert tries < 100, "the endpoint was never paused"
        run_deliveries(clock=clock)
        clock.advance(PAST_BACKOFF_S)  # the next tick comes after the backoff
    assert len(receiver.at("/web")) == 3  # one probe at a time: exactly the threshold
    ep = endpoint("web")
    assert ep.consecutive_failures == 3
    rows = deliveries()
    assert {d.status for d in rows} == {"PAUSED"}
    assert sum(d.attempts for d in rows) == 3
    assert all(d.last_status_code == 500 and d.last_error == "HTTP 500" for d in rows if d.attempts)
    assert run_deliveries(clock=clock) == 0  # paused: nothing is attempted, though due
    new_order()  # a change while paused is held, not lost
    assert deliveries()[-1].status == "PAUSED"

    receiver.modes["/web"] = "ok"
    with unit_of_work() as s:
        assert callbacks.resume(s, "web", now=clock()) == 4
    run_deliveries(clock=clock)
    rows = deliveries()
    assert {d.status for d in rows} == {"DELIVERED"}
    assert {d.order_id for d in rows} >= set(orders)
    ok_ids = {r.headers["X-Orderflow-Event-Id"] for r in receiver.at("/web")}
    assert {str(d.event_id) for d in rows} <= ok_ids
    assert endpoint("web").consecutive_failures == 0


def test_failed_after_max_attempts(catalog, receiver):
    catalog({"A": 1})
    receiver.modes["/web"] = "fail"
    register("web", receiver.url + "/web")
    new_order()
    policy = callbacks.RetryPolicy(backoff_first_s=0.01, backoff_cap_s=0.02, max_attempts=2)
    clock = ManualClock(now())  # started after the order: its delivery is due
    for _ in range(20):
        run_deliveries(policy=policy, clock=clock)
        if deliveries()[0].status == "FAILED":
            break
        clock.advance(PAST_BACKOFF_S)  # the next tick comes after the backoff
    (row,) = deliveries()
    assert (row.status, row.attempts, row.next_attempt_at) == ("FAILED", 2, None)
    # Every attempt is in the log, not only the last one; the CLI shows them.
    with unit_of_work() as s:
        (view,) = callbacks.list_deliveries(s)
    assert [(a.ok, a.status_code, a.error) for a in view.attempt_log] == [
        (False, 500, "HTTP 500"), (False, 500, "HTTP 500")
    ]  # fmt: skip
    assert all(a.duration_ms is not None for a in view.attempt_log)
    assert view.attempt_log[0].at < view.attempt_log[1].at
    receiver.modes["/web"] = "ok"
    with unit_of_work() as s:
        callbacks.resend(s, now=clock(), event_id=str(row.event_id))
    for _ in range(20):  # due now: a dispatcher tick past the endpoint's gate sends it
        run_deliveries(policy=policy, clock=clock)
        if deliveries()[0].status != "PENDING":
            break
        clock.advance(PAST_BACKOFF_S)
    shown = cli("deliveries", "--order", row.order_id)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("500 HTTP 500") == 2 and shown.stdout.count(" 204 ok ") == 1


def _deliver_in_threads(
    claims: list[callbacks.Claim], timeouts: dict[int, tuple[float, float]]
) -> tuple[list[threading.Thread], list[int]]:
    """Each chunk in a thread of its own, as on the callbacks queue's threads pool, with the
    (connect, read) timeout of its endpoint; returns the threads and the endpoints finished."""
    done: list[int] = []

    def run(chunk: list[int], endpoint_id: int) -> None:
        deliver_chunk(chunk, timeout=timeouts[endpoint_id])
        done.append(endpoint_id)

    threads = []
    for chunk in callbacks.chunk_claims(claims, 20):
        eid = next(c.endpoint_id for c in claims if c.delivery_id == chunk[0])
        threads.append(threading.Thread(target=run, args=(chunk, eid)))
    for t in threads:
        t.start()
    return threads, done


def test_a_hanging_receiver_does_not_hold_up_other_endpoints(catalog, receiver):
    catalog({"A": 20})
    receiver.modes["/slow"] = "hang"
    slow_id, fast_id = (
        register("slow", receiver.url + "/slow"),
        register("fast", receiver.url + "/fast"),
    )
    for _ in range(3):
        new_order("slow")
    for _ in range(5):
        new_order("fast")
    with unit_of_work() as s:
        claims = callbacks.claim_due(s, now=now(), limit=100, lease_s=60)
    # The slow endpoint's client waits up to 60 s: far longer than the fast ones can take, so
    # it is still waiting when they land, however busy the machine.
    threads, done = _deliver_in_threads(claims, {slow_id: (1.0, 60.0), fast_id: (1.0, 60.0)})
    wait_until(lambda: len(receiver.at("/fast")) == 5, timeout_s=30, every_s=0.02)
    assert receiver.hanging == 1 and not receiver.at("/slow") and slow_id not in done
    receiver.release.set()  # now the slow receiver answers, and its chunk goes on
    for t in threads:
        t.join(30)
    assert sorted(done) == sorted([slow_id, fast_id])
    assert {d.status for d in deliveries()} == {"DELIVERED"}
    assert len(receiver.at("/slow")) == 3


def test_a_receiver_past_the_read_timeout_fails_one_attempt_and_hands_the_rest_back(
    catalog, receiver
):
    catalog({"A": 20})
    receiver.modes["/slow"] = "hang"  # never answers while the test runs
    slow_id = register("slow", receiver.url + "/slow")
    for _ in range(3):
        new_order("slow")
    with unit_of_work() as s:
        claims = callbacks.claim_due(s, now=now(), limit=100, lease_s=60)
    threads, done = _deliver_in_threads(claims, {slow_id: (1.0, 0.5)})
    for t in threads:
        t.join(30)
    # The chunk gave up at its read timeout, before the receiver ever answered, and handed the
    # rest of its chunk back untried (attempts below).
    assert done == [slow_id] and not receiver.at("/slow") and receiver.hanging == 1
    slow = deliveries()
    assert sorted(d.attempts for d in slow) == [0, 0, 1]
    assert {d.status for d in slow} == {"PENDING"}
    assert "Timeout" in (next(d for d in slow if d.attempts).last_error or "")
