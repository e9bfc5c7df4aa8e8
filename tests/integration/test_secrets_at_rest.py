"""Secrets at rest on real PostgreSQL, with deliveries over real HTTP to a local receiver.

Callback secrets are stored as Fernet tokens under ``KEY_ENCRYPTION_KEY`` and decrypted to sign;
registration without the key is refused; ``reencrypt`` (service and ``orderflow keys reencrypt``)
moves every callback secret, legacy clear ones included, and every API-key signing secret to
the first key, in batches, beside a transaction holding a row; it never overwrites what it
cannot decrypt. Migration 0009 keeps clear rows as they are and makes room for a token.

The session's key comes from tests/conftest.py (generated per run); the other keys here are
generated per test.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr
from sqlalchemy import create_engine, text

from domain.errors import ValidationError
from models.db import get_engine
from services import api_keys, callbacks
from services.api_keys import SecretCipher
from services.secrets_at_rest import SecretUnavailable, reencrypt
from services.unit_of_work import unit_of_work
from settings import get_settings
from tests.conftest import wait_until
from tests.integration.callbacks_support import (
    SECRET,
    Received,
    cipher,
    deliveries,
    endpoint,
    new_order,
    register,
    run_deliveries,
)
from tests.integration.callbacks_support import cli as callbacks_cli
from tests.integration.test_migrations import fresh_database_url  # noqa: F401 - a fixture

HOOK = "http://127.0.0.1:9/hook"  # nobody listens: for rows that are never delivered here


def new_key() -> str:
    return Fernet.generate_key().decode()


def session_key() -> str:
    value = get_settings().key_encryption_key
    assert value is not None
    return value.get_secret_value()


@pytest.fixture
def key_setting(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Set ``KEY_ENCRYPTION_KEY`` for this test: ``key_setting(new, old)``, newest first, or
    ``key_setting()`` to unset it. Restored (and settings re-read) afterwards."""

    def apply(*keys: str) -> None:
        if keys:
            monkeypatch.setenv("KEY_ENCRYPTION_KEY", ",".join(keys))
        else:
            monkeypatch.delenv("KEY_ENCRYPTION_KEY", raising=False)
        get_settings.cache_clear()

    yield apply
    monkeypatch.undo()
    get_settings.cache_clear()


def stored(source: str) -> tuple[str, str]:
    """(secret column, secret_format) of the source's endpoint, as the database holds them."""
    with unit_of_work() as s:
        row = s.execute(
            text("SELECT secret, secret_format FROM callback_endpoints WHERE source = :source"),
            {"source": source},
        ).one()
    return row.secret, row.secret_format


def insert_legacy(source: str, url: str, secret: str) -> int:
    """A row as code before migration 0009 wrote it: the secret in clear, no format given."""
    with unit_of_work() as s:
        return int(
            s.scalar(
                text(
                    "INSERT INTO callback_endpoints (source, url, secret) "
                    "VALUES (:source, :url, :secret) RETURNING id"
                ),
                {"source": source, "url": url, "secret": secret},
            )
        )


def signing_token(key_id: str) -> str:
    with unit_of_work() as s:
        return str(
            s.scalar(text("SELECT signing_secret FROM api_keys WHERE key_id = :k"), {"k": key_id})
        )


def signed_by(received: Received, secret: str) -> bool:
    """The receiver's check (the reference implementation receivers are given)."""
    header = received.headers["X-Orderflow-Signature"]
    return callbacks.verify_signature(SecretStr(secret), header, received.body, now=time.time())


def deliver_one(receiver: Any, source: str, secret: str) -> None:
    """A status change of a new order of ``source`` reaches the receiver, signed with ``secret``."""
    before = len(receiver.at(f"/{source}"))
    new_order(source)
    run_deliveries()
    got = receiver.at(f"/{source}")
    assert len(got) == before + 1 and signed_by(got[-1], secret)


def create_api_key(key_cipher: SecretCipher) -> api_keys.IssuedKey:
    with unit_of_work() as s:
        return api_keys.create_key(s, source="shop-a", now=datetime.now(UTC), cipher=key_cipher)


