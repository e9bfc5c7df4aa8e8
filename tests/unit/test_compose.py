"""docker-compose.yml is validated here, since this machine may have no container engine: its
shape (DESIGN.md §5), its hardening (secrets as files, networks, pinned images, log rotation,
graceful stops) and that every command it runs exists outside containers too."""

from __future__ import annotations

import importlib
import importlib.util
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
WORKERS = [n for n in SERVICES if n.startswith("worker-")]
#: Pulled, not built here: each must be pinned by digest.
PULLED = [n for n, s in SERVICES.items() if "build" not in s]
#: Generated secrets each service needs; nothing more (a worker holds no API key).
APP_SECRETS = {"database_url", "key_encryption_key"}
API_SECRETS = APP_SECRETS | {"api_keys", "admin_api_key", "metrics_token"}
METRICS_DIR = "/var/lib/orderflow/metrics"
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
#: A variable whose value would be a credential (the URL carries the database password), besides
#: the SecretStr settings (API_KEYS, *_KEY...).
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_AUTH$|SALT|^DATABASE_URL$")


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
    assert flower["environment"]["FLOWER_BASIC_AUTH_FILE"] == "/run/secrets/flower_basic_auth"
    assert flower["healthcheck"]["test"][1:4] == ["python", "-m", "workers.flower"]
    assert "healthcheck" in flower["healthcheck"]["test"]  # with credentials: /healthcheck is 401
    for name in SERVICES:  # only Flower holds its password
        if name != "flower":
            assert "flower_basic_auth" not in SERVICES[name].get("secrets", []), name
            assert not any(v.startswith("FLOWER_") for v in _env(name)), name


def _env(service: str) -> dict[str, object]:
    return dict(SERVICES[service].get("environment") or {})


def _is_credential(var: str) -> bool:
    """A secret setting, or a variable whose name says it holds a credential."""
    field = Settings.model_fields.get(var.lower())
    return bool(SECRET_NAME.search(var)) or (field is not None and _is_secret(field.annotation))


def test_no_credential_is_a_value_in_the_environment():
    """Credentials reach every service as ``*_FILE`` naming a mounted Docker secret (or by name
    only, for the provider credentials an override mounts), never as a value in the
    environment: ``docker inspect`` and every child process would show it."""
    for name in SERVICES:
        for var in _env(name):
            assert var.endswith("_FILE") or not _is_credential(var), (
                f"{name}: {var} must come from a secret file ({var}_FILE)"
            )
    text = (ROOT / "docker-compose.yml").read_text()
    assert not re.search(r"(sk_live|sk_test|whsec)_[A-Za-z0-9]", text)


def test_every_file_variable_names_a_setting_and_a_mounted_secret():
    """``X_FILE: /run/secrets/y``: X is a setting (PostgreSQL's own for the database image), y
    is declared at the top level and mounted in that service."""
    for name, service in SERVICES.items():
        for var, value in _env(name).items():
            if not var.endswith("_FILE") or var == "ORDERFLOW_ENV_FILE":
                continue
            setting = var.removesuffix("_FILE").lower()
            assert (
                setting in Settings.model_fields
                or var.lower() in Settings.model_fields
                or (name == "postgres" and var == "POSTGRES_PASSWORD_FILE")
            ), f"{name}: {var}"
            if isinstance(value, str) and value.startswith("/run/secrets/"):
                secret = value.removeprefix("/run/secrets/")
                assert secret in COMPOSE["secrets"], f"{name}: {secret} not declared"
                assert secret in service.get("secrets", []), f"{name}: {secret} not mounted"


def test_each_service_holds_only_the_secrets_it_needs():
    assert set(SERVICES["api"]["secrets"]) == API_SECRETS
    assert SERVICES["postgres"]["secrets"] == ["postgres_password"]
    assert SERVICES["migrate"]["secrets"] == ["database_url"]
    for name in [*WORKERS, "beat"]:
        assert set(SERVICES[name]["secrets"]) == APP_SECRETS, name
    for name in SERVICES:  # the API's own credentials stay in the API
        if name != "api":
            assert not {"api_keys", "admin_api_key"} & set(SERVICES[name].get("secrets", []))


def test_every_production_setting_reaches_the_app_services():
    """Each secret, provider identity, key file and endpoint of settings.py is passed through:
    a secret as ``<NAME>_FILE`` (a mounted secret, or by name only: unset stays unset, so the
    default or the dev simulators' env file applies), anything else by name only — never a
    literal value in this file. API-only settings (its keys, /metrics) are the API's alone."""
    api_only = {"API_KEYS", "ADMIN_API_KEY", "METRICS_TOKEN", "METRICS_PORT", "METRICS_BIND"}
    fixed = {"DATABASE_URL", "REDIS_URL", "PROMETHEUS_MULTIPROC_DIR", "KEY_ENCRYPTION_KEY"}
    wanted = production_settings() - {"FLOWER_BASIC_AUTH"}
    assert {"PUBLIC_BASE_URL", "STRIPE_SECRET_KEY", "ADMIN_API_KEY", "KEY_ENCRYPTION_KEY",
            "WAREHOUSE_BOOKING_URL", "WECHATPAY_API_V3_KEY", "METRICS_TOKEN"} <= wanted  # fmt: skip
    for name in RUNTIME_SERVICES:
        if name == "flower":
            continue
        env = _env(name)
        expected = {f"{v}_FILE" if _is_credential(v) else v for v in wanted - api_only}
        if name == "api":
            expected |= {"API_KEYS_FILE", "ADMIN_API_KEY_FILE", "METRICS_TOKEN_FILE"}
        missing = sorted(expected - set(env))
        assert missing == [], f"{name} lacks {missing}"
        for var in (
            expected - {f"{v}_FILE" for v in fixed} - fixed - {f"{v}_FILE" for v in api_only}
        ):
            assert env[var] is None, f"{name}: {var}={env[var]} (pass it through by name)"


