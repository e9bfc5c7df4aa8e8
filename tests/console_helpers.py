"""Shared by the console's tests: an app with the admin key and the session clock under the
test's control, operator accounts, logging in, and the CSRF token of a page.

Import the fixtures (``admin_key``, ``clock``, ``app``) into a test module to use them.
"""

from __future__ import annotations

import re
import secrets

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.catalog import admin_api_key_setting
from api.console_auth import console_clock
from domain.operators import Role
from services import operators
from services.unit_of_work import unit_of_work

PASSWORD = "Correct-Horse-42"


class Clock:
    """The console's clock (epoch seconds), moved by the test."""

    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def admin_key() -> str:
    return f"adm-{secrets.token_urlsafe(24)}"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(db, admin_key, clock):
    from api.app import create_app

    app = create_app()
    app.dependency_overrides[admin_api_key_setting] = lambda: SecretStr(admin_key)
    app.dependency_overrides[console_clock] = clock
    return app


def client_for(app) -> TestClient:
    return TestClient(app, follow_redirects=False)


def make_operator(name: str, role: Role) -> None:
    with unit_of_work() as s:
        operators.create(s, name, PASSWORD, role)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF token on the page"
    return match.group(1)


def log_in(c: TestClient, name: str, password: str = PASSWORD) -> str:
    """Log in and return the CSRF token of the new session."""
    r = c.post("/console/login", data={"name": name, "password": password})
    assert r.status_code == 303, r.text
    return csrf_of(c.get("/console/attention").text)
