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


def test_the_server_probes_the_client_too() -> None:
    """A client cut off mid-transaction holds its locks until the server notices it is gone:
    the session's own keepalives make the server notice within the setting."""
    options = str(network_timeouts(15.0)["options"])
    settings = dict(part.split("=") for part in options.split(" -c ") if "=" in part)
    settings = {k.removeprefix("-c "): int(v) for k, v in settings.items()}
    detect = (settings["tcp_keepalives_idle"]
              + settings["tcp_keepalives_interval"] * settings["tcp_keepalives_count"])  # fmt: skip
    assert detect <= 15, settings
    assert settings["tcp_user_timeout"] == 15_000  # unacknowledged data, which is never probed


def test_options_of_the_database_url_are_kept() -> None:
    from models.db import _url_options

    url = "postgresql://u@db/orderflow?options=-c%20statement_timeout%3D5000"
    options = str(network_timeouts(15.0, _url_options(url))["options"])
    assert options.startswith("-c statement_timeout=5000 -c tcp_keepalives_idle=5")
    assert _url_options("postgresql://u@db/orderflow") is None


def test_a_network_timeout_past_the_soft_time_limit_is_refused() -> None:
    import pytest
    from pydantic import ValidationError

    from settings import Settings

    with pytest.raises(ValidationError, match=r"DB_NETWORK_TIMEOUT_S \(30\) must be below "
                                              r"TASK_SOFT_TIME_LIMIT_S \(30\)"):  # fmt: skip
        Settings(db_network_timeout_s=30, task_soft_time_limit_s=30)
    assert Settings(db_network_timeout_s=6, task_soft_time_limit_s=10).db_network_timeout_s == 6