def by_table(report: Any) -> dict[str, tuple[int, int, list[str]]]:
    return {t.table: (t.moved, t.current, t.undecryptable) for t in report.tables}


# -- registration and delivery ---------------------------------------------------------------------


def test_a_registered_secret_is_stored_encrypted_and_signs_deliveries(catalog, receiver):
    catalog({"A": 5})
    register("web", receiver.url + "/web")
    secret, fmt = stored("web")
    assert fmt == "fernet" and SECRET not in secret
    assert cipher().decrypt_or_none(secret) == SECRET
    deliver_one(receiver, "web", SECRET)


def test_registration_without_the_key_is_refused_and_writes_nothing(db, key_setting):
    key_setting()  # KEY_ENCRYPTION_KEY unset
    with pytest.raises(ValidationError) as refused, unit_of_work() as s:
        callbacks.register_endpoint(s, "web", HOOK, SecretStr(SECRET), cipher=None)
    assert refused.value.field == "KEY_ENCRYPTION_KEY"
    assert refused.value.reason == (
        "must be set to register a callback endpoint (its secret is stored encrypted with it)"
    )
    run = callbacks_cli("register", "web", HOOK)
    assert run.returncode == 1 and "KEY_ENCRYPTION_KEY: must be set" in run.stderr
    assert "Traceback" not in run.stderr
    key_setting("not a fernet key")
    bad = callbacks_cli("register", "web", HOOK)
    assert bad.returncode == 1 and "KEY_ENCRYPTION_KEY" in bad.stderr
    assert "not a fernet key" not in bad.stderr  # what is wrong, never the value
    with unit_of_work() as s:
        assert s.scalar(text("SELECT count(*) FROM callback_endpoints")) == 0


def test_the_admin_api_refuses_registration_without_the_key(db, key_setting):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from api.callbacks import router
    from api.catalog import admin_api_key_setting
    from api.errors import install_error_handlers

    app = FastAPI()
    app.include_router(router)
    install_error_handlers(app)
    app.dependency_overrides[admin_api_key_setting] = lambda: SecretStr("admin-key")
    key_setting()
    with TestClient(app) as c:
        put = c.put("/v1/admin/callbacks/web", json={"url": HOOK},
                    headers={"X-Admin-Key": "admin-key"})  # fmt: skip
    assert put.status_code == 422
    assert put.json()["details"][0]["field"] == "KEY_ENCRYPTION_KEY"
    assert "secret" not in put.json()  # nothing was stored, so no generated secret is shown


def test_a_secret_no_key_decrypts_fails_delivery_as_our_fault(catalog, receiver, caplog):
    catalog({"A": 5})
    foreign = SecretCipher([new_key()])  # a key this deployment does not have
    with unit_of_work() as s:
        endpoint_id = callbacks.register_endpoint(
            s, "lost", receiver.url + "/lost", SecretStr(SECRET), cipher=foreign
        ).id
    token, _ = stored("lost")
    new_order("lost")
    with caplog.at_level(logging.DEBUG), pytest.raises(SecretUnavailable) as failed:
        run_deliveries()
    message = str(failed.value)
    assert f"callback endpoint {endpoint_id}" in message and "KEY_ENCRYPTION_KEY" in message
    assert not failed.value.retryable  # a retry cannot bring the key back: the task fails
    assert SECRET not in message and token not in message
    assert SECRET not in caplog.text and token not in caplog.text
    assert receiver.at("/lost") == []
    (row,) = deliveries()
    assert row.status == "PENDING" and row.attempts == 0  # nothing counted against the receiver
    assert endpoint("lost").consecutive_failures == 0 and endpoint("lost").paused_at is None


# -- rotation --------------------------------------------------------------------------------------


