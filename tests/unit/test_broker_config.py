"""The Celery configuration per broker: RabbitMQ gets quorum queues, publisher confirms and
native delayed delivery; Redis keeps its visibility timeout. No broker is contacted here:
``celeryconfig`` is imported in a child process with the broker URL set, as a worker would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.utils.quorum_queues import detect_quorum_queues

from tasks.base import MAX_DELIVERIES, OrderflowTask
from workers.broker import (
    AMQP_DELIVERY_LIMIT,
    AMQP_TRANSPORT_OPTIONS,
    PUBLISH_CONFIRM_TIMEOUT_S,
    QUEUE_NAMES,
    is_amqp,
    producer_options,
    queue_of_routing_key,
    task_queues,
)

ROOT = Path(__file__).resolve().parents[2]
AMQP = "amqp://guest:guest@127.0.0.1:5672//"
REDIS = "redis://127.0.0.1:6379/9"

_PROBE = """
import json
from celery.utils.quorum_queues import detect_quorum_queues
import celeryconfig as c
from workers.app import app
queues = {q.name: {"args": q.queue_arguments, "exchange": q.exchange.type, "key": q.routing_key}
          for q in c.task_queues}
missing = app.amqp.queues["elsewhere"]
app.loader.import_default_modules()  # the task modules, as a worker imports them at start
print(json.dumps({
    "transport": {k: v for k, v in c.broker_transport_options.items() if not callable(v)},
    "callbacks": sorted(k for k, v in c.broker_transport_options.items() if callable(v)),
    "queues": queues,
    "detect": getattr(c, "worker_detect_quorum_queues", None),
    "delayed_type": getattr(c, "broker_native_delayed_delivery_queue_type", None),
    "quorum_detected": detect_quorum_queues(app, "amqp")[0],
    "missing": {"args": missing.queue_arguments, "exchange": missing.exchange.type},
    "acks_late": c.task_acks_late, "prefetch": c.worker_prefetch_multiplier,
    "reject_on_lost": c.task_reject_on_worker_lost, "ignore_result": c.task_ignore_result,
    "backend": c.result_backend, "accept": c.accept_content, "serializer": c.task_serializer,
    "soft_limit": c.task_soft_time_limit, "hard_limit": c.task_time_limit,
    "routes": c.task_routes,
    "beat": {name: entry["task"] for name, entry in c.beat_schedule.items()},
    "beat_timing": {name: [entry["schedule"], entry["options"]["expires"]]
                    for name, entry in c.beat_schedule.items()},
    "beat_scheduler": c.beat_scheduler,
    "registered": sorted(app.tasks.keys()),
}))
"""


def celeryconfig_with(broker_url: str | None) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("BROKER_URL", "ORDERFLOW_ENV_FILE")}
    env.update(REDIS_URL=REDIS, DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    if broker_url:
        env["BROKER_URL"] = broker_url
    run = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return dict(json.loads(run.stdout.strip().splitlines()[-1]))


def test_rabbitmq_profile_declares_quorum_queues_with_publisher_confirms() -> None:
    conf = celeryconfig_with(AMQP)
    # No Redis visibility_timeout; every wait for a frame bounded (a blocked connection).
    assert conf["transport"] == {"confirm_publish": True, "read_timeout": 10, "write_timeout": 10}
    # RabbitMQ's alarms reach intake (workers/broker_blocked.py); confirms wait a bounded time.
    assert conf["callbacks"] == ["on_blocked", "on_unblocked"]
    assert {r["confirm_timeout"] for r in conf["routes"].values()} == {PUBLISH_CONFIRM_TIMEOUT_S}
    assert set(conf["queues"]) == set(QUEUE_NAMES)
    for name, queue in conf["queues"].items():
        assert queue["args"]["x-queue-type"] == "quorum", name
        assert queue["args"]["x-delivery-limit"] == AMQP_DELIVERY_LIMIT, name
        # Native delayed delivery (retry countdowns) routes through topic exchanges only.
        assert queue["exchange"] == "topic" and queue["key"] == name, name
    assert conf["detect"] is True and conf["quorum_detected"] is True  # no global QoS
    assert conf["delayed_type"] == "quorum"
    assert conf["missing"] == {"args": {"x-queue-type": "quorum"}, "exchange": "topic"}
    assert conf["acks_late"] is True and conf["prefetch"] == 1  # crash safety unchanged


def test_crash_safety_settings_and_a_beat_schedule_of_real_tasks() -> None:
    """DESIGN §4 as the worker loads it: acks late and requeue when the process dies, one
    message at a time, JSON only, no results, time limits on every task, a route to a queue
    of its own for every stage, and beat entries that each name a task a worker has."""
    conf = celeryconfig_with(None)
    assert (conf["acks_late"], conf["reject_on_lost"], conf["prefetch"]) == (True, True, 1)
    assert (conf["accept"], conf["serializer"]) == (["json"], "json")
    assert conf["ignore_result"] is True and conf["backend"] is None
    assert 0 < conf["soft_limit"] < conf["hard_limit"]
    assert conf["transport"]["visibility_timeout"] > conf["hard_limit"]
    routed = {route["queue"] for route in conf["routes"].values()}
    assert (
        {"orders", "payments", "shipping", "tracking", "maintenance"} <= routed <= set(QUEUE_NAMES)
    )
    assert set(conf["beat"]) >= {
        "sweep-stalled-orders", "poll-payments", "reconcile-payments", "schedule-tracking",
        "tracking-staleness", "dispatch-callbacks",
    }  # fmt: skip
    missing = [task for task in conf["beat"].values() if task not in conf["registered"]]
    assert missing == [], missing


def test_redis_profile_keeps_its_visibility_timeout_and_plain_queues() -> None:
    conf = celeryconfig_with(None)  # BROKER_URL unset: the broker is REDIS_URL
    assert conf["transport"]["visibility_timeout"] > 60  # above the hard time limit
    assert "confirm_publish" not in conf["transport"]
    assert all(q["args"] is None for q in conf["queues"].values())
    assert conf["detect"] is None and conf["quorum_detected"] is False
    # A broker cut off (not refusing) fails a publish within seconds, not minutes.
    assert conf["transport"]["socket_connect_timeout"] <= 10
    assert conf["transport"]["socket_timeout"] <= 30


def test_beat_ticks_outlive_a_clock_skew_between_hosts() -> None:
    """Celery stamps ``expires`` by the beat host's clock and the worker judges it by its own:
    each tick must live its period plus the skew allowance, or a worker a minute ahead drops
    every one (tests/cluster found its sweeper never ran)."""
    conf = celeryconfig_with(None)
    for name, (_period, expires) in conf["beat_timing"].items():
        assert expires > 120, name  # CLOCK_SKEW_ALLOWANCE_S's default, plus the tick's own life
    sweep_period, sweep_expires = conf["beat_timing"]["sweep-stalled-orders"]
    assert sweep_expires == 2 * sweep_period + 120


def test_beat_sends_only_as_the_holder_of_the_leader_lease() -> None:
    assert celeryconfig_with(None)["beat_scheduler"] == "workers.beat:LeaderScheduler"


def test_delivery_limit_leaves_the_redis_poison_guard_in_charge() -> None:
    # The Redis counter dead-letters at MAX_DELIVERIES + 1; RabbitMQ's limit is only a backstop.
    assert AMQP_DELIVERY_LIMIT > MAX_DELIVERIES + 1


def test_producer_declares_the_queues_exactly_as_the_workers() -> None:
    for url in (AMQP, REDIS):
        producer = Celery("p", broker=url)
        producer.conf.update(**producer_options(url))
        mine = {q.name: (q.queue_arguments, q.exchange.type) for q in task_queues(url)}
        theirs = {n: (q.queue_arguments, q.exchange.type) for n, q in producer.amqp.queues.items()}
        assert theirs == mine
    amqp = Celery("p", broker=AMQP)
    amqp.conf.update(**producer_options(AMQP))
    assert amqp.conf.broker_transport_options == AMQP_TRANSPORT_OPTIONS  # confirms, alarms
    assert detect_quorum_queues(amqp, "amqp")[0]


@pytest.mark.parametrize(
    ("url", "seconds", "expected"),
    [(AMQP, 0.6, 1.0), (AMQP, 1.2, 2.0), (AMQP, 30.0, 30.0), (REDIS, 0.6, 0.6)],
)
def test_retry_countdown_is_whole_seconds_on_rabbitmq(url: str, seconds: float, expected: float):
    # Celery 5.7's native delayed delivery refuses (drops) a countdown under one second.
    app = Celery("t", broker=url)

    @app.task(base=OrderflowTask, bind=True, name="orders.probe")
    def probe(self: OrderflowTask) -> None: ...

    assert probe._countdown(seconds) == expected


def test_dead_letter_queue_is_the_queue_not_the_delayed_routing_key() -> None:
    delayed = ".".join("0" * 26) + ".1.0.orders"  # how a retried message arrives on RabbitMQ
    assert queue_of_routing_key(delayed) == "orders"
    assert queue_of_routing_key("payments") == "payments"
    assert queue_of_routing_key(None) is None


def test_broker_kind_from_url() -> None:
    assert is_amqp(AMQP) and is_amqp("amqps://h/v") and is_amqp("pyamqp://h//")
    assert not is_amqp(REDIS) and not is_amqp("redis+socket:///tmp/r.sock")


def test_beat_keeps_its_schedule_where_the_environment_says(tmp_path: Path) -> None:
    """A beat host is configured by environment alone: no -s flag, no shared directory."""
    probe = "from workers.app import app; print(app.conf.beat_schedule_filename)"
    env = {k: v for k, v in os.environ.items() if k not in ("BROKER_URL", "ORDERFLOW_ENV_FILE")}
    env.update(REDIS_URL=REDIS, DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")

    def schedule_file(**extra: str) -> str:
        run = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env={**env, **extra},
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert run.returncode == 0, run.stderr
        return run.stdout.strip().splitlines()[-1]

    wanted = tmp_path / "beat" / "schedule"
    assert schedule_file(BEAT_SCHEDULE_FILE=str(wanted)) == str(wanted)
    # Unset: a file of the host's STATE_DIR, never the working directory (read-only or shared
    # on a multi-host deployment: tests/cluster runs beat on a read-only checkout).
    state = tmp_path / "state"
    assert schedule_file(STATE_DIR=str(state)) == str(state / "celerybeat-schedule")
