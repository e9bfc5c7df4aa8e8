"""``orderflow demo`` as a user runs it (a subprocess), on the test session's servers.

The demo gets a scratch database of its own (``--database``, dropped afterwards) and its own
metrics directory; it runs in a process group of its own so that everything it started can be
found, and must be gone, after it exits.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from sqlalchemy import create_engine, text

from settings import get_settings
from tests.conftest import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.configured]


@dataclass
class DemoRun:
    returncode: int
    stdout: str
    stderr: str
    descendants: list[psutil.Process]
    pgid: int


def run_demo(tmp_path: Path, *args: str, timeout_s: float = 240) -> DemoRun:
    """Run the demo to its end, sampling its descendants (pids) while it runs."""
    database = f"orderflow_demo_t{secrets.token_hex(4)}"
    env = {**os.environ, "COLUMNS": "200", "STATE_DIR": str(tmp_path / "state"),
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}  # fmt: skip
    out, err = (tmp_path / "demo.out").open("w+"), (tmp_path / "demo.err").open("w+")
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "demo", "--database", database, *args],
        env=env, stdout=out, stderr=err, text=True, start_new_session=True,
    )  # fmt: skip
    seen: dict[int, psutil.Process] = {}

    def finished() -> bool:
        """Whether the demo exited; until then, note every descendant running now."""
        try:
            for child in psutil.Process(proc.pid).children(recursive=True):
                seen.setdefault(child.pid, child)
        except psutil.Error:
            pass
        return proc.poll() is not None

    try:
        try:
            wait_until(finished, timeout_s - (time.monotonic() - started), 0.5)
        except AssertionError:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"demo still running after {timeout_s} s")
    finally:
        _drop_database(database)
    out.seek(0), err.seek(0)
    return DemoRun(proc.returncode, out.read(), err.read(), list(seen.values()), proc.pid)


def _drop_database(name: str) -> None:
    engine = create_engine(get_settings().database_url or "", isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


def assert_nothing_left(run: DemoRun) -> None:
    assert len(run.descendants) >= 5, "API, three workers and beat were never seen running"
    alive = [p for p in run.descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [p.cmdline() for p in alive]
    in_group = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == run.pgid:
                in_group.append(p.pid)
        except (ProcessLookupError, PermissionError):
            pass
    assert not in_group, in_group
    ports = re.search(r"API on port (\d+), simulators on ports ([\d, ]+)", run.stdout)
    assert ports, run.stdout
    numbers = [int(ports.group(1))] + [int(n) for n in ports.group(2).split(",")]
    assert len(numbers) >= 6  # the API and five simulators
    for port in numbers:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"


def rows(table_text: str) -> list[list[str]]:
    return [[c.strip() for c in line.split("│")[1:-1]]
            for line in table_text.splitlines() if line.startswith("│")]  # fmt: skip


def test_small_demo_shows_every_outcome_and_leaves_nothing_running(db, tmp_path):
    run = run_demo(tmp_path, "--orders", "40", "--payment-window", "5", "--concurrency", "8")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr
    outcome = run.stdout.split("outcome", 1)[1].split("parcels per warehouse", 1)[0]
    by_status: dict[str, set[str]] = {}
    reasons: set[str] = set()
    for status, reason, provider, count in rows(outcome):
        assert int(count) > 0
        by_status.setdefault(status, set()).add(provider)
        reasons.add(reason)
    assert by_status["COMPLETED"] == {"alipay", "wechatpay", "stripe"}
    # Each way an order is turned away: out of stock, inactive product, unknown SKU.
    assert {"out_of_stock", "inactive_product", "unknown_sku"} <= reasons, reasons
    assert {"REJECTED", "EXPIRED", "CANCELLED"} <= set(by_status)
    assert set(by_status) <= {"COMPLETED", "REJECTED", "EXPIRED", "CANCELLED"}
    checks = {r[0]: r[1] for r in rows(run.stdout.split("rates and checks", 1)[1]) if r[0]}
    assert checks["orders pushed"] == "40"
    assert checks["orders charged twice"] == "0"
    assert checks["stock counters vs ledger"] == "match"
    # Stock sits in two warehouses: both shipped parcels, and some order needed one from each.
    parcels = run.stdout.split("parcels per warehouse", 1)[1].split("returns and exchanges", 1)[0]
    booked = {w: (int(b), int(d)) for w, b, d in rows(parcels)}
    assert set(booked) == {"main", "east"}, booked
    assert all(b > 0 and d > 0 for b, d in booked.values()), booked
    assert int(checks.get("completed orders in 2 parcels", 0)) > 0, checks
    # After-sale: a few returns and exchanges, each settled (refunded or reshipped).
    after = run.stdout.split("returns and exchanges", 1)[1].split("rates and checks", 1)[0]
    settled = {(kind, status) for kind, status, n, _refunded in rows(after) if int(n) > 0}
    assert ("RETURN_AND_REFUND", "REFUNDED") in settled and ("EXCHANGE", "RESHIPPED") in settled
    assert settled <= {("RETURN_AND_REFUND", "REFUNDED"), ("EXCHANGE", "RESHIPPED")}, settled
    # Receipt: some customers confirmed it through the API, the clock received the rest.
    buyer, clock = (
        int(n) for n in checks["receipt confirmed by the buyer / by the clock"].split(" / ")
    )
    assert (
        buyer > 0
        and clock > 0
        and buyer + clock == int(checks["completed (delivered, received, window passed)"])
    )
    assert "stopped API, workers, beat and simulators" in run.stdout
    assert_nothing_left(run)


def test_a_stalled_demo_names_the_stuck_stage_and_stops(db, tmp_path):
    # Orders 13 and 19 are abandoned by their customers: with a 600 s payment window they wait
    # in AWAITING_PAYMENT long after the other 18 are final, and then nothing moves for 15 s.
    # However slowly a busy machine moves the others, that is where the demo stalls (15 s, not
    # less: an order shipped as two parcels waits for its second one's scans).
    run = run_demo(tmp_path, "--orders", "20", "--payment-window", "600", "--stall-after", "15")
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr
    message = " ".join(run.stderr.split())  # as one line, however the console wrapped it
    assert "no order changed status for 15 s with 2 of 20 orders not final" in message
    assert re.search(r"stuck at stage 'paid or closed': 2 AWAITING_PAYMENT\.", message), message
    assert "Traceback" not in message
    assert "stopped API, workers, beat and simulators" in run.stdout
    assert_nothing_left(run)
