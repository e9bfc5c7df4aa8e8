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
