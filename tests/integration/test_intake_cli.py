"""``orderflow intake FILE.jsonl`` as a subprocess: a line that is not UTF-8 is one bad line (the
good ones are stored), and an unreachable database or broker is one readable line, no
traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import order_message
from tests.helpers import status_counts


def intake(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "intake", str(path)],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env},
    )  # fmt: skip


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_line_that_is_not_utf8_is_reported_and_good_lines_are_accepted(db, tmp_path):
    good = [json.dumps(order_message("A", 1)).encode() for _ in range(2)]
    latin1 = json.dumps(order_message("A", 1)).replace("Li Lei", "Jos\u00e9").encode("latin-1")
    path = write_lines(tmp_path / "orders.jsonl", [good[0], latin1, b"\xff\xfe", good[1]])
    run = intake(path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert "line 2: body: not valid UTF-8 (byte 0xe9 at column" in run.stdout
    assert "line 3: body: not valid UTF-8 (byte 0xff at column 1)" in run.stdout
    assert "accepted 2, already present 0, rejected 2" in run.stdout
    assert status_counts() == {"RECEIVED": 2}


def test_byte_order_mark_on_the_first_line_is_accepted(db, tmp_path):
    path = write_lines(
        tmp_path / "bom.jsonl", [b"\xef\xbb\xbf" + json.dumps(order_message()).encode()]
    )
    run = intake(path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "accepted 1," in run.stdout


def test_unreachable_database_is_one_line_and_a_failure(db, tmp_path):
    path = write_lines(tmp_path / "orders.jsonl", [json.dumps(order_message()).encode()])
    run = intake(path, DATABASE_URL="postgresql://postgres@127.0.0.1:1/nowhere")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    message = " ".join(run.stderr.split())  # one message (rich wraps it at the terminal width)
    assert message.startswith("error: database error at line 1 (OperationalError:"), message
    assert message.count("error:") == 1
    assert "127.0.0.1" in message and "run the same file again" in message
    assert status_counts() == {}


def test_unreachable_broker_is_one_line_and_the_orders_stay_stored(db, tmp_path):
    """The orders are committed before publishing: with the broker down they wait for the
    sweeper (their stage deadline), and the operator reads one line, not a traceback."""
    path = write_lines(tmp_path / "orders.jsonl", [json.dumps(order_message()).encode()])
    run = intake(path, BROKER_URL="redis://127.0.0.1:1/0")
    assert "Traceback" not in run.stdout + run.stderr, run.stdout + run.stderr
    assert "accepted 1," in run.stdout
    # Stored but not queued is not a clean run: say so and exit 1 (scripts notice).
    assert run.returncode == 1
    assert "1 stored orders not queued; the sweeper will process them" in " ".join(
        run.stdout.split()
    )
    message = " ".join(run.stderr.split())
    assert "publishing stopped after 0 tasks (broker unreachable: OperationalError:" in message
    assert "the sweeper will retry" in message
    assert status_counts() == {"RECEIVED": 1}
