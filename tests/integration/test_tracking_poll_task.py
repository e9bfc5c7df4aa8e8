"""The tracking poll task against a Kuaidi100 simulator over HTTP, with the real database and
Redis bucket: a chunk is safe to run again or twice at once (no waybill is queried twice), a
stale lease finds nothing, a recent push defers the fallback poll, and the bucket belongs to
the provider account."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from models import Shipment
from services.tracking import claim_due
from services.unit_of_work import unit_of_work
from tests.integration.tracking_support import get_shipment, make_order, make_shipment


@pytest.fixture
def k100(db, monkeypatch):
    """A Kuaidi100 simulator over HTTP whose per-number lock is longer than the test (any
    second query of a waybill is a throttle violation in its ledger), and the settings the
    poll task reads pointing at it. The task body runs in this process; the provider, the
    database and the Redis bucket are the real ones."""
    import secrets

    from adapters import registry
    from settings import get_settings
    from simulators.kuaidi100 import Kuaidi100Simulator
    from workers import ports

    key = secrets.token_hex(8)
    sim = Kuaidi100Simulator("K100TEST", key, time_scale=1.0, min_query_interval_s=600.0).start()
    env = {
        "KUAIDI100_QUERY_URL": f"{sim.url}/poll/query.do",
        "KUAIDI100_SUBSCRIBE_URL": f"{sim.url}/poll",
        "KUAIDI100_CUSTOMER": "K100TEST",
        "KUAIDI100_KEY": key,
        "KUAIDI100_CALLBACK_SALT": "salt",
        "TRACKING_MIN_INTERVAL_S": "600",
        "TRACKING_RATE_PER_S": "200",
        "TRACKING_BURST": "200",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    registry.reset()
    ports.tracking_quota.cache_clear()
    try:
        yield sim
    finally:
        sim.stop()
        get_settings.cache_clear()
        registry.reset()
        ports.tracking_quota.cache_clear()


def _due_fleet(sim, n: int, *, due: datetime) -> dict[int, str]:
    """n shipments due at ``due``, their waybills known to the simulator: id -> waybill."""
    fleet = {}
    for _ in range(n):
        waybill = "YT" + uuid.uuid4().hex[:12].upper()
        sim.register_waybill("yuantong", waybill, "normal")
        fleet[make_shipment(make_order("SHIPPED"), next_poll_at=due, waybill=waybill)] = waybill
    sim.advance(3 * 3600)  # the first scans are visible: a query finds a trace
    return fleet


def _claim(now: datetime, lease_s: float = 120.0) -> tuple[list[int], str]:
    from services.tracking import lease_expiry

    with unit_of_work() as s:
        ids = claim_due(s, now=now, limit=100, lease_s=lease_s, min_interval_s=600.0)
    return ids, lease_expiry(now, horizon_s=0.0, lease_s=lease_s).isoformat()


def _queries(sim, fleet: dict[int, str]) -> dict[str, int]:
    queries = sim.ledger()["queries"]
    return {w: queries.get(w, {}).get("count", 0) for w in fleet.values()}


def test_a_chunk_retried_partway_never_queries_a_waybill_twice(k100, monkeypatch):
    """The 4th member's record fails for a non-provider reason (a lost database connection):
    the task raises for a retry after three queries were recorded and a fourth sent. The retry
    queries only the four not yet sent; a redelivery after that queries nothing. The member
    whose outcome was lost is handed back, due once its minimum interval has passed."""
    import sqlalchemy.exc

    from services.tracking import poll as svc
    from tasks.tracking import poll

    fleet = _due_fleet(k100, 8, due=datetime.now(UTC) - timedelta(seconds=5))
    ids, token = _claim(datetime.now(UTC))
    assert sorted(ids) == sorted(fleet)
    real_record, calls = svc.record_poll, []

    def flaky_record(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 4:
            raise sqlalchemy.exc.OperationalError("UPDATE shipments", {}, Exception("conn lost"))
        return real_record(*args, **kwargs)

    monkeypatch.setattr(svc, "record_poll", flaky_record)
    with pytest.raises(sqlalchemy.exc.OperationalError):
        poll(ids, token)  # called directly, retry() re-raises the retryable error
    assert sorted(_queries(k100, fleet).values()) == [0] * 4 + [1] * 4
    lost = calls[3]

    assert poll(ids, token) == 4  # the retry: only the four never sent
    assert poll(ids, token) == 0  # a redelivery after that: nothing
    ledger = k100.ledger()
    assert _queries(k100, fleet) == {w: 1 for w in fleet.values()}
    assert ledger["throttle_violations"] == 0
    handed_back = get_shipment(lost)
    assert handed_back.lease_until is None and handed_back.last_polled_at is not None
    assert handed_back.next_poll_at >= handed_back.last_polled_at + timedelta(seconds=600)
    with unit_of_work() as s:
        leased = s.scalar(select(func.count()).where(Shipment.lease_until.is_not(None)))
        recorded = s.scalar(select(func.count()).where(Shipment.poll_failures == 0,
                                                       Shipment.status != "PENDING"))  # fmt: skip
    assert leased == 0 and recorded == 7  # the lost one's answer never landed


def test_a_chunk_delivered_after_its_lease_was_reclaimed_queries_nothing(k100):
    """A poll task that arrives after its lease expired and its shipments were claimed again
    (a long broker delay, a redelivery after the visibility timeout) finds none of them."""
    from tasks.tracking import poll

    now = datetime.now(UTC)
    fleet = _due_fleet(k100, 5, due=now - timedelta(seconds=60))
    ids, old_token = _claim(now - timedelta(seconds=30), lease_s=1.0)  # expired 29 s ago
    again, new_token = _claim(now)
    assert sorted(again) == sorted(ids) and new_token > old_token
    assert poll(ids, old_token) == 0
    assert _queries(k100, fleet) == {w: 0 for w in fleet.values()}
    assert poll(again, new_token) == 5
    assert poll(ids, old_token) == 0
    assert _queries(k100, fleet) == {w: 1 for w in fleet.values()}


def test_two_copies_of_a_chunk_at_once_query_each_waybill_once(k100):
    """An acks-late redelivery can run beside the original: the atomic take before each query
    lets exactly one of them query a waybill."""
    from tasks.tracking import poll

    k100.set_faults(latency_ms=30)  # both copies are mid-chunk together
    fleet = _due_fleet(k100, 12, due=datetime.now(UTC) - timedelta(seconds=5))
    ids, token = _claim(datetime.now(UTC))
    done: list[int] = []
    threads = [threading.Thread(target=lambda: done.append(poll(ids, token))) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sum(done) == 12, done
    assert _queries(k100, fleet) == {w: 1 for w in fleet.values()}
    assert k100.ledger()["throttle_violations"] == 0


def test_a_push_since_the_last_poll_defers_the_fallback_poll(k100):
    """Polling is the fallback: a shipment that got a push since its last poll is handed back,
    due one push-stretched interval after that push, and not queried."""
    from tasks.tracking import poll
    from workers.ports import tracking_config

    now = datetime.now(UTC)
    fleet = _due_fleet(k100, 2, due=now - timedelta(seconds=5))
    pushed, quiet = sorted(fleet)
    with unit_of_work() as s:
        s.execute(
            text("UPDATE shipments SET subscribed = true, last_push_at = :at, "
                 "last_polled_at = :polled WHERE id = :id"),
            {"at": now - timedelta(seconds=60), "polled": now - timedelta(hours=2), "id": pushed},
        )  # fmt: skip
    ids, token = _claim(now)
    assert poll(ids, token) == 1
    assert _queries(k100, fleet) == {fleet[pushed]: 0, fleet[quiet]: 1}
    deferred = get_shipment(pushed)
    c = tracking_config().cadence
    expected = c.new * c.push_multiplier  # PENDING, with pushes
    assert deferred.lease_until is None
    assert deferred.next_poll_at == now - timedelta(seconds=60) + timedelta(seconds=expected)


def test_the_bucket_belongs_to_the_provider_account(k100):
    from workers.ports import tracking_quota

    assert tracking_quota().key == "ratelimit:kuaidi100:K100TEST"
