"""The flash-sale bench phase, short form: ``python -m bench.run --quick --phases flashsale``.

It runs as ``make bench`` would, in a process of its own, on this session's servers: the bench
creates its own throw-away database (``orderflow_bench_<its pid>_<hex>``, never this session's
``orderflow_test_*``) and uses this session's Redis db, which the ``db`` fixture flushed and
nothing else in this test uses meanwhile. 1,000 orders from 16 clients meet back-pressure
(INTAKE_MAX_WAIT_S=5 in the quick sale), so the 429 + Retry-After path runs too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from settings import PROJECT_ROOT

pytestmark = pytest.mark.e2e

MUST_BE_ZERO = ("5xx", "lost", "oversold", "NEEDS_ATTENTION")


def test_quick_flash_sale_loses_nothing_and_oversells_nothing(db, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--phases", "flashsale",
         "--output", str(out)],
        cwd=PROJECT_ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=170,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    figures = {f["figure"]: f for f in json.loads(out.read_text())}
    for name in MUST_BE_ZERO:
        assert figures[f"flash sale {name}"]["value"] == 0, figures[f"flash sale {name}"]
    accepted = figures["flash sale accepted"]
    assert accepted["value"] > 0
    assert accepted["configuration"].startswith("1,000 accepted;"), accepted["configuration"]
    assert "REJECTED" in accepted["configuration"]  # stock for half: the sale sold out
    assert figures["flash sale time to drain"]["value"] > 0
    assert figures["flash sale intake -> RESERVED p99"]["value"] > 0
    assert "flash sale refused (429)" in figures
