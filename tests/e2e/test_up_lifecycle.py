"""`orderflow up` as an operator runs it (cli/up.py): refused before anything starts when a
port is taken; stopped, with the reason, when a process dies during start-up; "running" only
once everything is ready; its generated settings reachable from a second shell; Flower's series
kept out of the API's /metrics; and nothing left behind (processes, settings file, key files)
on any of those ways out."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from settings import PROJECT_ROOT
from settings_up_env import read_up_env, up_env_path
from tests.conftest import wait_until
from workers.procs import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.configured]

# What a second shell must not inherit from the test session: only STATE_DIR leads it to `up`.
PROVIDER_VARS = ("ALIPAY_", "WECHATPAY_", "STRIPE_", "KUAIDI100_", "WAREHOUSE_")


def up_env(tmp_path: Path, *, embedded: bool, **extra: str) -> dict[str, str]:
    """The environment of an `up` under test: its own STATE_DIR and TMPDIR (where key files
    went before), no metrics directory of the session, no provider settings."""
    drop = ("PROMETHEUS_MULTIPROC_DIR", "FLOWER_BASIC_AUTH", "STATE_DIR", "ORDERFLOW_ENV_FILE")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in drop and not k.startswith(PROVIDER_VARS)
        and not (embedded and k in ("DATABASE_URL", "REDIS_URL", "BROKER_URL"))
    }  # fmt: skip
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return {**env, "STATE_DIR": str(tmp_path / "state"), "TMPDIR": str(tmp_path / "tmp"),
            "COLUMNS": "250", **extra}  # fmt: skip


def start_up(env: dict[str, str], out: Path, *args: str) -> subprocess.Popen[bytes]:
    with out.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "cli.main", "up", *args],
            cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def processes_of(state_dir: Path) -> list[psutil.Process]:
    """Every live process started for this STATE_DIR: `up`'s children and their pool children
    (they inherit the variable), the embedded Redis and PostgreSQL (their command lines name
    a path inside it: redis-server's retitling hides its environment)."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            mine = proc.environ().get("STATE_DIR") == str(state_dir) or any(
                str(state_dir) in arg for arg in proc.cmdline()
            )
            if mine and proc.status() != "zombie":
                found.append(proc)
    return found


def key_files(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.rglob("*.pem"))


@pytest.fixture
def reaper(tmp_path: Path) -> Iterator[None]:
    """Should a test fail half-way, kill whatever is still running for its STATE_DIR."""
    yield
    for proc in processes_of(tmp_path / "state"):
        with contextlib.suppress(psutil.Error):
            proc.kill()


