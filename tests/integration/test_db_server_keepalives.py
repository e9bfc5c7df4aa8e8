"""The server's end of a PostgreSQL session probes its client (models.db.network_timeouts): a
client cut off mid-transaction loses its session, and its locks, within DB_NETWORK_TIMEOUT_S.
tests/cluster cuts a host off to show the locks come free; this checks the server took the
settings. Over TCP only: PostgreSQL ignores keepalives on a Unix socket (the embedded server)."""

from __future__ import annotations

import pytest
from sqlalchemy import make_url, text

from models.db import get_engine, network_timeouts
from settings import get_settings


@pytest.mark.configured  # CI's second run, on the machine's PostgreSQL over TCP
def test_the_server_session_takes_the_keepalive_settings(services) -> None:
    settings = get_settings()
    if not make_url(settings.database_url).host:
        pytest.skip("a Unix socket: PostgreSQL reads its keepalive settings as 0 there")
    options = str(network_timeouts(settings.db_network_timeout_s)["options"])
    wanted = dict(part.removeprefix("-c ").split("=") for part in options.split(" -c "))
    with get_engine().connect() as conn:
        rows = conn.execute(
            text("SELECT name, setting FROM pg_settings WHERE name = ANY(:names)"),
            {"names": list(wanted)},
        )
        shown = dict(rows.tuples().all())
    assert shown == wanted  # pg_settings shows each in its base unit, as set: s, s, -, ms
