"""RabbitMQ as the Celery broker, against this machine's RabbitMQ (skipped when unreachable):
an accepted order is in a quorum queue, a retry's countdown waits in RabbitMQ (native delayed
delivery) and comes back, and ``orderflow doctor`` names a queue declared with other arguments.

Each test works in a vhost of its own (``rabbitmqctl add_vhost``), deleted afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest
from amqp.exceptions import PreconditionFailed
from celery import Celery
from kombu import Connection, Exchange, Queue

from producers.client import OrderProducer
from tests.broker import rabbitmqctl
from tests.conftest import order_message, wait_until
from workers.broker import producer_options, queue_depths
from workers.embedded import exported_env


def queue_types(vhost: str) -> dict[str, str]:
    run = rabbitmqctl("list_queues", "-p", vhost, "name", "type", "--no-table-headers")
    assert run is not None and run.returncode == 0, run
    return dict(line.split("\t")[:2] for line in run.stdout.splitlines() if "\t" in line)


def test_an_accepted_order_is_in_a_quorum_queue(rabbit: tuple[str, str]) -> None:
    vhost, url = rabbit
    with OrderProducer(url) as producer:  # publisher confirms: send() returns once stored
        producer.send(order_message("A", 1))
    assert queue_depths(url, ["orders"]) == {"orders": 1}
    assert queue_types(vhost)["orders"] == "quorum"
    # RabbitMQ itself refuses to see it as anything else.
    with Connection(url) as conn:
        classic = Queue("orders", Exchange("orders", type="topic"), routing_key="orders",
                        queue_arguments={"x-queue-type": "classic"})  # fmt: skip
        with pytest.raises(PreconditionFailed, match="x-queue-type"):
            classic.bind(conn.channel()).declare()


def test_retry_countdown_waits_in_rabbitmq_and_comes_back(
    rabbit: tuple[str, str], procs, services, tmp_path: Path
) -> None:
    from workers.procs import wait_worker_ready

    vhost, url = rabbit
    marker = tmp_path / "runs.txt"
    with exported_env({"BROKER_URL": url}):
        worker = procs.worker("rabbit", "orders", concurrency=1,
                              app="tests.integration.rabbit_app")  # fmt: skip
        wait_worker_ready(worker)
    sender = Celery("sender", broker=url)
    sender.conf.update(task_serializer="json", **producer_options(url))
    sender.send_task("orders.retry_probe", args=[str(marker), 2], queue="orders")
    sender.close()

    def runs() -> list[list[str]]:
        return [line.split() for line in marker.read_text().splitlines()] if marker.exists() else []

    wait_until(lambda: len(runs()) == 3, 60, show=lambda: (runs(), worker.log_tail()))
    times = [float(r[0]) for r in runs()]
    assert [int(r[1]) for r in runs()] == [0, 1, 2]
    # Each retry waited its (whole-second) countdown in RabbitMQ's delayed-delivery queues and
    # came back with their routing-key prefix; the worker never held it.
    assert all(b - a >= 0.9 for a, b in pairwise(times)), times
    assert runs()[0][2] == "orders"
    assert all(r[2].startswith("0.") and r[2].endswith(".orders") for r in runs()[1:]), runs()
    log = worker.log_path.read_text() if worker.log_path else ""
    assert "Failed to bind queue" not in log and "delayed delivery will not" not in log
    assert queue_types(vhost)["celery_delayed_0"] == "quorum"


def test_doctor_names_a_queue_declared_with_other_arguments(rabbit: tuple[str, str], db) -> None:
    _vhost, url = rabbit
    with Connection(url) as conn:  # e.g. a classic queue left by a setup before quorum queues
        Queue("orders", Exchange("orders", type="topic"), routing_key="orders").bind(
            conn.channel()
        ).declare()
    run = subprocess.run(
        [sys.executable, "-m", "cli.main", "doctor"], capture_output=True, text=True,
        timeout=120, env={**os.environ, "BROKER_URL": url, "COLUMNS": "300"},
    )  # fmt: skip
    assert run.returncode == 1
    broker = next(line for line in run.stdout.splitlines() if "broker" in line)
    assert broker.startswith("FAIL") and "x-queue-type" in broker, run.stdout
    assert "Traceback" not in run.stdout + run.stderr