def test_a_taken_port_refuses_the_start_before_anything_runs(db, tmp_path, reaper):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        flower_port = taken.getsockname()[1]
        env = up_env(tmp_path, embedded=False)
        run = subprocess.run(
            [sys.executable, "-m", "cli.main", "up", "--api-port", str(free_port()),
             "--flower-port", str(flower_port)],
            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert f"port {flower_port} (Flower) is already in use" in out
    assert "--flower-port" in out and "nothing was started" in out
    assert "running" not in out and "Traceback" not in out
    state = tmp_path / "state"
    assert not (state / "up-logs").exists()  # no process was started, not even for a moment
    assert not processes_of(state)
    assert not up_env_path(state).exists() and not key_files(tmp_path)


def test_a_process_that_dies_during_start_up_stops_the_start_with_its_reason(db, tmp_path, reaper):
    """Flower refuses blank credentials (workers.flower): it exits while the rest starts."""
    env = up_env(tmp_path, embedded=False, FLOWER_BASIC_AUTH=" ")
    out = tmp_path / "up.out"
    proc = start_up(env, out, "--api-port", str(free_port()), "--flower-port", str(free_port()))
    assert proc.wait(timeout=300) == 1, out.read_text()
    text = out.read_text()
    assert "flower exited during start-up (exit code 2)" in text
    assert "FLOWER_BASIC_AUTH (user:password) is required" in text  # the end of flower.log
    assert "running" not in text and "Traceback" not in text
    assert "stopped API, workers, beat and Flower" in text
    state = tmp_path / "state"
    assert not processes_of(state)
    assert not up_env_path(state).exists()
    assert not key_files(tmp_path)  # the simulators' keys, generated before the start failed


def _stale_flower_series(metrics_dir: Path) -> None:
    """A metric file as an earlier Flower left it in the API's directory."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    metrics_dir.mkdir(parents=True)
    stale = MmapedDict(str(metrics_dir / "counter_stale-1.db"))
    key = mmap_key("flower_stale_total", "flower_stale_total", [], [], "left by a dead Flower")
    stale.write_value(key, 3.0, 0.0)
    stale.close()


def _doctor(env: dict[str, str]) -> dict[str, str]:
    run = subprocess.run([sys.executable, "-m", "cli.main", "doctor"], cwd=PROJECT_ROOT,
                         env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "Traceback" not in run.stdout + run.stderr
    return {line.split()[1]: line for line in run.stdout.splitlines() if len(line.split()) > 1}


def test_up_runs_when_ready_serves_a_second_shell_and_leaves_nothing_behind(tmp_path, reaper):
    """On the embedded servers, as on a fresh machine: STATE_DIR alone leads a second shell
    to the servers, simulators and credentials of the running `up`."""
    state = tmp_path / "state"
    _stale_flower_series(state / "metrics")
    env = up_env(tmp_path, embedded=True)
    api, flower = free_port(), free_port()
    out = tmp_path / "up.out"
    proc = start_up(env, out, "--api-port", str(api), "--flower-port", str(flower))
    try:
        wait_until(lambda: "running" in out.read_text() or proc.poll() is not None, 300)
        assert proc.poll() is None, out.read_text()
        # "running" came after readiness: everything answers at once.
        assert requests.get(f"http://127.0.0.1:{api}/healthz", timeout=5).status_code == 200
        generated = read_up_env(up_env_path(state))
        assert generated is not None and generated.pid == proc.pid
        assert stat.S_IMODE(generated.path.stat().st_mode) == 0o600
        auth = tuple(generated.values["FLOWER_BASIC_AUTH"].split(":", 1))
        health = requests.get(f"http://127.0.0.1:{flower}/healthcheck", auth=auth, timeout=5)
        assert health.text == "OK"
        assert {"DATABASE_URL", "REDIS_URL", "ALIPAY_APP_ID"} <= set(generated.values)
        assert Path(generated.values["ALIPAY_APP_PRIVATE_KEY_FILE"]).is_file()
        children = psutil.Process(proc.pid).children(recursive=True)
        running = processes_of(state)

        second_shell = {
            k: v for k, v in env.items() if k not in ("DATABASE_URL", "REDIS_URL", "BROKER_URL")
        }
        lines = _doctor(second_shell)
        for name in ("database", "migrations", "workers", "providers"):
            assert lines[name].startswith("ok"), lines
        assert "none configured" not in lines["providers"]
        for provider in ("alipay", "wechatpay", "stripe", "kuaidi100", "warehouse"):
            assert provider in lines["providers"]
        assert f"pid {proc.pid}" in lines["providers"]  # says where the settings came from

        # Flower sees the workers' events (its own series), which the API's /metrics, merged
        # from the workers' multiprocess files, must not carry: nor a stale file's series.
        wait_until(lambda: "\nflower_events_total{" in requests.get(
            f"http://127.0.0.1:{flower}/metrics", auth=auth, timeout=5).text, 60)  # fmt: skip
        scraped = requests.get(f"http://127.0.0.1:{api}/metrics", timeout=30).text
        assert "orderflow_orders" in scraped
        assert not [line for line in scraped.splitlines() if "flower_" in line]

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=300) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = out.read_text()
    assert "stopped API, workers, beat and Flower" in text and "Traceback" not in text
    assert not [p for p in [*children, *running] if p.is_running() and p.status() != "zombie"]
    assert not processes_of(state)  # the embedded PostgreSQL and Redis as well
    assert not up_env_path(state).exists()
    assert not key_files(tmp_path)
