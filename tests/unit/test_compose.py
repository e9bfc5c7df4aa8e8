"""docker-compose.yml is validated here, since this machine may have no container engine: its
shape (DESIGN.md §5) and that every command it runs exists outside containers too."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = [n for n, s in SERVICES.items() if s.get("image") == "orderflow:latest"]


def test_one_image_services_differ_only_by_command():
    assert {"api", "beat", "flower", "worker-orders", "worker-payments"} <= set(APP_SERVICES)
    for name in APP_SERVICES:
        assert SERVICES[name]["command"], name


def test_healthchecks_and_dependencies():
    for name in ("postgres", "redis", "api", "worker-orders", "worker-payments"):
        assert "healthcheck" in SERVICES[name], name
    assert SERVICES["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_redis_appendonly_everysec():
    cmd = " ".join(SERVICES["redis"]["command"])
    assert "--appendonly yes" in cmd and "--appendfsync everysec" in cmd


def test_flower_has_basic_auth_and_secrets_come_from_the_environment():
    assert any("--basic-auth=${FLOWER_BASIC_AUTH" in part for part in SERVICES["flower"]["command"])
    text = (ROOT / "docker-compose.yml").read_text()
    assert "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD" in text
    assert not re.search(r"(sk_live|sk_test|whsec)_[A-Za-z0-9]", text)


def test_simulators_only_in_the_dev_profile():
    assert SERVICES["simulators"]["profiles"] == ["dev"]


def _module_of(command: list[str]) -> str | None:
    if command[:2] == ["python", "-m"]:
        return command[2]
    if command[0] == "uvicorn":
        return command[1].split(":")[0]
    if command[0] == "celery":
        return command[command.index("-A") + 1]
    return None


def test_every_command_exists_outside_containers():
    """Each command names a module or console script that is importable / installed here."""
    from cli.main import app as cli_app

    for name, service in SERVICES.items():
        command = service.get("command")
        if not command or name in ("postgres", "redis"):
            continue
        if command[0] == "orderflow":
            groups = {g.name for g in cli_app.registered_groups}
            assert command[1] in groups, name
            continue
        module = _module_of(command)
        assert module is not None, f"{name}: unknown command {command}"
        importlib.import_module(module)


def test_dev_profile_simulators_hand_their_settings_to_orderflow(tmp_path):
    """`python -m simulators.stack` (the dev-profile command) serves every simulator and writes
    the settings that orderflow then reads through ORDERFLOW_ENV_FILE."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import requests

    from workers.procs import free_port_block

    env_file = tmp_path / "simulators.env"
    base = free_port_block(5)
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.stack", "--public-base-url", "http://127.0.0.1:1",
         "--env-out", str(env_file), "--base-port", str(base), "--time-scale", "3600"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not env_file.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert env_file.exists(), proc.stdout.read() if proc.poll() is not None else "timeout"
        assert oct(env_file.stat().st_mode & 0o777) == "0o600"
        for n in range(1, 6):
            assert requests.get(f"http://127.0.0.1:{base + n}/_sim/ledger", timeout=5).ok
        child = subprocess.run(
            [sys.executable, "-c",
             "from settings import get_settings as g; s = g(); "
             "print(s.stripe_api_base, s.alipay_app_id, s.kuaidi100_customer)"],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
            env={k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "ALIPAY_",
                                                                          "KUAIDI100_"))}
            | {"ORDERFLOW_ENV_FILE": str(env_file)},
        )  # fmt: skip
        assert child.stdout.split() == [f"http://127.0.0.1:{base + 3}", "2021000000000001",
                                        "K100CUSTOMER"], child.stderr  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0
