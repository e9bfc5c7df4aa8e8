"""GET /metrics on real PostgreSQL and Redis: state series read at scrape time, a failing backend,
and event series recorded by other processes (multiprocess mode)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert

from adapters.circuit import CircuitState, breaker_for
from models import DeadLetter, Order, OrderEvent, Shipment
from observability import metrics
from producers.client import OrderProducer
from services import timeline
from services.unit_of_work import unit_of_work
from settings import PROJECT_ROOT, get_settings
from tests.conftest import order_message, redis_client, wait_until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _now() -> datetime:
    # Per call, not at import: the suite may run this module minutes after collecting it.
    return datetime.now(UTC)


@pytest.fixture
def metrics_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    directory = tmp_path / "metrics"
    directory.mkdir()
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(directory))
    get_settings.cache_clear()  # the directory is a setting
    yield directory
    get_settings.cache_clear()


@pytest.fixture
def client(db: None, metrics_dir: Path) -> Iterator[TestClient]:
    from api.app import create_app

    app = create_app()
    if not any(getattr(route, "path", None) == "/metrics" for route in app.routes):
        app.add_api_route("/metrics", metrics.metrics_response, include_in_schema=False)
    with TestClient(app) as c:
        yield c


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    """For tests that monkeypatch settings: re-read them before and after."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def scrape(client: TestClient) -> Samples:
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


# -- builders ------------------------------------------------------------------------------------


def add_order(status: str, deadline: datetime | None = None) -> str:
    oid = str(uuid.uuid4())
    with unit_of_work() as s:
        s.add(
            Order(
                id=oid, source="test", external_id=oid, body_hash="0" * 64, status=status,
                currency="CNY", total_amount=1000, payment_provider="alipay",
                shipping_address={"name": "Li Lei"}, stage_deadline=deadline,
            )
        )  # fmt: skip
    return oid


_PARCEL_SEQ = itertools.count(1)  # distinct per (order, warehouse), as the constraint wants


def add_shipment(
    order_id: str, status: str, quiet_for: timedelta, warehouse: str | None = "main"
) -> None:
    last_event = _now() - quiet_for
    with unit_of_work() as s:
        s.add(
            Shipment(
                order_id=order_id, booking_key=f"bk-{uuid.uuid4().hex}", status=status,
                carrier="yuantong", waybill="YT" + uuid.uuid4().hex[:12],
                warehouse=warehouse, seq=next(_PARCEL_SEQ),
                created_at=last_event - timedelta(hours=1), last_event_at=last_event,
            )
        )  # fmt: skip


def add_dead_letter(status: str = "OPEN") -> None:
    with unit_of_work() as s:
        s.execute(
            insert(DeadLetter).values(
                task_name="payments.create", task_id=uuid.uuid4().hex, args=["x"], kwargs={},
                queue="payments", error_class="builtins.RuntimeError", error_message="boom",
                attempts=4, status=status,
            )
        )  # fmt: skip


def celery_queues() -> list[str]:
    import celeryconfig

    return [q.name for q in celeryconfig.task_queues]


def open_circuit(provider: str) -> None:
    breaker = breaker_for(redis_client(), provider)
    for _ in range(breaker.policy.min_calls):
        breaker.record_failure()
    assert breaker.state() == CircuitState.OPEN


# -- state series --------------------------------------------------------------------------------


