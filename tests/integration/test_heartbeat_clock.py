"""The sweep heartbeat is judged by one clock, Redis's (issue 23: hosts' clocks differ): a
worker host 90 s ahead stamps it, a doctor 90 s behind reads it, and the age is still true."""

from __future__ import annotations

import re
import time

from cli.ops import _beat
from services.sweeper import HEARTBEAT_KEY, stamp_heartbeat
from tests.conftest import redis_client


def test_a_heartbeat_stamped_ahead_reads_fresh_from_a_host_behind(services, monkeypatch):
    client = redis_client()
    real = time.time
    try:
        client.delete(HEARTBEAT_KEY)
        monkeypatch.setattr(time, "time", lambda: real() + 90)  # the maintenance worker's host
        stamp_heartbeat(client)
        monkeypatch.setattr(time, "time", lambda: real() - 90)  # the host running the doctor
        said = _beat()
        age = float(re.fullmatch(r"last sweep (-?[\d.]+) s ago", said).group(1))  # type: ignore[union-attr]
        assert 0 <= age < 5, said
    finally:
        client.delete(HEARTBEAT_KEY)
        client.close()
