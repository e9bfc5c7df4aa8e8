"""Intake API keys against real PostgreSQL and Redis: hashed storage, the service and the CLI,
revocation, expiry, rotation with a grace period, hashed API_KEYS entries, and signed requests
(every failure is a 401 naming the header, and stores nothing)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlalchemy import func, make_url, select, text

from domain.errors import ConflictError, NotFound, ValidationError
from models import ApiKey, Order
from services import api_keys
from services.unit_of_work import unit_of_work
from settings import get_settings
from tests.conftest import order_message
from tests.helpers import pg_dump_for_server

ENCRYPTION_KEY = Fernet.generate_key().decode()


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


def cipher() -> api_keys.SecretCipher:
    found = api_keys.SecretCipher.from_setting(get_settings().key_encryption_key)
    assert found is not None
    return found


def create(source="shop-a", *, require_signature=False, expires_in=None, with_secret=True):
    with unit_of_work() as s:
        return api_keys.create_key(
            s, source=source, now=datetime.now(UTC), expires_in=expires_in,
            require_signature=require_signature, cipher=cipher() if with_secret else None,
        )  # fmt: skip


def orders() -> int:
    with unit_of_work() as s:
        return s.scalar(select(func.count()).select_from(Order))


def sign(secret, ts, nonce, method, target, body):
    """The documented wire format, computed here independently of the service."""
    payload = f"{ts}\n{nonce}\n{method}\n{target}\n{hashlib.sha256(body).hexdigest()}"
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def signed_headers(key, *, body=b"", method="POST", target="/v1/orders", ts=None, nonce=None,
                   secret=None):  # fmt: skip
    ts = str(int(time.time())) if ts is None else str(ts)
    nonce = nonce or secrets.token_urlsafe(18)
    return {
        "Content-Type": "application/json",
        "X-API-Key": key.api_key,
        "X-Timestamp": ts,
        "X-Nonce": nonce,
        "X-Signature": sign(secret or key.signing_secret, ts, nonce, method, target, body),
    }


def post_order(client, key_or_headers, body=None):
    raw = json.dumps(body or order_message(source="shop-a")).encode()
    headers = key_or_headers if isinstance(key_or_headers, dict) else {
        "Content-Type": "application/json", "X-API-Key": key_or_headers}  # fmt: skip
    return client.post("/v1/orders", content=raw, headers=headers)


def post_signed(client, key, body=None, **kw):
    raw = json.dumps(body or order_message(source=key.source)).encode()
    return client.post("/v1/orders", content=raw, headers=signed_headers(key, body=raw, **kw))


def rejected(r, field, reason_part):
    assert r.status_code == 401, r.text
    body = r.json()
    assert body["error"] == "unauthorized"
    assert body["details"][0]["field"] == field, body
    assert reason_part in body["details"][0]["reason"], body
    return body


# --- storage and the service --------------------------------------------------------------------


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


# --- keys over HTTP -----------------------------------------------------------------------------


def test_database_key_is_accepted_and_bound_to_its_source(client):
    key = create("shop-a")
    assert post_order(client, key.api_key).status_code == 202
    r = post_order(client, key.api_key, order_message(source="shop-b"))
    assert r.status_code == 403 and r.json()["details"][0]["field"] == "source"
    r = client.get(
        f"/v1/orders/{'0' * 8}-0000-0000-0000-{'0' * 12}", headers={"X-API-Key": key.api_key}
    )
    assert r.status_code == 404
    assert orders() == 1


def test_wrong_secret_and_unknown_id_get_the_same_answer(client):
    key = create("shop-a")
    forged = key.api_key[:-4] + ("AAAA" if not key.api_key.endswith("AAAA") else "BBBB")
    unknown = "of_0123456789abcdef_" + secrets.token_urlsafe(32)
    for presented in (forged, unknown, "of_short", ""):
        r = post_order(client, presented)
        rejected(r, "X-API-Key", "missing" if presented == "" else "unknown API key")
        assert r.json()["message"] == "missing or invalid X-API-Key"
    assert orders() == 0


def test_revoked_and_expired_keys_are_rejected(client):
    revoked, expired = create("shop-a"), create("shop-a", expires_in=timedelta(seconds=1))
    assert post_order(client, revoked.api_key).status_code == 202
    assert post_order(client, expired.api_key).status_code == 202
    with unit_of_work() as s:
        api_keys.revoke_key(s, revoked.key_id, now=datetime.now(UTC))
    time.sleep(1.1)
    rejected(post_order(client, revoked.api_key), "X-API-Key", f"key {revoked.key_id} was revoked")
    rejected(post_order(client, expired.api_key), "X-API-Key", f"key {expired.key_id} expired")
    assert orders() == 2


def test_revocation_takes_effect_within_the_cache_ttl(client, env):
    env(API_KEY_CACHE_TTL_S="1")
    key = create("shop-a")
    assert post_order(client, key.api_key).status_code == 202  # now cached
    with unit_of_work() as s:
        api_keys.revoke_key(s, key.key_id, now=datetime.now(UTC))
    time.sleep(1.1)  # one TTL later, every process has reloaded the key
    rejected(post_order(client, key.api_key), "X-API-Key", "was revoked")
    assert orders() == 1


def test_rotation_grace_accepts_both_keys_then_only_the_new_one(client):
    old = create("shop-a")
    with unit_of_work() as s:
        new, _ = api_keys.rotate_key(
            s, old.key_id, now=datetime.now(UTC), grace=timedelta(seconds=2), cipher=cipher()
        )
    assert post_order(client, old.api_key).status_code == 202
    assert post_order(client, new.api_key).status_code == 202
    time.sleep(2.1)
    rejected(post_order(client, old.api_key), "X-API-Key", f"key {old.key_id} expired")
    assert post_order(client, new.api_key).status_code == 202
    assert orders() == 3


def test_hashed_api_keys_setting(client, env, api_key):
    plain = "deploy-" + secrets.token_hex(16)
    digest = hashlib.sha256(plain.encode()).hexdigest()
    env(API_KEYS=f"{get_settings().api_keys.get_secret_value()},shop-a:sha256:{digest}")
    assert plain not in get_settings().api_keys.get_secret_value()
    assert post_order(client, plain).status_code == 202
    r = post_order(client, plain, order_message(source="shop-b"))
    assert r.status_code == 403
    assert post_order(client, api_key).status_code == 202  # plaintext entries still work
    assert plain not in get_settings().api_key_map()
    rejected(post_order(client, digest), "X-API-Key", "unknown")  # the digest is not a key
    assert orders() == 2


def test_malformed_hashed_entry_stops_the_settings(env):
    env(API_KEYS="shop-a:sha256:not-hex")
    with pytest.raises(Exception, match="64 lower-case hex digits"):
        get_settings()


# --- signed requests ----------------------------------------------------------------------------


def test_signed_requests_are_accepted(client, caplog):
    caplog.set_level(logging.DEBUG)
    key = create("shop-a", require_signature=True)
    r = post_signed(client, key)
    assert r.status_code == 202, r.text
    order_id = r.json()["id"]
    target = f"/v1/orders/{order_id}?view=full"
    r = client.get(target, headers=signed_headers(key, method="GET", target=target))
    assert r.status_code == 200 and r.json()["id"] == order_id
    # A route with a JSON body model still parses it after the signature read the raw body.
    body = b'{"reason": "changed my mind"}'
    target = f"/v1/orders/{order_id}/cancel"
    r = client.post(target, content=body, headers=signed_headers(key, body=body, target=target))
    assert r.status_code == 202, r.text
    with unit_of_work() as s:
        assert s.get(Order, order_id).status == "CANCELLED"
    # Unsigned: refused, because this key must sign.
    rejected(post_order(client, key.api_key), "X-Timestamp", "missing")
    logged = caplog.text
    assert key.api_key.split("_", 2)[2] not in logged and key.signing_secret not in logged
    assert orders() == 1


def _case(name, key):
    raw = json.dumps(order_message(source="shop-a")).encode()
    h = signed_headers(key, body=raw)
    if name.startswith("missing "):
        del h[name.removeprefix("missing ")]
    elif name == "tampered body":
        raw = json.dumps(order_message(source="shop-a", quantity=9)).encode()
    elif name == "other path":
        h = signed_headers(key, body=raw, target="/v1/orders?x=1")
    elif name == "other method":
        h = signed_headers(key, body=raw, method="PUT")
    elif name == "wrong secret":
        h = signed_headers(key, body=raw, secret="ofs_" + secrets.token_urlsafe(32))
    elif name == "bad timestamp":
        h["X-Timestamp"] = "12.5"
    elif name == "short nonce":
        h = signed_headers(key, body=raw, nonce="abc")
    elif name == "non-hex signature":
        h["X-Signature"] = "z" * 64
    return raw, h


@pytest.mark.parametrize(
    ("case", "field", "reason"),
    [
        ("missing X-Signature", "X-Signature", "missing"),
        ("missing X-Nonce", "X-Nonce", "missing"),
        ("missing X-Timestamp", "X-Timestamp", "missing"),
        ("tampered body", "X-Signature", "does not match"),
        ("other path", "X-Signature", "does not match"),
        ("other method", "X-Signature", "does not match"),
        ("wrong secret", "X-Signature", "does not match"),
        ("bad timestamp", "X-Timestamp", "unix time"),
        ("short nonce", "X-Nonce", "16-64 characters"),
        ("non-hex signature", "X-Signature", "64 hex digits"),
    ],
)
def test_each_signing_failure_is_a_clear_401_and_stores_nothing(client, case, field, reason):
    key = create("shop-a", require_signature=True)
    raw, headers = _case(case, key)
    body = rejected(client.post("/v1/orders", content=raw, headers=headers), field, reason)
    assert body["message"] == "request signature rejected"
    assert orders() == 0


def test_replayed_nonce_is_rejected(client):
    key = create("shop-a", require_signature=True)
    raw = json.dumps(order_message(source="shop-a")).encode()
    headers = signed_headers(key, body=raw)
    assert client.post("/v1/orders", content=raw, headers=headers).status_code == 202
    replay = client.post("/v1/orders", content=raw, headers=headers)
    rejected(replay, "X-Nonce", "already used")
    # The same nonce on another request (new body, new signature) is a replay too.
    other = json.dumps(order_message(source="shop-a")).encode()
    again = signed_headers(key, body=other, nonce=headers["X-Nonce"])
    rejected(client.post("/v1/orders", content=other, headers=again), "X-Nonce", "already used")
    assert orders() == 1


@pytest.mark.parametrize("sign_of", [1, -1])
def test_timestamp_skew_in_both_directions(client, sign_of):
    key = create("shop-a", require_signature=True)
    window = get_settings().signature_window_s
    assert window == 300
    now = int(time.time())
    r = post_signed(client, key, ts=now + sign_of * (window + 15))
    rejected(r, "X-Timestamp", "ahead of" if sign_of > 0 else "behind")
    assert "allowed skew is 300s" in r.json()["details"][0]["reason"]
    assert orders() == 0
    assert post_signed(client, key, ts=now + sign_of * (window - 15)).status_code == 202
    assert orders() == 1


def test_signature_headers_are_checked_even_when_not_required(client):
    key = create("shop-a")  # can sign, need not
    assert post_order(client, key.api_key).status_code == 202
    assert post_signed(client, key).status_code == 202
    bad = json.dumps(order_message(source="shop-a")).encode()
    headers = signed_headers(key, body=b"something else")
    rejected(
        client.post("/v1/orders", content=bad, headers=headers), "X-Signature", "does not match"
    )
    assert orders() == 2


def test_global_requirement_covers_every_key(client, env, api_key):
    env(REQUIRE_SIGNED_REQUESTS="true")
    key, unsigned_key = create("shop-a"), create("shop-a", with_secret=False)
    rejected(post_order(client, key.api_key), "X-Timestamp", "missing")
    rejected(post_order(client, api_key), "X-Signature", "API_KEYS cannot sign")
    rejected(post_signed(client, unsigned_key, secret="ofs_x"), "X-Signature", "no signing secret")
    assert orders() == 0
    assert post_signed(client, key).status_code == 202
    assert orders() == 1


def test_unreachable_nonce_store_fails_closed(client, env):
    from workers.connections import redis_client

    key = create("shop-a", require_signature=True)
    env(REDIS_URL="redis://127.0.0.1:9/0")  # nothing listens on the discard port
    redis_client.cache_clear()
    try:
        r = post_signed(client, key)
    finally:
        redis_client.cache_clear()
    assert r.status_code == 503 and r.json()["details"][0]["field"] == "X-Nonce"
    assert orders() == 0


# --- the CLI ------------------------------------------------------------------------------------


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "apikeys", *args],
        capture_output=True, text=True, timeout=120, input=stdin,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip


def shown(run: subprocess.CompletedProcess[str], what: str) -> str:
    match = re.search(rf"^{what} \(shown once\): (\S+)$", run.stdout, re.M)
    assert match, run.stdout
    return match.group(1)


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
