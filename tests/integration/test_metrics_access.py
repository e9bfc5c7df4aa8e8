"""Who may read /metrics (:mod:`api.metrics_access`): ``METRICS_TOKEN`` (a bearer token) and
``METRICS_PORT`` (a listener of its own; the public app answers 404), over real HTTP."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psutil
import pytest
import requests
from fastapi.testclient import TestClient

from settings import get_settings
from tests.conftest import wait_until
from workers.procs import free_port

TOKEN = "metrics-token-0123456789"


@pytest.fixture
def app_with(db, monkeypatch) -> Iterator:
    """``app_with(NAME=value, ...)``: a TestClient (lifespan running) of an app built with
    those settings."""
    clients: list[TestClient] = []

    def make(**env: str) -> TestClient:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        from api.app import create_app

        client = TestClient(create_app()).__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)
    get_settings.cache_clear()


def test_with_a_token_metrics_needs_the_bearer_token(app_with):
    client = app_with(METRICS_TOKEN=TOKEN)
    refused = client.get("/metrics")
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert refused.json()["error"] == "unauthorized"
    for wrong in (f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", TOKEN, "Bearer "):
        assert client.get("/metrics", headers={"Authorization": wrong}).status_code == 401, wrong
    ok = client.get("/metrics", headers={"Authorization": f"bearer {TOKEN}"})
    assert ok.status_code == 200 and "orderflow_orders" in ok.text


def test_without_settings_metrics_stays_open_on_the_api_port(app_with):
    r = app_with().get("/metrics")
    assert r.status_code == 200 and "orderflow_orders" in r.text


def test_with_a_port_metrics_leaves_the_public_app_for_its_own_listener(app_with):
    port = free_port()
    client = app_with(METRICS_PORT=str(port))
    assert client.get("/metrics").status_code == 404
    scrape = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30)
    assert scrape.status_code == 200 and "orderflow_orders" in scrape.text
    assert scrape.headers["Content-Type"].startswith("text/plain")
    assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=30).status_code == 404


def test_port_and_token_together_guard_the_listener(app_with):
    port = free_port()
    app_with(METRICS_PORT=str(port), METRICS_TOKEN=TOKEN)
    url = f"http://127.0.0.1:{port}/metrics"
    assert requests.get(url, timeout=30).status_code == 401
    r = requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert r.status_code == 200 and "orderflow_orders" in r.text


def test_every_uvicorn_worker_shares_the_metrics_port(db, procs, monkeypatch):
    """``uvicorn --workers 2``: both processes bind METRICS_PORT (SO_REUSEPORT), neither fails
    its start-up, and scrapes are answered while the public port answers 404."""
    api_port, metrics_port = free_port(), free_port()
    monkeypatch.setenv("METRICS_PORT", str(metrics_port))
    api = procs.api(api_port, workers=2)
    wait_until(lambda: _listening(api.pid, metrics_port) == 2, 60, 0.1, show=api.log_tail)
    assert requests.get(f"http://127.0.0.1:{api_port}/metrics", timeout=30).status_code == 404
    for _ in range(10):
        r = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30)
        assert r.status_code == 200 and "orderflow_orders" in r.text
    log = api.log_path.read_text(errors="replace") if api.log_path else ""
    assert "Address already in use" not in log and "Traceback" not in log, log


def _listening(supervisor_pid: int, port: int) -> int:
    """How many of the supervisor's worker processes listen on ``port``."""
    count = 0
    for child in psutil.Process(supervisor_pid).children():
        with contextlib.suppress(psutil.Error):
            sockets = child.net_connections(kind="tcp")
            count += any(s.status == psutil.CONN_LISTEN and s.laddr.port == port for s in sockets)
    return count


def test_a_scraper_that_hangs_up_is_one_line_not_a_traceback(caplog, capsys):
    """What socketserver calls when writing the answer failed (the scraper went away)."""
    from api.metrics_access import start_listener

    server = start_listener("127.0.0.1", free_port(), None)
    try:
        for error in (BrokenPipeError(32, "Broken pipe"), ConnectionResetError(104, "reset")):
            try:
                raise error
            except ConnectionError:
                server.handle_error(None, ("127.0.0.1", 5))
    finally:
        server.shutdown()
        server.server_close()
    assert "Traceback" not in capsys.readouterr().err
    lines = [r.getMessage() for r in caplog.records if r.name == "api.metrics_access"]
    assert lines.count("metrics client 127.0.0.1 disconnected mid-answer") == 2
