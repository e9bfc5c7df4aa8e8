"""Delivering a chunk of status callbacks (``services.callbacks.deliver``): which POSTs go
out, what each answer records, and what is handed back. Fake receiver, manual clock, no
database (see ``support.py``)."""

from __future__ import annotations

import pytest

from adapters.callbacks import PostResult
from services import callbacks
from services.callbacks import send as send_mod
from services.callbacks.delivery import DeliveryRequest
from tests.fakes import FakeSender, ManualClock
from tests.unit.steps.support import Store, ports

POLICY = callbacks.RetryPolicy(backoff_first_s=10, backoff_cap_s=60, pause_after=3)


def _request(delivery_id: int, **_: object) -> DeliveryRequest:
    return DeliveryRequest(delivery_id, 5, "https://shop.test/hook", b"{}", {"X-Sig": "s"})


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Store:
    store = Store(monkeypatch)
    store.replace(send_mod, "delivery_request", "record_attempt", "release")
    store.answers["delivery_request"] = _request
    store.answers["record_attempt"] = lambda did, ok, **kw: "DELIVERED" if ok else "PENDING"
    return store


def _attempts(store: Store) -> list[tuple[int, bool]]:
    return [(args[0], kw["ok"]) for n, args, kw in store.calls if n == "record_attempt"]


def test_every_delivery_of_a_healthy_receiver_is_posted_and_recorded(store):
    sender = FakeSender()
    outcome = callbacks.deliver([1, 2, 3], sender, ports(), policy=POLICY, budget_s=20)
    assert outcome == {"DELIVERED": 3}
    assert [url for url, _, _ in sender.sent] == ["https://shop.test/hook"] * 3
    assert _attempts(store) == [(1, True), (2, True), (3, True)]


def test_the_first_failure_records_it_and_hands_the_rest_back_untried(store):
    sender = FakeSender()
    sender.answers.extend([PostResult(True, 200), PostResult(False, 503, "HTTP 503")])
    outcome = callbacks.deliver([1, 2, 3, 4], sender, ports(), policy=POLICY, budget_s=20)
    assert outcome == {"DELIVERED": 1, "PENDING": 1, "released": 2}
    assert _attempts(store) == [(1, True), (2, False)]
    assert store.args_of("release")[0] == [3, 4]
    failed = next(kw for n, _, kw in store.calls if n == "record_attempt" and not kw["ok"])
    assert (failed["status_code"], failed["error"], failed["policy"]) == (503, "HTTP 503", POLICY)


def test_a_slow_receiver_costs_the_chunk_its_budget_not_more(store):
    clock = ManualClock()
    sender = FakeSender(clock, takes_s=8.0)  # each POST takes 8 s
    outcome = callbacks.deliver([1, 2, 3, 4, 5], sender, ports(clock), policy=POLICY,
                                budget_s=20)  # fmt: skip
    assert len(sender.sent) == 3  # at 0, 8 and 16 s; at 24 s the budget is spent
    assert outcome == {"DELIVERED": 3, "released": 2}
    assert store.args_of("release")[0] == [4, 5]
    assert [kw["duration_ms"] for n, _, kw in store.calls if n == "record_attempt"] == [8000] * 3


def test_a_delivery_no_longer_due_is_skipped_without_a_post(store):
    store.answers["delivery_request"] = lambda did, **kw: None if did == 2 else _request(did)
    sender = FakeSender()
    outcome = callbacks.deliver([1, 2, 3], sender, ports(), policy=POLICY, budget_s=20)
    assert outcome == {"DELIVERED": 2, "skipped": 1} and len(sender.sent) == 2


# -- what a failure leads to (``RetryPolicy.after_failure``) -----------------------------------


def test_a_failure_retries_later_each_time_up_to_the_cap():
    policy = callbacks.RetryPolicy(backoff_first_s=10, backoff_cap_s=60, max_attempts=20)
    delays = [policy.after_failure(n, 1).retry_in_s for n in range(1, 8)]
    assert all(d is not None for d in delays)
    assert 5 <= delays[0] <= 10  # equal jitter: half the ceiling, plus up to half again
    assert all(30 <= d <= 60 for d in delays[3:])  # capped


def test_the_last_attempt_gives_up_and_the_endpoint_pauses_after_its_run_of_failures():
    policy = callbacks.RetryPolicy(pause_after=3, max_attempts=4)
    assert policy.after_failure(3, 2).retry_in_s is not None
    assert policy.after_failure(4, 2).retry_in_s is None  # FAILED: a resend revives it
    assert not policy.after_failure(1, 2).pause_endpoint
    assert policy.after_failure(1, 3).pause_endpoint
    gate = policy.after_failure(1, 3).gate_s
    assert policy.backoff_first_s <= gate <= policy.backoff_cap_s