def test_state_series_come_from_postgres_and_redis(client: TestClient) -> None:
    add_order("RECEIVED", _now() + timedelta(minutes=5))
    add_order("RECEIVED", _now() - timedelta(minutes=10))  # overdue
    add_order("AWAITING_PAYMENT", _now() - timedelta(hours=1))  # overdue
    for _ in range(3):
        add_order("COMPLETED", _now() - timedelta(days=1))  # final: never overdue
    add_order("NEEDS_ATTENTION", _now() - timedelta(days=1))  # waits for a person: not overdue
    in_transit = add_order("IN_TRANSIT")
    add_shipment(in_transit, "IN_TRANSIT", quiet_for=timedelta(days=4))  # stale (> 3 days)
    add_shipment(in_transit, "IN_TRANSIT", quiet_for=timedelta(hours=2))
    add_shipment(in_transit, "DELIVERED", quiet_for=timedelta(days=9))  # final: not counted
    add_dead_letter()
    add_dead_letter()
    add_dead_letter("REPLAYED")
    broker = redis_client()
    broker.lpush("payments", "m1", "m2", "m3")
    broker.lpush("tracking\x06\x163", "m4", "m5")  # kombu's list for priority-3 messages
    open_circuit("stripe")

    samples = scrape(client)

    assert value(samples, "orderflow_orders", status="RECEIVED") == 2
    assert value(samples, "orderflow_orders", status="COMPLETED") == 3
    assert value(samples, "orderflow_orders", status="PAID") == 0  # zero-filled
    assert value(samples, "orderflow_orders_overdue", status="RECEIVED") == 1
    assert value(samples, "orderflow_orders_overdue", status="AWAITING_PAYMENT") == 1
    assert value(samples, "orderflow_orders_overdue", status="PAID") == 0
    assert ("orderflow_orders_overdue", frozenset({("status", "COMPLETED")})) not in samples
    assert ("orderflow_orders_overdue", frozenset({("status", "NEEDS_ATTENTION")})) not in samples
    oldest = value(samples, "orderflow_orders_overdue_oldest_seconds", status="AWAITING_PAYMENT")
    assert 3600 <= oldest < 3600 + 120
    assert value(samples, "orderflow_dead_letters_open") == 2
    assert value(samples, "orderflow_shipments_active", warehouse="main") == 2
    assert value(samples, "orderflow_shipments_stale", warehouse="main") == 1
    age = value(samples, "orderflow_shipments_oldest_update_age_seconds", warehouse="main")
    assert 4 * 86400 <= age < 4 * 86400 + 120
    depths = {q: value(samples, "orderflow_queue_depth", queue=q) for q in celery_queues()}
    assert depths == {q: {"payments": 3, "tracking": 2}.get(q, 0) for q in celery_queues()}
    assert {"orders", "payments", "shipping", "tracking", "maintenance"} <= set(depths)
    assert value(samples, "orderflow_circuit_open", provider="stripe") == 1
    for provider in ("alipay", "wechatpay", "kuaidi100", "warehouse"):
        assert value(samples, "orderflow_circuit_open", provider=provider) == 0
    for backend in ("postgres", "redis", "broker"):
        assert value(samples, "orderflow_scrape_error", backend=backend) == 0


def test_shipment_series_are_per_warehouse(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, fresh_settings: None
) -> None:
    monkeypatch.setenv("WAREHOUSES", "main:1,east:2,west:3")
    get_settings.cache_clear()
    split = add_order("IN_TRANSIT")  # one order, a parcel from each of two warehouses
    add_shipment(split, "IN_TRANSIT", quiet_for=timedelta(hours=2), warehouse="main")
    add_shipment(split, "IN_TRANSIT", quiet_for=timedelta(days=5), warehouse="east")  # stale
    other = add_order("IN_TRANSIT")
    add_shipment(other, "IN_TRANSIT", quiet_for=timedelta(hours=1), warehouse="main")
    add_shipment(other, "DELIVERED", quiet_for=timedelta(days=9), warehouse="east")  # final
    add_shipment(other, "PENDING", quiet_for=timedelta(days=4), warehouse="north")  # unconfigured
    add_shipment(other, "IN_TRANSIT", quiet_for=timedelta(minutes=5), warehouse=None)  # legacy

    samples = scrape(client)

    def per_warehouse(name: str) -> dict[str, float]:
        found = {dict(lb).get("warehouse"): v for (n, lb), v in samples.items() if n == name}
        assert None not in found, f"{name} has a series without a warehouse"
        return found

    assert per_warehouse("orderflow_shipments_active") == {
        "main": 2, "east": 1, "west": 0, "north": 1, "?": 1,
    }  # fmt: skip
    assert per_warehouse("orderflow_shipments_stale") == {
        "main": 0, "east": 1, "west": 0, "north": 1, "?": 0,
    }  # fmt: skip
    ages = per_warehouse("orderflow_shipments_oldest_update_age_seconds")
    assert 2 * 3600 <= ages["main"] < 2 * 3600 + 120
    assert 5 * 86400 <= ages["east"] < 5 * 86400 + 120
    assert ages["west"] == 0  # configured, nothing active: zero-filled, not absent


def test_a_dead_redis_fails_only_its_own_series(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, fresh_settings: None
) -> None:
    add_order("PAID")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens on port 1
    get_settings.cache_clear()

    samples = scrape(client)

    assert value(samples, "orderflow_scrape_error", backend="redis") == 1
    assert value(samples, "orderflow_scrape_error", backend="broker") == 1
    assert value(samples, "orderflow_scrape_error", backend="postgres") == 0
    assert value(samples, "orderflow_orders", status="PAID") == 1
    assert not {"orderflow_circuit_open", "orderflow_queue_depth"} & names(samples)


