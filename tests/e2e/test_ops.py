"""Operations: `orderflow doctor`, Flower behind basic auth, `orderflow up`."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.broker import broker_is_amqp, broker_is_redis, rabbitmq_management_reachable
from tests.conftest import wait_until

pytestmark = pytest.mark.e2e


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True,
                          text=True, timeout=120, env=env or dict(os.environ))  # fmt: skip


@pytest.mark.broker
def test_doctor_names_a_queue_without_consumer_then_all_green(start_pipeline):
    from workers.procs import wait_worker_ready

    p = start_pipeline(shipping=True)  # every queue but callbacks has a worker
    wide = {**os.environ, "COLUMNS": "250"}
    run = cli("doctor", env=wide)
    assert run.returncode == 1
    workers = next(line for line in run.stdout.splitlines() if "workers" in line)
    assert workers.startswith("FAIL") and "no worker consumes queue callbacks (" in workers
    wait_worker_ready(p.procs.worker("callbacks", "callbacks", concurrency=2, pool="threads"))
    wait_until(lambda: cli("doctor").returncode == 0, 30, 1.0)
    run = cli("doctor", env=wide)
    for name in ("database", "migrations", "broker", "workers", "beat", "providers"):
        assert any(line.startswith("ok") and name in line for line in run.stdout.splitlines()), (
            run.stdout
        )
    assert "callbacks 1" in run.stdout and "shipping 1" in run.stdout


@pytest.mark.broker
def test_doctor_fails_clearly_when_the_broker_is_down(db):
    from workers.procs import free_port

    dead = free_port()
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{dead}/0"}
    if not broker_is_redis():  # e.g. RabbitMQ: the broker is its own server
        env["BROKER_URL"] = f"amqp://guest:guest@127.0.0.1:{dead}//"
    run = cli("doctor", env=env)
    assert run.returncode == 1
    broker = next(line for line in run.stdout.splitlines() if "broker" in line)
    assert broker.startswith("FAIL")
    assert "Traceback" not in run.stdout + run.stderr


FLOWER_AUTH = ("ops", "s3cret-test-only")


def _start_flower(procs) -> str:
    from workers.procs import free_port

    port = free_port()
    procs.flower(port, ":".join(FLOWER_AUTH))  # python -m workers.flower, auth in its env
    return f"http://127.0.0.1:{port}"


# Every kind of handler: pages, the JSON API, and /metrics and /healthcheck, which Flower 2.x
# itself leaves open even with --basic-auth (workers.flower closes them).
FLOWER_PATHS = ("/", "/workers", "/tasks", "/api/workers", "/api/tasks", "/broker", "/metrics",
                "/healthcheck", "/static/css/flower.css")  # fmt: skip


@pytest.mark.broker
def test_flower_refuses_without_credentials(procs, services):
    import psutil

    base = _start_flower(procs)
    for path in FLOWER_PATHS:
        assert requests.get(base + path, timeout=5).status_code == 401, path
        assert requests.get(base + path, auth=("ops", "wrong"), timeout=5).status_code == 401, path
    for path in FLOWER_PATHS:
        ok = requests.get(base + path, auth=FLOWER_AUTH, timeout=30)
        assert ok.status_code == 200, path
    assert requests.post(base + "/api/worker/shutdown/x", timeout=5).status_code == 401
    assert requests.get(base + "/no-such-page", timeout=5).status_code == 401
    assert requests.get(base + "/healthcheck", auth=FLOWER_AUTH, timeout=5).text == "OK"
    assert "flower_events_total" in requests.get(base + "/metrics", auth=FLOWER_AUTH).text
    # The password is not on Flower's command line, where `ps` shows it to every user.
    flower = procs.procs[-1]
    assert FLOWER_AUTH[1] not in " ".join(psutil.Process(flower.pid).cmdline())


def test_flower_launcher_refuses_to_start_without_credentials():
    env = {k: v for k, v in os.environ.items() if k != "FLOWER_BASIC_AUTH"}
    run = subprocess.run([sys.executable, "-m", "workers.flower", "--port=1"], capture_output=True,
                         text=True, timeout=60, env=env)  # fmt: skip
    assert run.returncode == 2
    assert "FLOWER_BASIC_AUTH" in run.stderr
    leaky = subprocess.run([sys.executable, "-m", "workers.flower", "--basic-auth=a:b"],
                           capture_output=True, text=True, timeout=60,
                           env={**env, "FLOWER_BASIC_AUTH": "a:b"})  # fmt: skip
    assert leaky.returncode == 2  # credentials on the command line are refused


@pytest.mark.skipif(
    broker_is_amqp() and not rabbitmq_management_reachable(),
    reason="on RabbitMQ Flower reads the queues from the management plugin (port 15672), "
    "which this RabbitMQ does not run (`rabbitmq-plugins enable rabbitmq_management`)",
)
@pytest.mark.broker
def test_flower_broker_page_lists_every_queue(procs, services):
    from workers.app import app
    from workers.broker import declare_task_queues, is_amqp

    if is_amqp(app.conf.broker_url):  # RabbitMQ lists existing queues only
        declare_task_queues(app.conf.broker_url, app.amqp.queues.values())
    base = _start_flower(procs)
    broker = requests.get(base + "/broker", auth=FLOWER_AUTH, timeout=30)
    assert broker.status_code == 200
    for queue in ("orders", "payments", "shipping", "tracking", "maintenance", "callbacks"):
        assert queue in broker.text, queue  # every queue is visible to the operator


def _answers(base: str) -> bool:
    try:
        requests.get(base, timeout=1)
        return True
    except requests.RequestException:
        return False


def _up_running(log_dir: Path) -> bool:
    """Every worker `up` starts logged that it is ready to consume, and beat that it started."""
    from cli.ops import WORKERS

    def logged(name: str, needle: bytes) -> bool:
        path = log_dir / f"{name}.log"
        return path.exists() and needle in path.read_bytes()

    return all(logged(name, b" ready.") for name, *_ in WORKERS) and logged(
        "beat", b"beat: Starting"
    )


def _stop_tree(proc: subprocess.Popen[str], children: list) -> None:
    """Kill `up` and everything it started, if a failed test left them running: orphaned
    workers and beat would go on consuming this session's queues and change its database."""
    import psutil

    for p in [*children, proc]:
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            p.kill()


