"""A PostgreSQL connection gone silent (a partition) is dropped within DB_NETWORK_TIMEOUT_S."""

from __future__ import annotations

from models.db import network_timeouts


def test_every_wait_on_the_network_is_bounded_by_the_setting() -> None:
    opts = network_timeouts(15.0)
    assert opts["connect_timeout"] == 5
    assert opts["tcp_user_timeout"] == 15_000  # milliseconds, unacknowledged writes
    idle_detect = opts["keepalives_idle"] + opts["keepalives_interval"] * opts["keepalives_count"]
    assert opts["keepalives"] == 1 and idle_detect <= 15


def test_libpq_minimums_hold_for_short_settings() -> None:
    opts = network_timeouts(2.0)
    assert opts["connect_timeout"] == 2  # libpq treats less than 2 s as 2
    assert opts["keepalives_idle"] >= 1 and opts["keepalives_interval"] >= 1