def test_rabbitmq_queue_depths_come_from_a_passive_declare(
    client: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    fresh_settings: None,
    rabbit: tuple[str, str],
) -> None:
    _vhost, url = rabbit
    with OrderProducer(url) as producer:  # publisher confirms: both are stored when it returns
        producer.send(order_message("A", 1))
        producer.send(order_message("B", 2))
    monkeypatch.setenv("BROKER_URL", url)
    get_settings.cache_clear()

    samples = scrape(client)

    depths = {q: value(samples, "orderflow_queue_depth", queue=q) for q in celery_queues()}
    assert depths == {q: 2 if q == "orders" else 0 for q in celery_queues()}
    assert value(samples, "orderflow_scrape_error", backend="broker") == 0
    assert value(samples, "orderflow_circuit_open", provider="alipay") == 0


# -- event series from other processes -----------------------------------------------------------

WORKER = textwrap.dedent(
    """
    from domain.errors import ProviderUnavailable
    from observability import metrics

    metrics.task_retried("payments.create", ProviderUnavailable("alipay", "timeout"))
    metrics.task_failed("payments.create", RuntimeError("boom"))
    metrics.observe_provider_call("alipay", "precreate", "ok", 0.2)
    metrics.observe_provider_call("alipay", "precreate", "unavailable", 3.5)
    metrics.observe_provider_call("alipay", "precreate", "circuit_open")
    metrics.observe_transition("RECEIVED", "RESERVED", 0.03)
    """
)


def test_event_series_of_all_processes_are_merged(client: TestClient, metrics_dir: Path) -> None:
    env = {**os.environ, metrics.MULTIPROC_ENV: str(metrics_dir)}
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER], cwd=PROJECT_ROOT, env=env)
        for _ in range(2)
    ]
    assert [w.wait(timeout=60) for w in workers] == [0, 0]
    assert len(list(metrics_dir.glob("*.db"))) >= 2  # one file per process

    samples = scrape(client)

    retries = value(
        samples, "orderflow_task_retries_total", task="payments.create", error="ProviderUnavailable"
    )
    assert retries == 2
    failures = value(
        samples, "orderflow_task_failures_total", task="payments.create", error="RuntimeError"
    )
    assert failures == 2
    for outcome in ("ok", "unavailable", "circuit_open"):
        calls = value(
            samples, "orderflow_provider_calls_total",
            provider="alipay", operation="precreate", outcome=outcome,
        )  # fmt: skip
        assert calls == 2, outcome
    labels = {"provider": "alipay", "operation": "precreate"}
    assert value(samples, "orderflow_provider_call_seconds_count", **labels) == 4  # not the skip
    assert value(samples, "orderflow_provider_call_seconds_sum", **labels) == pytest.approx(7.4)
    assert value(samples, "orderflow_provider_call_seconds_bucket", **labels, le="0.25") == 2
    stage = {"from_status": "RECEIVED", "to_status": "RESERVED"}
    assert value(samples, "orderflow_order_stage_seconds_count", **stage) == 2
    assert value(samples, "orderflow_order_stage_seconds_bucket", **stage, le="0.05") == 2


CONTAINER = textwrap.dedent(
    """
    import socket, sys
    socket.gethostname = lambda: sys.argv[1]  # as in a container: its own hostname
    from observability import metrics
    metrics.task_failed("payments.create", RuntimeError("boom"))
    print(metrics.process_id())
    """
)


def test_processes_of_different_containers_never_share_a_file(
    client: TestClient, metrics_dir: Path
) -> None:
    """Containers sharing the metrics volume (docker-compose.yml) have their own pid namespaces:
    files are named by hostname and pid, so equal pids cannot overwrite each other's counts."""
    env = {**os.environ, metrics.MULTIPROC_ENV: str(metrics_dir)}
    ids = [
        subprocess.run(
            [sys.executable, "-c", CONTAINER, host], cwd=PROJECT_ROOT, env=env, check=True,
            capture_output=True, text=True, timeout=60,
        ).stdout.strip()
        for host in ("c0ffee000001", "c0ffee000002")
    ]  # fmt: skip
    assert [i.rsplit("-", 1)[0] for i in ids] == ["c0ffee000001", "c0ffee000002"]
    assert {f"counter_{i}.db" for i in ids} <= {p.name for p in metrics_dir.iterdir()}
    failures = value(
        scrape(client),
        "orderflow_task_failures_total",
        task="payments.create",
        error="RuntimeError",
    )
    assert failures == 2