def test_rotation_moves_every_secret_then_the_old_key_can_go(catalog, receiver, key_setting):
    catalog({"A": 10})
    old, new = session_key(), new_key()
    register("web", receiver.url + "/web")
    register("shop", receiver.url + "/shop", secret="another-secret-0123456789")
    issued = create_api_key(cipher())
    assert issued.signing_secret is not None

    key_setting(new, old)  # the new key first: it encrypts, both decrypt
    report = reencrypt(unit_of_work, cipher())
    assert by_table(report) == {"callback_endpoints": (2, 0, []), "api_keys": (1, 0, [])}
    only_new = SecretCipher([new])
    assert only_new.is_current(stored("web")[0]) and only_new.is_current(stored("shop")[0])
    assert only_new.decrypt_or_none(signing_token(issued.key_id)) == issued.signing_secret

    again = reencrypt(unit_of_work, cipher())  # idempotent: everything is already current
    assert by_table(again) == {"callback_endpoints": (0, 2, []), "api_keys": (0, 1, [])}

    key_setting(new)  # the old key dropped: every secret still reads
    deliver_one(receiver, "web", SECRET)
    deliver_one(receiver, "shop", "another-secret-0123456789")
    assert only_new.decrypt(signing_token(issued.key_id)) == issued.signing_secret


def test_a_legacy_clear_row_delivers_and_is_encrypted_by_reencrypt(catalog, receiver):
    catalog({"A": 5})
    legacy = "legacy-secret-in-clear-0123"
    insert_legacy("old", receiver.url + "/old", legacy)
    assert stored("old") == (legacy, "clear")  # the server default marks it
    deliver_one(receiver, "old", legacy)  # before reencrypt: still signs

    report = reencrypt(unit_of_work, cipher())
    assert by_table(report)["callback_endpoints"] == (1, 0, [])
    secret, fmt = stored("old")
    assert fmt == "fernet" and legacy not in secret
    assert cipher().decrypt_or_none(secret) == legacy
    deliver_one(receiver, "old", legacy)  # after: the same secret, now decrypted
    assert by_table(reencrypt(unit_of_work, cipher()))["callback_endpoints"] == (0, 1, [])


def test_undecryptable_secrets_are_reported_and_left_untouched(db, key_setting):
    old, new = session_key(), new_key()
    foreign = SecretCipher([new_key()])
    register("good", HOOK)
    with unit_of_work() as s:
        lost_id = callbacks.register_endpoint(s, "lost", HOOK, SecretStr(SECRET), cipher=foreign).id
    lost_key = create_api_key(foreign)
    before = stored("lost"), signing_token(lost_key.key_id)

    key_setting(new, old)
    report = reencrypt(unit_of_work, cipher())
    assert by_table(report) == {
        "callback_endpoints": (1, 0, [str(lost_id)]),
        "api_keys": (0, 0, [lost_key.key_id]),
    }
    assert report.undecryptable == 2
    assert (stored("lost"), signing_token(lost_key.key_id)) == before
    assert SecretCipher([new]).is_current(stored("good")[0])


def test_batches_smaller_than_the_table(db, key_setting):
    old, new = session_key(), new_key()
    for i in range(5):
        register(f"src-{i}", HOOK, secret=f"secret-number-{i:02d}-abcdef")
    for i in range(2):
        insert_legacy(f"legacy-{i}", HOOK, f"legacy-secret-{i:02d}-abcdef")
    keys = [create_api_key(cipher()) for _ in range(3)]

    key_setting(new, old)
    report = reencrypt(unit_of_work, cipher(), batch_size=2)
    assert by_table(report) == {"callback_endpoints": (7, 0, []), "api_keys": (3, 0, [])}
    only_new = SecretCipher([new])
    for i in range(5):
        assert only_new.decrypt_or_none(stored(f"src-{i}")[0]) == f"secret-number-{i:02d}-abcdef"
    for i in range(2):
        assert only_new.decrypt_or_none(stored(f"legacy-{i}")[0]) == f"legacy-secret-{i:02d}-abcdef"
    for k in keys:
        assert only_new.decrypt_or_none(signing_token(k.key_id)) == k.signing_secret
    again = reencrypt(unit_of_work, cipher(), batch_size=3)
    assert by_table(again) == {"callback_endpoints": (0, 7, []), "api_keys": (0, 3, [])}


def _waiting_for_a_lock() -> bool:
    with get_engine().connect() as conn:
        return bool(
            conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
            )
        )


