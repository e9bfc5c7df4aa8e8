"""docker-compose.yml is validated here, since this machine may have no container engine: its
shape (DESIGN.md §5) and that every command it runs exists outside containers too."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import yaml
from pydantic import SecretStr

from settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = [n for n, s in SERVICES.items() if s.get("image") == "orderflow:latest"]
# Services running orderflow's code (not the one-shot migration, not the dev simulators).
RUNTIME_SERVICES = [n for n in APP_SERVICES if n not in ("migrate", "simulators")]
# Secrets without which the production shape must refuse to start.
REQUIRED = ("POSTGRES_PASSWORD", "API_KEYS", "ADMIN_API_KEY", "FLOWER_BASIC_AUTH")
METRICS_DIR = "/var/lib/orderflow/metrics"


def _is_secret(annotation: object) -> bool:
    return annotation is SecretStr or SecretStr in getattr(annotation, "__args__", ())


def production_settings() -> set[str]:
    """Settings a deployment must be able to set: every secret, every setting that is unset by
    default (a provider identity, a key file) and every endpoint (an http default)."""
    return {
        name.upper()
        for name, field in Settings.model_fields.items()
        if _is_secret(field.annotation)
        or field.default is None
        or (isinstance(field.default, str) and field.default.startswith("http"))
    }


def test_one_image_services_differ_only_by_command():
    assert {"api", "beat", "flower", "worker-orders", "worker-payments"} <= set(APP_SERVICES)
    for name in APP_SERVICES:
        assert SERVICES[name]["command"], name


def test_healthchecks_and_dependencies():
    long_running = [n for n in SERVICES if n != "migrate"]  # migrate runs once and exits
    assert {"postgres", "redis", "api", "beat", "flower", "simulators"} <= set(long_running)
    for name in long_running:
        assert "healthcheck" in SERVICES[name], name
    assert SERVICES["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_redis_appendonly_everysec():
    cmd = " ".join(SERVICES["redis"]["command"])
    assert "--appendonly yes" in cmd and "--appendfsync everysec" in cmd


def test_flower_has_basic_auth_on_every_path_and_not_in_argv():
    flower = SERVICES["flower"]
    assert flower["command"][:3] == ["python", "-m", "workers.flower"]  # guards /metrics too
    assert not any("auth" in part for part in flower["command"])  # argv is visible in `ps`
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert flower["healthcheck"]["test"][1:4] == ["python", "-m", "workers.flower"]
    assert "healthcheck" in flower["healthcheck"]["test"]  # with credentials: /healthcheck is 401
    for name in RUNTIME_SERVICES:  # only Flower holds its password
        if name != "flower":
            assert "FLOWER_BASIC_AUTH" not in SERVICES[name]["environment"], name


def test_secrets_come_from_the_environment():
    text = (ROOT / "docker-compose.yml").read_text()
    for var in REQUIRED:  # required: `docker compose up` refuses to start without them
        assert f"${{{var}:?" in text, var
    assert "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD" in text
    assert not re.search(r"(sk_live|sk_test|whsec)_[A-Za-z0-9]", text)


def test_every_production_setting_reaches_the_app_services():
    """Each secret, provider identity, key file and endpoint of settings.py is passed through:
    as a required ${VAR:?}, or by name only (unset stays unset, so the default or the dev
    simulators' env file applies) — never a literal value in this file."""
    wanted = production_settings() - {"FLOWER_BASIC_AUTH"}
    assert {"PUBLIC_BASE_URL", "STRIPE_SECRET_KEY", "ADMIN_API_KEY", "KEY_ENCRYPTION_KEY",
            "WAREHOUSE_BOOKING_URL", "WECHATPAY_API_V3_KEY"} <= wanted  # fmt: skip
    for name in RUNTIME_SERVICES:
        if name == "flower":
            continue
        env = SERVICES[name]["environment"]
        missing = sorted(wanted - set(env))
        assert missing == [], f"{name} lacks {missing}"
        for var in wanted - {"DATABASE_URL", "REDIS_URL", "PROMETHEUS_MULTIPROC_DIR"}:
            value = env[var]
            assert value is None or str(value).startswith(f"${{{var}:"), f"{name}: {var}={value}"


def test_every_process_exports_metrics_through_the_shared_directory():
    """prometheus_client multiprocess mode across containers: each app process writes to the
    `metrics` volume at PROMETHEUS_MULTIPROC_DIR and the API (uvicorn --workers N) merges it."""
    assert "metrics" in COMPOSE["volumes"]
    for name in RUNTIME_SERVICES:
        if name == "flower":  # Flower serves its own /metrics; it is not orderflow's exporter
            continue
        service = SERVICES[name]
        assert service["environment"]["PROMETHEUS_MULTIPROC_DIR"] == METRICS_DIR, name
        assert f"metrics:{METRICS_DIR}" in service["volumes"], name
    assert "--workers" in SERVICES["api"]["command"]


def test_volume_mount_points_belong_to_the_app_user_in_the_image():
    """A new named volume takes the ownership of its mount point in the image; the processes
    run as `orderflow`, so each app volume's target must be created and chowned there."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    targets = {
        volume.split(":")[1]
        for name in APP_SERVICES
        for volume in SERVICES[name].get("volumes", [])
        if not volume.startswith((".", "/"))
    }
    assert targets >= {METRICS_DIR, "/run/orderflow"}
    mkdir = re.search(r"mkdir -p ([^\n&\\]+)", dockerfile)
    chown = re.search(r"chown -R orderflow ([^\n&\\]+)", dockerfile)
    assert mkdir and chown
    for target in targets:
        assert target in mkdir.group(1).split(), target
        owned = chown.group(1).split()
        assert any(target == p or target.startswith(p + "/") for p in owned), target


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_image():
    patterns = (ROOT / ".dockerignore").read_text().split()
    for path in (".venv", ".orderflow", ".git", ".env", "**/__pycache__", "bench/results.json"):
        assert path in patterns, path


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
        check = service.get("healthcheck", {}).get("test", [])
        if check[:3] == ["CMD", "python", "-m"]:  # e.g. workers.flower healthcheck
            importlib.import_module(check[3])


def test_dev_profile_simulators_hand_their_settings_to_orderflow(tmp_path):
    """`python -m simulators.stack` (the dev-profile command) serves every simulator and writes
    the settings that orderflow then reads through ORDERFLOW_ENV_FILE."""
    import os
    import signal
    import subprocess
    import sys

    import requests

    from tests.conftest import wait_until
    from workers.procs import free_port_block

    env_file = tmp_path / "simulators.env"
    base = free_port_block(5)
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.stack", "--public-base-url", "http://127.0.0.1:1",
         "--env-out", str(env_file), "--base-port", str(base), "--time-scale", "3600"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: env_file.exists() or proc.poll() is not None, 60, 0.1)
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
