"""``<NAME>_FILE``: any setting's value read from a file (Docker secrets), see :class:`Settings`."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr
from pydantic_settings import SettingsError

from settings import Settings

SECRET = "s3cret-admin-key"


@pytest.fixture
def secret_file(tmp_path: Path):
    def write(name: str, content: str | bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    return write


def settings() -> Settings:
    return Settings(_env_file=None)  # type: ignore[call-arg]  # no developer's .env


def test_a_secret_from_a_file_without_its_trailing_newline(secret_file, monkeypatch):
    monkeypatch.setenv("ADMIN_API_KEY_FILE", str(secret_file("admin_api_key", SECRET + "\n")))
    value = settings().admin_api_key
    assert isinstance(value, SecretStr) and value.get_secret_value() == SECRET


def test_a_url_from_a_file_is_validated_like_the_variable(secret_file, monkeypatch):
    url = "postgresql://orderflow:pw@postgres:5432/orderflow"
    monkeypatch.delenv("DATABASE_URL", raising=False)  # the test session's own
    monkeypatch.setenv("DATABASE_URL_FILE", str(secret_file("database_url", url + "\r\n")))
    assert settings().database_url == "postgresql+psycopg2://orderflow:pw@postgres:5432/orderflow"


def test_an_int_from_a_file_and_its_bounds_still_apply(secret_file, monkeypatch):
    monkeypatch.setenv("DB_POOL_SIZE_FILE", str(secret_file("pool", "7\n")))
    assert settings().db_pool_size == 7
    monkeypatch.setenv("DB_POOL_SIZE_FILE", str(secret_file("pool", "0\n")))
    with pytest.raises(ValueError, match="db_pool_size"):
        settings()


def test_both_the_variable_and_its_file_is_an_error_naming_both(secret_file, monkeypatch):
    monkeypatch.setenv("ADMIN_API_KEY_FILE", str(secret_file("admin_api_key", SECRET)))
    monkeypatch.setenv("ADMIN_API_KEY", "another")
    with pytest.raises(SettingsError) as error:
        settings()
    assert "ADMIN_API_KEY and ADMIN_API_KEY_FILE are both set" in str(error.value)
    assert SECRET not in str(error.value) and "another" not in str(error.value)


def test_a_variable_in_an_env_file_conflicts_with_its_file_too(secret_file, monkeypatch):
    monkeypatch.setenv("ADMIN_API_KEY_FILE", str(secret_file("admin_api_key", SECRET)))
    env_file = secret_file(".env", "ADMIN_API_KEY=from-dotenv\n")
    with pytest.raises(SettingsError, match="ADMIN_API_KEY and ADMIN_API_KEY_FILE"):
        Settings(_env_file=env_file)  # type: ignore[call-arg]


def test_the_file_variable_may_sit_in_an_env_file(secret_file):
    key_file = secret_file("admin_api_key", SECRET)
    env_file = secret_file(".env", f"ADMIN_API_KEY_FILE={key_file}\n")
    value = Settings(_env_file=env_file).admin_api_key  # type: ignore[call-arg]
    assert value is not None and value.get_secret_value() == SECRET


def test_a_missing_file_is_an_error_naming_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("ADMIN_API_KEY_FILE", str(tmp_path / "absent"))
    with pytest.raises(SettingsError, match=r"^ADMIN_API_KEY_FILE: cannot read .*absent"):
        settings()


def test_an_unreadable_file_is_an_error_that_never_shows_its_content(secret_file, monkeypatch):
    monkeypatch.setenv("STRIPE_SECRET_KEY_FILE", str(secret_file("key", b"sk_\xff" + b"z" * 8)))
    with pytest.raises(SettingsError) as error:
        settings()
    assert str(error.value).startswith("STRIPE_SECRET_KEY_FILE: ")
    assert "sk_" not in str(error.value) and "zzz" not in str(error.value)
    assert error.value.__cause__ is None and error.value.__suppress_context__


def test_an_empty_file_variable_counts_as_unset(monkeypatch):
    monkeypatch.setenv("ADMIN_API_KEY_FILE", "")
    assert settings().admin_api_key is None


def test_a_setting_named_file_keeps_its_meaning(monkeypatch):
    """ALIPAY_APP_PRIVATE_KEY_FILE is a setting (a path), not the file of a setting."""
    monkeypatch.setenv("ALIPAY_APP_PRIVATE_KEY_FILE", "/run/secrets/alipay.pem")
    assert settings().alipay_app_private_key_file == Path("/run/secrets/alipay.pem")