def test_a_row_held_by_live_traffic_is_moved_once_released(db, key_setting):
    old, new = session_key(), new_key()
    ids = [register(f"src-{i}", HOOK) for i in range(3)]
    key_setting(new, old)
    only_new = SecretCipher([new])
    result: dict[str, Any] = {}
    holder = get_engine().connect()
    held = holder.begin()
    holder.execute(text("SELECT id FROM callback_endpoints WHERE id = :id FOR UPDATE"),
                   {"id": ids[1]})  # fmt: skip
    worker = threading.Thread(
        target=lambda: result.update(report=reencrypt(unit_of_work, cipher(), batch_size=2))
    )
    try:
        worker.start()
        wait_until(_waiting_for_a_lock, 30)  # the batches passed it; now it waits for that row
        assert only_new.is_current(stored("src-0")[0]) and only_new.is_current(stored("src-2")[0])
        assert not only_new.is_current(stored("src-1")[0])
    finally:
        held.commit()
        holder.close()
        worker.join(60)
    assert by_table(result["report"])["callback_endpoints"] == (3, 0, [])
    assert only_new.is_current(stored("src-1")[0])


# -- the command -----------------------------------------------------------------------------------


def keys_cli(*args: str, key: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KEY_ENCRYPTION_KEY"}
    if key is not None:
        env["KEY_ENCRYPTION_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "keys", *args],
        capture_output=True, text=True, timeout=120, env={**env, "COLUMNS": "200"},
    )  # fmt: skip


def test_the_reencrypt_command_reports_counts_and_fails_on_undecryptable(db):
    old, new = session_key(), new_key()
    register("web", HOOK)
    insert_legacy("old", HOOK, "legacy-secret-in-clear-0123")
    create_api_key(cipher())

    run = keys_cli("reencrypt", "--batch-size", "1", key=f"{new},{old}")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "callback_endpoints: moved 2, already current 0, undecryptable 0" in run.stdout
    assert "api_keys: moved 1, already current 0, undecryptable 0" in run.stdout
    again = keys_cli("reencrypt", key=new)  # the old key dropped: nothing left under it
    assert again.returncode == 0, again.stdout + again.stderr
    assert "callback_endpoints: moved 0, already current 2, undecryptable 0" in again.stdout
    assert "api_keys: moved 0, already current 1, undecryptable 0" in again.stdout

    insert_legacy("later", HOOK, "legacy-secret-in-clear-4567")
    before = stored("web"), stored("old")
    lost = keys_cli("reencrypt", key=old)  # only the dropped key: the new tokens cannot be read
    assert lost.returncode == 1
    ids = f"{endpoint('web').id}, {endpoint('old').id}"
    assert f"callback_endpoints: moved 1, already current 0, undecryptable 2 (ids: {ids})" in (
        lost.stdout
    )  # the clear row is encrypted under the given key; the others are left as they were
    assert "api_keys: moved 0, already current 0, undecryptable 1 (ids: " in lost.stdout
    assert "cannot be decrypted" in lost.stderr and "Traceback" not in lost.stderr
    assert (stored("web"), stored("old")) == before

    unset = keys_cli("reencrypt", key=None)
    assert unset.returncode == 1 and "KEY_ENCRYPTION_KEY: must be set" in unset.stderr


# -- the migration ---------------------------------------------------------------------------------


def test_migration_0009_keeps_clear_rows_and_fits_a_token(fresh_database_url):  # noqa: F811
    def upgrade(revision: str) -> None:
        run = subprocess.run(
            [sys.executable, "-m", "cli.main", "db", "upgrade", revision],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "DATABASE_URL": fresh_database_url},
        )  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr

    upgrade("0008")
    engine = create_engine(fresh_database_url)
    longest = "x" * 200
    try:
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO callback_endpoints (source, url, secret) VALUES ('a', :u, :s)"),
                {"u": HOOK, "s": longest},
            )
        upgrade("0009")
        with engine.begin() as conn:
            row = conn.execute(text("SELECT secret, secret_format FROM callback_endpoints")).one()
            assert tuple(row) == (longest, "clear")
            token = cipher().encrypt("é" * 200)  # 200 characters, 400 bytes: the longest token
            conn.execute(
                text("UPDATE callback_endpoints SET secret = :t, secret_format = 'fernet'"),
                {"t": token},
            )
            assert conn.scalar(text("SELECT secret FROM callback_endpoints")) == token
    finally:
        engine.dispose()
