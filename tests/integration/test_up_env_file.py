"""STATE_DIR/up.env: what a running `orderflow up` generated reaches every `orderflow` command
started in another shell with the same STATE_DIR, and only while that `up` lives
(settings_up_env.py)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from settings import PROJECT_ROOT, Settings
from settings_up_env import PID_KEY, STARTED_KEY, read_up_env, up_env_path, write_up_env

GENERATED = {
    "ALIPAY_APP_ID": "2021000000000001",
    "ALIPAY_GATEWAY_URL": "http://127.0.0.1:9101/gateway.do",
    "STRIPE_SECRET_KEY": "sk_test_from_up",
    # Every character an env file could misread: quotes, a hash, a dollar, a backslash, space.
    "FLOWER_BASIC_AUTH": "admin:it's #not $HOME \\n a comment",
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No provider setting in the environment, no .env: the cwd is an empty directory."""
    for name in [*GENERATED, "STATE_DIR", "FLOWER_BASIC_AUTH"]:
        monkeypatch.delenv(name, raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return tmp_path / "state"


def test_settings_read_the_file_of_a_live_up_below_the_environment(clean_env, monkeypatch):
    write_up_env(up_env_path(clean_env), GENERATED)
    mode = stat.S_IMODE(up_env_path(clean_env).stat().st_mode)
    assert mode == 0o600
    s = Settings(state_dir=clean_env)
    assert s.alipay_app_id == "2021000000000001"
    assert s.alipay_gateway_url == GENERATED["ALIPAY_GATEWAY_URL"]
    assert s.stripe_secret_key is not None
    assert s.stripe_secret_key.get_secret_value() == "sk_test_from_up"
    assert s.flower_basic_auth is not None
    assert s.flower_basic_auth.get_secret_value() == GENERATED["FLOWER_BASIC_AUTH"]
    monkeypatch.setenv("ALIPAY_APP_ID", "from-the-environment")
    assert Settings(state_dir=clean_env).alipay_app_id == "from-the-environment"


def test_the_file_wins_over_dot_env_and_is_found_through_its_state_dir(clean_env):
    # STATE_DIR given only in .env, as a second shell in the checkout would have it.
    Path(".env").write_text(f"STATE_DIR={clean_env}\nALIPAY_APP_ID=from-dot-env\nSWEEP_BATCH=7\n")
    assert Settings().alipay_app_id == "from-dot-env"  # no up running
    write_up_env(up_env_path(clean_env), GENERATED)
    s = Settings()
    assert s.alipay_app_id == "2021000000000001"  # what up's own processes use
    assert s.sweep_batch == 7  # what up did not generate still comes from .env


def test_the_file_of_an_up_that_is_gone_is_ignored(clean_env):
    path = up_env_path(clean_env)
    code = (
        "import sys; from pathlib import Path; from settings_up_env import write_up_env; "
        "write_up_env(Path(sys.argv[1]), {'ALIPAY_APP_ID': 'from-a-dead-up'})"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], cwd=PROJECT_ROOT, check=True)
    assert path.exists()
    assert read_up_env(path) is None
    assert Settings(state_dir=clean_env).alipay_app_id is None


def test_a_reused_pid_does_not_revive_a_stale_file(clean_env):
    """The pid is this live process's, its start time another's: a killed up's pid reused."""
    path = up_env_path(clean_env)
    path.parent.mkdir(parents=True)
    path.write_text(f"{PID_KEY}={os.getpid()}\n{STARTED_KEY}=12345.0\nALIPAY_APP_ID=stale\n")
    assert read_up_env(path) is None
    assert Settings(state_dir=clean_env).alipay_app_id is None