@pytest.mark.configured
def test_up_starts_everything_and_stops_cleanly_on_sigint(db, tmp_path):
    import psutil

    from workers.procs import free_port

    api_port, flower_port = free_port(), free_port()
    env = {**os.environ, "FLOWER_BASIC_AUTH": "ops:up-test-only", "STATE_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "up", "--api-port", str(api_port),
         "--flower-port", str(flower_port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{api_port}/healthz"), 90)
        wait_until(lambda: _answers(f"http://127.0.0.1:{flower_port}"), 90)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 7  # api, 4 workers (+ their pool children), beat, flower
        # Everything is running before Ctrl-C: every worker ready to consume, beat scheduling.
        logs = tmp_path / "up-logs"
        wait_until(lambda: _up_running(logs), 90, show=lambda: sorted(logs.glob("*.log")))
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=150)  # up to 10 s grace per process it stops
    finally:
        if proc.poll() is None:
            _stop_tree(proc, psutil.Process(proc.pid).children(recursive=True))
    assert proc.returncode == 0, out
    assert "stopped API, workers, beat and Flower" in out
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def test_orders_show_prints_the_timeline_of_a_real_order(start_pipeline, catalog):
    """A Stripe order whose first create failed (one retry), paid, shipped and tracked."""
    import json

    from pydantic import SecretStr

    from services import callbacks
    from services.unit_of_work import unit_of_work
    from tests.conftest import order_message
    from tests.integration.callbacks_support import cipher

    catalog({"T": 5})
    with unit_of_work() as s:  # nobody listens there: the deliveries stay PENDING
        callbacks.register_endpoint(
            s, "web", "http://127.0.0.1:9/hook", SecretStr("s" * 20), cipher=cipher()
        )
    p = start_pipeline(shipping=True)
    p.stack.set_faults(error_rate=1.0)  # the first create fails: the task retries

    def calls(oid: str) -> list[dict]:
        return [e["detail"] for e in p.get_order(oid)["timeline"] if e["kind"] == "provider_call"]

    oid = p.post_order(order_message("T", 1, provider="stripe"))
    wait_until(lambda: any(c["outcome"].startswith("unavailable") for c in calls(oid)), 60)
    p.stack.set_faults(error_rate=0.0)
    wait_until(lambda: p.get_order(oid)["status"] == "AWAITING_PAYMENT", 60)
    p.stack.pay("stripe", oid.replace("-", ""))
    wait_until(lambda: p.get_order(oid)["status"] == "COMPLETED", 90)

    run = cli("orders", "show", oid, env={**os.environ, "COLUMNS": "250"})
    assert run.returncode == 0, run.stderr
    out = run.stdout
    for pair in ("→ RECEIVED", "RECEIVED → RESERVED", "RESERVED → AWAITING_PAYMENT",
                 "AWAITING_PAYMENT → PAID", "PAID → SHIPPED", "DELIVERED → RECEIPT_CONFIRMED",
                 "RECEIPT_CONFIRMED → COMPLETED"):  # fmt: skip
        assert pair in out, pair
    # The in-line create (in the orders task) failed: handed to payments.create, which made it.
    assert re.search(r"orders\.(process|reserve_batch)", out) and "on orders@" in out
    assert "payments.create" in out and "on payments@" in out
    assert re.search(r"stripe create \[\d+ ms\]: unavailable", out)
    assert re.search(r"stripe create \[\d+ ms\]: ok", out)
    assert re.search(r"warehouse book \[\d+ ms\]: ok", out)
    assert '"***"' in out  # the recipient, redacted
    assert "Li Lei" not in out and "138 0000" not in out
    assert any(line.count("notification") and "stripe" in line for line in out.splitlines())
    assert "status callbacks to web" in out and "PENDING" in out
    as_json = cli("orders", "show", oid, "--json")
    assert as_json.returncode == 0, as_json.stderr
    view = json.loads(as_json.stdout)
    assert view["status"] == "COMPLETED"
    kinds = [c["event_type"] for c in view["callbacks"]]
    assert kinds.count("order.status_changed") == 9  # RECEIVED … RECEIPT_CONFIRMED, COMPLETED
    # The parcel's moves that left the order where it was, each naming the parcel.
    (parcel,) = view["parcels"]
    told = [c["parcel"] for c in view["callbacks"] if c["event_type"] == "order.parcel_updated"]
    assert told and all(t.startswith(f"parcel {parcel['id']} (") for t in told), told


def test_doctor_fails_clearly_on_migrations_beat_and_providers(db):
    """A database never migrated, no sweep heartbeat, and a configured provider nobody answers
    for: each is its own FAIL line that says what to do, and the exit code is 1."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from models.migrate import head_revision
    from services.sweeper import HEARTBEAT_KEY
    from settings import get_settings
    from tests.conftest import redis_client
    from workers.procs import free_port

    base = make_url(get_settings().database_url or "")
    blank = f"orderflow_doctor_{os.getpid()}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{blank}"'))
    client = redis_client()
    client.delete(HEARTBEAT_KEY)
    client.close()
    env = {
        **os.environ,
        "COLUMNS": "250",
        "DATABASE_URL": base.set(database=blank).render_as_string(hide_password=False),
        "STRIPE_SECRET_KEY": "sk_test_doctor_only",
        "STRIPE_API_BASE": f"http://127.0.0.1:{free_port()}",  # nothing listens there
    }
    try:
        run = cli("doctor", env=env)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{blank}" WITH (FORCE)'))
        admin.dispose()
    lines = {line.split()[1]: line for line in run.stdout.splitlines() if line.split()[1:]}
    assert run.returncode == 1, run.stdout
    assert lines["database"].startswith("ok"), run.stdout  # reachable: only its schema is behind
    assert lines["migrations"].startswith("FAIL"), run.stdout
    assert f"head is {head_revision()}" in lines["migrations"]
    assert "orderflow db upgrade" in lines["migrations"]
    assert lines["beat"].startswith("FAIL") and "is beat running" in lines["beat"], run.stdout
    assert lines["providers"].startswith("FAIL"), run.stdout
    assert "unreachable: stripe (ConnectionError)" in lines["providers"]
    assert "sk_test_doctor_only" not in run.stdout + run.stderr  # the key is never printed
    assert "Traceback" not in run.stdout + run.stderr


@pytest.mark.configured
def test_up_stops_everything_and_exits_1_when_a_process_dies(db, tmp_path):
    """A dead beat under `orderflow up` is not a healthy stack: up says which process died,
    stops the rest and exits 1 (a supervisor then restarts the whole set)."""
    import psutil

    from workers.procs import free_port

    api_port, flower_port = free_port(), free_port()
    env = {**os.environ, "FLOWER_BASIC_AUTH": "ops:up-test-only", "STATE_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "up", "--api-port", str(api_port),
         "--flower-port", str(flower_port), "--no-simulators"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{flower_port}"), 90)
        children = psutil.Process(proc.pid).children(recursive=True)
        (beat,) = [c for c in psutil.Process(proc.pid).children() if "beat" in c.cmdline()]
        beat.kill()
        out, _ = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            _stop_tree(proc, psutil.Process(proc.pid).children(recursive=True))
    assert proc.returncode == 1, out
    assert "stopped unexpectedly: beat" in out
    assert "Traceback" not in out
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
