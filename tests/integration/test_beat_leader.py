"""Beat's leader lease (workers/beat.py) on a real Redis: one holder at a time, renewed by its
holder, taken over once the holder goes silent, and never claimed without Redis."""

from __future__ import annotations

import redis

from tests.conftest import redis_client, wait_until
from workers.beat import Lease


def test_one_beat_leads_and_the_other_takes_over_when_it_goes_silent(services) -> None:
    client = redis_client()
    key = "test:beat:leader"
    client.delete(key)
    first, second = Lease(client, 0.5, key), Lease(client, 0.5, key)
    try:
        assert first.hold() and not second.hold()
        assert first.hold(), "the holder renews its own lease"
        assert client.get(key) == first.owner.encode()
        # The first beat stops ticking (crashed, cut off): its lease runs out by Redis's clock.
        assert wait_until(second.hold, timeout_s=10, every_s=0.1)
        assert not first.hold(), "the old leader must not take it back while the new one holds it"
    finally:
        client.delete(key)
        client.close()


def test_a_beat_that_stops_gives_the_lease_to_the_next_at_once(services) -> None:
    client = redis_client()
    key = "test:beat:release"
    client.delete(key)
    try:
        old, new = Lease(client, 60.0, key), Lease(client, 60.0, key)
        assert old.hold() and not new.hold()
        new.release()  # not the holder: changes nothing
        assert client.get(key) == old.owner.encode()
        old.release()  # beat stopping
        assert new.hold(), "the next beat leads without waiting out the 60 s lease"
    finally:
        client.delete(key)
        client.close()


def test_without_redis_no_beat_counts_as_leader() -> None:
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    assert Lease(unreachable, 5.0).hold() is False


def test_a_lease_of_zero_lets_every_beat_send() -> None:
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    assert Lease(unreachable, 0.0).hold() is True  # no Redis call at all
