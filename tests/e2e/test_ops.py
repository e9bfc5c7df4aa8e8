"""Operations: `orderflow doctor`, Flower behind basic auth, `orderflow up`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from tests.broker import broker_is_amqp, broker_is_redis, rabbitmq_management_reachable
from tests.conftest import wait_until

pytestmark = pytest.mark.e2e


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True,
                          text=True, timeout=120, env=env or dict(os.environ))  # fmt: skip


def test_doctor_all_green_on_a_running_pipeline(start_pipeline):
    p = start_pipeline()
    wait_until(lambda: cli("doctor").returncode == 0, 30, 1.0)
    run = cli("doctor")
    for name in ("database", "migrations", "broker", "workers", "beat", "providers"):
        assert any(line.startswith("ok") and name in line for line in run.stdout.splitlines()), (
            run.stdout
        )
    assert p.base_url


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


def _start_flower(procs) -> str:
    from cli.ops import flower_argv
    from workers.procs import free_port

    port = free_port()
    procs.start("flower", flower_argv(port, "ops:s3cret-test-only"))
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _answers(base), 60)
    return base


def test_flower_refuses_without_credentials(procs, services):
    base = _start_flower(procs)
    for path in ("/", "/workers", "/tasks", "/api/workers", "/api/tasks", "/broker"):
        assert requests.get(base + path, timeout=5).status_code == 401, path
    ok = requests.get(base + "/", auth=("ops", "s3cret-test-only"), timeout=10)
    assert ok.status_code == 200
    broker = requests.get(base + "/broker", auth=("ops", "s3cret-test-only"), timeout=30)
    assert broker.status_code == 200
    assert requests.get(base + "/", auth=("ops", "wrong"), timeout=5).status_code == 401


@pytest.mark.skipif(
    broker_is_amqp() and not rabbitmq_management_reachable(),
    reason="on RabbitMQ Flower reads the queues from the management plugin (port 15672), "
    "which this RabbitMQ does not run (`rabbitmq-plugins enable rabbitmq_management`)",
)
def test_flower_broker_page_lists_every_queue(procs, services):
    from workers.app import app
    from workers.broker import declare_task_queues, is_amqp

    if is_amqp(app.conf.broker_url):  # RabbitMQ lists existing queues only
        declare_task_queues(app.conf.broker_url, app.amqp.queues.values())
    base = _start_flower(procs)
    broker = requests.get(base + "/broker", auth=("ops", "s3cret-test-only"), timeout=30)
    assert broker.status_code == 200
    for queue in ("orders", "payments", "shipping", "tracking", "maintenance", "callbacks"):
        assert queue in broker.text, queue  # every queue is visible to the operator


def _answers(base: str) -> bool:
    try:
        requests.get(base, timeout=1)
        return True
    except requests.RequestException:
        return False


def test_up_starts_everything_and_stops_cleanly_on_sigint(services, tmp_path):
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
        time.sleep(3)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "stopped API, workers, beat and Flower" in out
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