def test_only_the_api_publishes_a_port():
    assert [n for n, s in SERVICES.items() if s.get("ports")] == ["api"]
    assert SERVICES["api"]["ports"] == ["8000:8000"]


def test_databases_flower_and_metrics_are_on_internal_networks_only():
    networks = COMPOSE["networks"]
    for name in ("postgres", "redis", "flower"):
        assert SERVICES[name]["networks"], name
        for network in SERVICES[name]["networks"]:
            assert networks[network].get("internal") is True, (name, network)
    assert set(SERVICES["api"]["networks"]) == {"public", "internal"}
    assert not networks["public"].get("internal")
    for name in WORKERS:  # they call the providers and the upstream callbacks: a way out
        assert set(SERVICES[name]["networks"]) == {"internal", "egress"}, name
    # /metrics: its own listener, on a port that is not published; the token on top.
    env = _env("api")
    assert env["METRICS_PORT"] and not any(
        env["METRICS_PORT"] in p for p in SERVICES["api"]["ports"]
    )
    assert env["METRICS_TOKEN_FILE"] == "/run/secrets/metrics_token"


def test_every_pulled_image_and_the_base_image_are_pinned_by_digest():
    assert {"postgres", "redis"} <= set(PULLED)
    for name in PULLED:
        assert DIGEST.search(SERVICES[name]["image"]), name
    for name in SERVICES:  # built here: the tag is the local image, its base is pinned below
        if name not in PULLED:
            assert SERVICES[name]["image"] == "orderflow:latest", name
    froms = re.findall(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert froms and all(DIGEST.search(image) for image in froms), froms


def test_every_service_rotates_its_logs():
    for name, service in SERVICES.items():
        logging = service.get("logging", {})
        assert logging.get("driver") == "json-file", name
        assert re.fullmatch(r"\d+[kmg]", logging["options"]["max-size"]), name
        assert int(logging["options"]["max-file"]) >= 1, name


def _seconds(duration: str) -> float:
    """A Compose duration (``90s``, ``1m30s``, ``2m``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_workers_are_given_longer_than_the_hard_time_limit_to_stop():
    """Celery's warm shutdown waits for running tasks, which may run to the hard limit."""
    import celeryconfig

    hard_limit = celeryconfig.task_time_limit
    assert hard_limit == Settings.model_fields["task_time_limit_s"].default  # not overridden here
    assert WORKERS
    for name in WORKERS:
        assert "TASK_TIME_LIMIT_S" not in _env(name), name  # else compare with that value
        assert _seconds(SERVICES[name]["stop_grace_period"]) > hard_limit, name


def _secrets_tool():
    spec = importlib.util.spec_from_file_location(
        "compose_secrets", ROOT / "ops/compose_secrets.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_secret_files_are_generated_by_the_documented_command_and_never_committed(tmp_path):
    tool = _secrets_tool()
    declared = COMPOSE["secrets"]
    assert {name: spec["file"] for name, spec in declared.items()} == {
        name: f"./secrets/{name}" for name in tool.SECRETS
    }
    assert "/secrets/" in (ROOT / ".gitignore").read_text().split()
    directory = tmp_path / "secrets"
    assert sorted(tool.generate(directory)) == sorted(tool.SECRETS)
    values = {name: (directory / name).read_text() for name in tool.SECRETS}
    assert tool.generate(directory) == []  # kept: PostgreSQL only reads its password once
    assert values == {name: (directory / name).read_text() for name in tool.SECRETS}
    assert oct(directory.stat().st_mode & 0o777) == "0o700"
    password = values["postgres_password"].strip()
    assert values["database_url"].strip() == tool.database_url(password)
    assert all(v.endswith("\n") and v.strip() for v in values.values())
    settings = Settings(  # what the app containers read
        _env_file=None, database_url=values["database_url"].strip(),
        key_encryption_key=values["key_encryption_key"].strip(),
    )  # fmt: skip
    from services.api_keys import SecretCipher

    assert SecretCipher.from_setting(settings.key_encryption_key) is not None


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
    for path in (".venv", ".orderflow", ".git", ".env", "secrets", "**/__pycache__",
                 "bench/results.json"):  # fmt: skip
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
