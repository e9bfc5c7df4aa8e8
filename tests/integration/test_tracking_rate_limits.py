"""The Kuaidi100 token bucket on real Redis: concurrent threads never exceed the rate,
batches are all-or-nothing where asked, accounts do not share tokens, and a beat claiming
shipments while the provider is down polls only what the bucket grants.

The bucket refills by the Redis server's clock (``TIME`` inside its Lua script, on purpose: all
workers agree). A test that needs tokens minted moves the bucket's last refill back instead of
waiting; the throughput tests run for real time and judge their ceiling by the server's clock.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from adapters.ratelimit import TokenBucket
from models import Shipment
from services.tracking import claim_due, record_poll, release_lease
from services.unit_of_work import unit_of_work
from tests.conftest import redis_client
from tests.integration.tracking_support import CADENCE, MIN_INTERVAL


def _server_time() -> float:
    seconds, micros = redis_client().time()
    return seconds + micros / 1_000_000


def _rewind_last_refill(bucket: TokenBucket, seconds: float) -> None:
    """As if ``seconds`` had passed on the Redis server since the bucket's last refill: its
    ``ts`` moves back by that much, so the next take mints ``rate_per_s * seconds`` tokens."""
    bucket.client.hincrbyfloat(bucket.key, "ts", -seconds)


def test_token_bucket_concurrent_threads_never_exceed_rate(db):
    rate, burst, threads_n, duration = 50.0, 10, 8, 2.0
    granted = [0] * threads_n
    calls = [0] * threads_n
    go = threading.Barrier(threads_n + 1)
    stamps: list[float] = []

    def hammer(i: int) -> None:
        bucket = TokenBucket(redis_client(), "kuaidi100", rate_per_s=rate, burst=burst)
        go.wait()
        stamps.append(time.monotonic())
        while time.monotonic() - stamps[0] < duration:
            # half the threads take single tokens, half take batches
            got = int(bucket.try_acquire()) if i % 2 else bucket.reserve(3)
            granted[i] += got
            calls[i] += 1
        stamps.append(time.monotonic())

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(threads_n)]
    for th in threads:
        th.start()
    go.wait()
    for th in threads:
        th.join()
    elapsed = max(stamps) - min(stamps)
    total = sum(granted)
    ceiling = burst + rate * elapsed
    print(
        f"\n[token bucket] {threads_n} threads, {sum(calls)} calls in {elapsed:.2f} s: "
        f"{total} tokens granted, ceiling burst + rate x elapsed = {ceiling:.1f}"
    )
    assert total <= ceiling + 1  # +1: the calls bracketing the timing window
    assert total >= rate * elapsed * 0.8  # hammering gets (nearly) every token minted


def test_token_bucket_partial_reserve_all_or_nothing_and_expiry(db):
    client = redis_client()
    bucket = TokenBucket(client, "kuaidi100", rate_per_s=2.0, burst=5, account="acct-1")
    other = TokenBucket(client, "kuaidi100", rate_per_s=2.0, burst=5, account="acct-2")
    assert bucket.reserve(8) == 5  # a batch gets what there is
    assert bucket.reserve(3) == 0
    assert not bucket.try_acquire()
    assert other.try_acquire(5)  # accounts do not share tokens
    _rewind_last_refill(bucket, 1.1)  # 1.1 s later by the server's clock: ~2.2 tokens minted
    assert not bucket.try_acquire(3)  # all or nothing ...
    assert bucket.try_acquire(2)  # ... and the refusal took nothing
    ttl = client.pttl(bucket.key)
    assert 0 < ttl <= 3_600  # expires about when it would be full again (+1 s)
    with pytest.raises(ValueError):
        TokenBucket(client, "x", rate_per_s=0, burst=1)
    assert bucket.reserve(0) == 0


def test_rate_limited_claims_never_exceed_the_bucket(db):
    """300 shipments due while the provider is down; a beat claims batches, polls only what the
    bucket grants and hands the rest back. Real time, since the bucket runs on Redis's clock;
    the beats run back to back, so the bucket is hammered as hard as this process can."""
    rate, burst, n = 20.0, 5, 300
    with unit_of_work() as s:
        s.execute(
            text("""
            INSERT INTO orders (id, source, external_id, body_hash, status, currency,
                                total_amount, payment_provider, shipping_address)
            SELECT 'r-' || g, 'rl', 'r-' || g, 'h', 'IN_TRANSIT', 'CNY', 1, 'alipay', '{}'
            FROM generate_series(1, :n) g;
            INSERT INTO shipments (order_id, booking_key, carrier, waybill, status, next_poll_at)
            SELECT 'r-' || g, 'rb-' || g, 'zto', 'ZT' || lpad(g::text, 10, '0'), 'IN_TRANSIT',
                   now() - interval '1 minute'
            FROM generate_series(1, :n) g
            """),
            {"n": n},
        )
    bucket = TokenBucket(redis_client(), "kuaidi100", rate_per_s=rate, burst=burst)
    polled: list[tuple[int, float]] = []
    released = 0
    # The bucket refills by Redis server time, so its ceiling is judged by that clock too: a
    # wall-clock step on the machine moves both, while time.monotonic would not.
    server_start = _server_time()
    t_start = time.monotonic()
    while time.monotonic() - t_start < 1.5:
        now = datetime.now(UTC)
        with unit_of_work() as s:
            ids = claim_due(s, now=now, limit=50, lease_s=60, min_interval_s=MIN_INTERVAL)
        granted = bucket.reserve(len(ids))
        stamp = time.monotonic()
        with unit_of_work() as s:
            for sid in ids[:granted]:  # the provider is down: every query fails
                record_poll(s, sid, now=now, result=None, failed=True, cadence=CADENCE,
                            has_push=False, error="HTTP 502")  # fmt: skip
                polled.append((sid, stamp))
            release_lease(s, ids[granted:], now=now, retry_in_s=0.05)
            released += len(ids) - granted
    elapsed = max(time.monotonic() - t_start, _server_time() - server_start)
    ceiling = burst + rate * elapsed
    window = max(
        sum(1 for _, t in polled if a <= t < a + 1.0) for _, a in polled
    )  # busiest 1-second window
    print(
        f"\n[rate limit] {len(polled)} polls in {elapsed:.2f} s (ceiling {ceiling:.1f}); "
        f"busiest 1 s window {window} (ceiling {burst + rate:.0f}); {released} hand-backs"
    )
    assert 0 < len(polled) <= ceiling + 1
    assert window <= burst + rate + 1
    assert released > 0
    ids = [sid for sid, _ in polled]
    assert len(set(ids)) == len(ids)  # never twice within the minimum interval
    with unit_of_work() as s:
        rows = s.execute(
            select(
                Shipment.poll_failures, Shipment.last_polled_at.is_(None), func.count()
            ).group_by(Shipment.poll_failures, Shipment.last_polled_at.is_(None))
        ).all()
        counts = {(f, never): c for f, never, c in rows}
        assert counts.get((1, False), 0) == len(polled)  # polled: one failure recorded
        assert counts.get((0, True), 0) == n - len(polled)  # handed back: never polled
        assert s.scalar(select(func.count()).where(Shipment.lease_until.is_not(None))) == 0
        backoff = s.execute(
            select(func.min(Shipment.next_poll_at - Shipment.last_polled_at)).where(
                Shipment.poll_failures == 1
            )
        ).scalar_one()
        assert backoff == timedelta(seconds=CADENCE.error_base)