def test_the_directory_is_a_setting_read_from_an_env_file_too(tmp_path: Path) -> None:
    """settings.py is the only reader of the environment: a PROMETHEUS_MULTIPROC_DIR given in an
    env file (ORDERFLOW_ENV_FILE, .env) turns multiprocess mode on like the variable does."""
    directory = tmp_path / "from-env-file"
    env_file = tmp_path / "orderflow.env"
    env_file.write_text(f"PROMETHEUS_MULTIPROC_DIR={directory}\n")
    env = {k: v for k, v in os.environ.items() if k != metrics.MULTIPROC_ENV}
    env["ORDERFLOW_ENV_FILE"] = str(env_file)
    subprocess.run(
        [sys.executable, "-c", WORKER], cwd=PROJECT_ROOT, env=env, check=True, timeout=60
    )
    assert list(directory.glob("counter_*.db")) and list(directory.glob("histogram_*.db"))


def test_prepare_multiproc_dir_starts_a_run_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    directory = tmp_path / "run"
    directory.mkdir()
    (directory / "counter_999.db").write_bytes(b"old run")
    (directory / "notes.txt").write_text("not ours")

    assert metrics.prepare_multiproc_dir(directory) == directory

    assert os.environ[metrics.MULTIPROC_ENV] == str(directory)  # children inherit it
    assert sorted(p.name for p in directory.iterdir()) == ["notes.txt"]


def test_a_transition_observes_the_time_since_the_last_one(
    db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, str, float]] = []
    monkeypatch.setattr(metrics, "observe_transition", lambda *args: seen.append(args))
    with unit_of_work() as s:  # no earlier transition: nothing to observe
        timeline.record(
            s, add_order("RESERVED"), "transition", from_status="RESERVED", to_status="CANCELLED"
        )
    assert seen == []
    oid = add_order("RESERVED")
    with unit_of_work() as s:
        for ago, to_status in ((300, "RECEIVED"), (90, "RESERVED")):
            s.execute(
                insert(OrderEvent).values(
                    order_id=oid, kind="transition", to_status=to_status,
                    created_at=datetime.now(UTC) - timedelta(seconds=ago),
                )
            )  # fmt: skip
    with unit_of_work() as s:
        timeline.record(s, oid, "transition", from_status="RESERVED", to_status="CANCELLED")
    ((from_status, to_status, seconds),) = seen
    assert (from_status, to_status) == ("RESERVED", "CANCELLED")
    assert 90 <= seconds < 100  # from the newest earlier transition, not the first


def test_worker_host_exporter_serves_event_series_without_the_api(tmp_path: Path) -> None:
    """`orderflow metrics serve` on a host with workers and no API: what a worker process
    recorded in the shared directory is scraped there; state series are not (the API exports
    them once); SIGTERM stops it with exit 0; without the directory it refuses in one line."""
    import signal

    import requests

    from workers.procs import free_port

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    record = (
        "from observability import metrics; metrics.task_retried('orders.process', TimeoutError())"
    )
    worker = subprocess.run([sys.executable, "-c", record], cwd=PROJECT_ROOT, env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert worker.returncode == 0, worker.stderr
    port = free_port()
    exporter = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "metrics", "serve", "--port", str(port)],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:

        def scrape() -> list[str] | None:
            """The exporter's answer (in a list: an empty page is an answer too), once it
            listens."""
            try:
                return [requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text]
            except requests.ConnectionError:
                return None

        [text] = wait_until(scrape, 10, 0.1, show=lambda: f"exporter exit code {exporter.poll()}")
        samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
        retries = [s for s in samples if s.name == "orderflow_task_retries_total"]
        assert [(s.labels["task"], s.labels["error"], s.value) for s in retries] == [
            ("orders.process", "TimeoutError", 1.0)
        ], text
        assert not [s for s in samples if s.name == "orderflow_orders"]  # state: the API's
        exporter.send_signal(signal.SIGTERM)
        out, _ = exporter.communicate(timeout=30)
    finally:
        if exporter.poll() is None:
            exporter.kill()
    assert exporter.returncode == 0, out

    bare = {k: v for k, v in env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    refused = subprocess.run([sys.executable, "-m", "cli.main", "metrics", "serve"],
                             cwd=PROJECT_ROOT, env=bare, capture_output=True, text=True,
                             timeout=60)  # fmt: skip
    assert refused.returncode == 1 and "PROMETHEUS_MULTIPROC_DIR is not set" in refused.stderr
    assert "Traceback" not in refused.stderr
