"""Fixtures for the intake API-key tests: settings set per test (an encryption key for signing
secrets, no key cache unless a test asks for one) and a client of the real app."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from settings import get_settings
from tests.integration.api_keys.support import ENCRYPTION_KEY


@pytest.fixture
def env(monkeypatch):
    """Set settings for this test (``env(NAME="value")``); restored, and re-read, afterwards."""
    from api.auth import _cache_for

    def apply(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        _cache_for.cache_clear()

    apply(KEY_ENCRYPTION_KEY=ENCRYPTION_KEY, API_KEY_CACHE_TTL_S="0")
    yield apply
    monkeypatch.undo()
    get_settings.cache_clear()
    _cache_for.cache_clear()


@pytest.fixture
def client(db, env):
    from api.app import create_app

    with TestClient(create_app()) as c:
        yield c
