"""PostgreSQL crashes (immediate stop, no checkpoint) mid-run and comes back after a few seconds.

The scenario runs on a private PostgreSQL (pgserver's binaries, its own data directory), so the
crash touches nothing else on the machine. While it is down the API answers 503 and clients
resend; workers' tasks fail on the connection and retry; pooled connections are re-checked
(``pool_pre_ping``). Afterwards every accepted order completes its journey."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import order_message, wait_until
from tests.helpers import pipeline_state, status_counts
from tests.reliability.conftest import size
from tests.reliability.invariants import check

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]
PROVIDERS = ("alipay", "wechatpay", "stripe")


class PrivatePostgres:
    def __init__(self, server) -> None:
        self.server = server

    def crash(self) -> None:
        """Immediate shutdown: what a power cut or an OOM kill of the postmaster leaves."""
        from pgserver._commands import pg_ctl

        pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self.server.pgdata,
               user=self.server.system_user, timeout=60)  # fmt: skip

    def start(self) -> None:
        from pgserver._commands import pg_ctl

        # restart on a stopped server starts it with the options it last ran with
        pg_ctl(["-w", "restart"], pgdata=self.server.pgdata, user=self.server.system_user,
               timeout=60)  # fmt: skip


@pytest.fixture
def private_postgres(db, monkeypatch) -> Iterator[PrivatePostgres]:
    """A PostgreSQL of this test's own, migrated, and exported as DATABASE_URL."""
    from sqlalchemy import create_engine, text

    from models.db import dispose_engine
    from models.migrate import upgrade
    from settings import get_settings
    from workers.embedded import import_pgserver

    root = Path(tempfile.mkdtemp(prefix="orderflow-pgcrash-"))
    os.chmod(root, 0o755)  # pgserver runs postgres as its own user when we are root
    server = import_pgserver().get_server(root / "pg", cleanup_mode="stop")
    url = "postgresql+psycopg2://" + server.get_uri().removeprefix("postgresql://")
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("CREATE DATABASE orderflow"))
    admin.dispose()
    monkeypatch.setenv("DATABASE_URL", url.replace("/postgres?", "/orderflow?"))
    get_settings.cache_clear()
    dispose_engine()
    upgrade()
    try:
        yield PrivatePostgres(server)
    finally:
        dispose_engine()
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)
        monkeypatch.undo()
        get_settings.cache_clear()


def test_postgres_crashes_mid_run_and_comes_back(
    private_postgres, start_pipeline, catalog, figures
):
    n = size(90, 300)
    catalog({"G": n})
    p = start_pipeline(shipping=True)
    p.stack.auto_pay(200)
    rng = random.Random(29)
    messages = [order_message("G", 1, provider=rng.choice(PROVIDERS)) for _ in range(n)]
    accepted: list[str] = []
    answers: Counter[int] = Counter()
    unexpected: list[str] = []

    def client() -> None:
        """Sends orders at a steady pace; resends one until the API acknowledges it."""
        session = requests.Session()
        for msg in messages:
            while True:
                try:
                    r = session.post(f"{p.base_url}/v1/orders", json=msg, timeout=10,
                                     headers={"X-API-Key": p.api_key})  # fmt: skip
                except requests.RequestException:
                    answers[0] += 1
                    time.sleep(0.2)
                    continue
                answers[r.status_code] += 1
                if r.status_code in (200, 202):
                    accepted.append(r.json()["id"])
                    break
                if r.status_code != 503:  # down must mean a clear "try again", never a 500
                    unexpected.append(f"{r.status_code} {r.text[:200]}")
                    return
                time.sleep(0.2)
            time.sleep(0.05)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    wait_until(lambda: len(accepted) >= n // 3 or not thread.is_alive(), 120, 0.1,
               show=lambda: {"accepted": len(accepted), "answers": dict(answers)})  # fmt: skip
    assert not unexpected, unexpected
    fig = figures()
    workers = [w for w in p.procs.procs if w.name in ("orders", "payments", "shipping")]
    logged = {w.name: w.log_path.stat().st_size for w in workers if w.log_path is not None}
    refused = answers[503] + answers[0]
    private_postgres.crash()
    fig.injected("PostgreSQL stopped -m immediate (crash) mid-run, started again once the API "
                 "had turned a client away and a worker task had failed on it",
                 accepted_at_crash=len(accepted))  # fmt: skip

    def retried_since_crash(w) -> bool:
        with w.log_path.open("rb") as log:
            log.seek(logged[w.name])
            return b"retrying after" in log.read()

    def outage_felt() -> bool:
        """The API answered the client 503 (or nothing), and a worker task met the dead
        database and is retrying (tasks/base.py logs "task ... retrying after ...")."""
        turned_away = answers[503] + answers[0] > refused or not thread.is_alive()
        return turned_away and any(retried_since_crash(w) for w in workers if w.name in logged)

    wait_until(outage_felt, 60, 0.1,
               show=lambda: {"accepted": len(accepted), "answers": dict(answers)})  # fmt: skip
    private_postgres.start()
    wait_until(lambda: not thread.is_alive(), 120, 0.2,
               show=lambda: {"accepted": len(accepted), "answers": dict(answers)})  # fmt: skip
    assert not unexpected, unexpected
    assert len(accepted) == n

    def stragglers() -> dict:
        """Where the orders that did not complete got to, with their timelines."""
        odd = [o for o in accepted if p.get_order(o)["status"] != "COMPLETED"][:2]
        timelines = [
            [(e["kind"], e.get("to"), str(e.get("detail"))[:160]) for e in view["timeline"]]
            for view in (p.get_order(o) for o in odd)
        ]
        return {"state": pipeline_state(), "timelines": timelines}

    wait_until(lambda: status_counts() == {"COMPLETED": n}, 150, 0.5, show=stragglers)
    verdict = check(accepted, p.stack)
    assert verdict["charges"] == n
    fig.recovered(verdict, api_answers=dict(answers))
