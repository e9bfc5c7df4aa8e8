"""Managing intake API keys against real PostgreSQL: only hashes and ciphertext are stored, the
service creates, lists, revokes and rotates keys, signing secrets need an encryption key, and
the ``orderflow apikeys`` CLI does the same with one-line errors."""

from __future__ import annotations

import hashlib
import re
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, make_url, select, text

from domain.errors import ConflictError, NotFound, ValidationError
from models import ApiKey
from services import api_keys
from services.unit_of_work import unit_of_work
from tests.helpers import pg_dump_for_server
from tests.integration.api_keys.support import (
    cipher,
    cli,
    create,
    orders,
    post_signed,
    rejected,
    shown,
)


@pytest.mark.configured
def test_only_hashes_and_ciphertext_reach_the_database(db, env, services):
    key = create(require_signature=True)
    secret = key.api_key.split("_", 2)[2]
    with unit_of_work() as s:
        row = s.get(ApiKey, key.key_id)
        assert row.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
        assert row.signing_secret and key.signing_secret not in row.signing_secret
        assert cipher().decrypt(row.signing_secret) == key.signing_secret
        dump = str(s.execute(text("SELECT api_keys.*::text FROM api_keys")).all())
    assert secret not in dump and key.api_key not in dump and key.signing_secret not in dump
    assert key.api_key not in repr(key) and key.signing_secret not in repr(key)
    # The whole database, as a backup would hold it.
    url = make_url(services["database_url"]).set(drivername="postgresql")
    dump_cmd = [pg_dump_for_server(), "--data-only", url.render_as_string(hide_password=False)]
    out = subprocess.run(dump_cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    assert key.key_id in out
    assert secret not in out and key.signing_secret not in out


def test_service_create_list_revoke_rotate(db, env):
    now = datetime.now(UTC)
    first = create("shop-a", expires_in=timedelta(days=30))
    assert re.fullmatch(r"of_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", first.api_key)
    assert first.signing_secret.startswith("ofs_") and first.expires_at > now
    with unit_of_work() as s:
        new, old = api_keys.rotate_key(s, first.key_id, now=now, grace=timedelta(hours=2))
    assert new.source == "shop-a" and new.key_id != first.key_id and new.api_key != first.api_key
    assert old.replaced_by == new.key_id and old.expires_at == now + timedelta(hours=2)
    with unit_of_work() as s, pytest.raises(ConflictError, match="already rotated"):
        api_keys.rotate_key(s, first.key_id, now=now, grace=timedelta(hours=1))
    with unit_of_work() as s:
        info, changed = api_keys.revoke_key(s, new.key_id, now=now)
        assert changed and info.revoked_at == now
        _, changed = api_keys.revoke_key(s, new.key_id, now=now + timedelta(seconds=5))
        assert not changed
    with unit_of_work() as s, pytest.raises(ConflictError, match="revoked"):
        api_keys.rotate_key(s, new.key_id, now=now, grace=timedelta(hours=1))
    with unit_of_work() as s, pytest.raises(NotFound, match="no API key"):
        api_keys.revoke_key(s, "0123456789abcdef", now=now)
    with unit_of_work() as s:
        listed = {k.key_id: k for k in api_keys.list_keys(s, source="shop-a")}
    assert listed[first.key_id].state(now) == "rotating"
    assert listed[new.key_id].state(now) == "revoked"
    assert "api_key" not in api_keys.KeyInfo.__dataclass_fields__
    with unit_of_work() as s, pytest.raises(ValidationError, match="source"):
        api_keys.create_key(s, source="bad source", now=now)


def test_signature_requires_an_encryption_key(db, env):
    with unit_of_work() as s, pytest.raises(ValidationError) as exc:
        api_keys.create_key(s, source="shop-a", now=datetime.now(UTC), require_signature=True)
    assert exc.value.field == "KEY_ENCRYPTION_KEY" and "must be set" in exc.value.reason
    plain = create(with_secret=False)  # without one, keys are made with no signing secret
    assert plain.signing_secret is None


def test_cli_create_list_rotate_revoke(client):
    run = cli("create", "--source", "shop-a", "--expires-in-days", "30", "--require-signature")
    assert run.returncode == 0, run.stderr
    key, signing = shown(run, "api key"), shown(run, "signing secret")
    key_id = key.split("_")[1]
    assert "signature required" in run.stdout and run.stderr == ""
    signed = api_keys.IssuedKey(key_id, "shop-a", None, True, api_key=key, signing_secret=signing)
    assert post_signed(client, signed).status_code == 202

    listed = cli("list")
    assert listed.returncode == 0 and key_id in listed.stdout and "active" in listed.stdout
    assert key.split("_", 2)[2] not in listed.stdout and signing not in listed.stdout

    rotated = cli("rotate", key_id, "--grace-hours", "1")
    assert rotated.returncode == 0, rotated.stderr
    new_key, new_signing = shown(rotated, "api key"), shown(rotated, "signing secret")
    assert f"old key {key_id} stays valid until" in rotated.stdout
    new = api_keys.IssuedKey(new_key.split("_")[1], "shop-a", None, True, api_key=new_key,
                             signing_secret=new_signing)  # fmt: skip
    assert post_signed(client, signed).status_code == 202  # in the grace period
    assert post_signed(client, new).status_code == 202
    assert "rotating" in cli("list", "--source", "shop-a").stdout

    assert cli("revoke", key_id).returncode == 0
    rejected(post_signed(client, signed), "X-API-Key", "was revoked")
    assert "already revoked" in cli("revoke", key_id).stdout
    again = cli("rotate", key_id)
    assert again.returncode == 1 and "revoked" in again.stderr and "Traceback" not in again.stderr
    missing = cli("revoke", "0123456789abcdef")
    assert missing.returncode == 1 and "no API key" in missing.stderr
    assert orders() == 3


def test_cli_errors_are_one_line(db, env, monkeypatch):
    monkeypatch.delenv("KEY_ENCRYPTION_KEY")
    run = cli("create", "--source", "shop-a", "--require-signature")
    assert (
        run.returncode == 1 and "KEY_ENCRYPTION_KEY" in run.stderr and "must be set" in run.stderr
    )
    assert "Traceback" not in run.stderr
    run = cli("create", "--source", "bad source")
    assert run.returncode == 1 and "source:" in run.stderr
    plain = cli("create", "--source", "shop-a")  # no encryption key: no signing secret
    assert plain.returncode == 0 and "signing secret" not in plain.stdout
    with unit_of_work() as s:
        assert s.scalar(select(func.count()).select_from(ApiKey)) == 1


def test_cli_hash_prints_the_api_keys_form(db):
    run = cli("hash", stdin="my-key\n")
    assert run.returncode == 0
    assert run.stdout.strip() == "sha256:" + hashlib.sha256(b"my-key").hexdigest()
    assert cli("hash", stdin="").returncode == 1
