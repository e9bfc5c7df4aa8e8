"""Flower started the way docker-compose.yml starts it: its credentials in a Docker secret file
named by FLOWER_BASIC_AUTH_FILE (settings.py), none in FLOWER_BASIC_AUTH."""

from __future__ import annotations

import os
import subprocess
import sys

import requests

from settings import PROJECT_ROOT
from workers.flower import flower_argv
from workers.procs import free_port, wait_http


def test_flower_takes_its_credentials_from_a_secret_file(procs, tmp_path, monkeypatch):
    monkeypatch.delenv("FLOWER_BASIC_AUTH", raising=False)
    secret = tmp_path / "flower_basic_auth"
    secret.write_text("ops:from-a-secret-file\n")
    env = {"FLOWER_BASIC_AUTH_FILE": str(secret)}
    port = free_port()
    flower = procs.start("flower", flower_argv(port), env=env)
    wait_http(f"http://127.0.0.1:{port}/healthcheck", flower, timeout_s=90.0)
    url = f"http://127.0.0.1:{port}/healthcheck"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, auth=("ops", "from-a-secret-file"), timeout=10).text == "OK"
    check = subprocess.run(
        [sys.executable, "-m", "workers.flower", "healthcheck", "--port", str(port)],
        env={**os.environ, **env}, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
