"""Intake API keys over HTTP, against real PostgreSQL: a database key is bound to its source,
a wrong secret and an unknown id get the same answer, revoked and expired keys are refused
(within the cache TTL), rotation has a grace period, and ``API_KEYS`` may hold hashes.

No test waits for time to pass: expiry is reached by moving the stored keys' times back
(:func:`~tests.integration.api_keys.support.age_keys`), and the key cache's TTL by moving the
cache's own clock (``KeyCache.clock``)."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

import pytest

from services import api_keys
from services.unit_of_work import unit_of_work
from settings import get_settings
from tests.conftest import order_message
from tests.integration.api_keys.support import (
    age_keys,
    cipher,
    create,
    orders,
    post_order,
    rejected,
)


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
    revoked, expired = create("shop-a"), create("shop-a", expires_in=timedelta(hours=1))
    assert post_order(client, revoked.api_key).status_code == 202
    assert post_order(client, expired.api_key).status_code == 202
    with unit_of_work() as s:
        api_keys.revoke_key(s, revoked.key_id, now=datetime.now(UTC))
    age_keys(timedelta(hours=1))  # the hour is up
    rejected(post_order(client, revoked.api_key), "X-API-Key", f"key {revoked.key_id} was revoked")
    rejected(post_order(client, expired.api_key), "X-API-Key", f"key {expired.key_id} expired")
    assert orders() == 2


def test_revocation_takes_effect_within_the_cache_ttl(client, env, monkeypatch):
    from api.auth import key_cache

    env(API_KEY_CACHE_TTL_S="1")
    cache_now = [0.0]  # the cache's clock, moved by hand (set while the cache is empty)
    monkeypatch.setattr(key_cache(), "clock", lambda: cache_now[0])
    key = create("shop-a")
    assert post_order(client, key.api_key).status_code == 202  # now cached
    with unit_of_work() as s:
        api_keys.revoke_key(s, key.key_id, now=datetime.now(UTC))
    cache_now[0] += 1.0  # one TTL later, every process has reloaded the key
    rejected(post_order(client, key.api_key), "X-API-Key", "was revoked")
    assert orders() == 1


def test_rotation_grace_accepts_both_keys_then_only_the_new_one(client):
    old, grace = create("shop-a"), timedelta(hours=1)
    with unit_of_work() as s:
        new, _ = api_keys.rotate_key(
            s, old.key_id, now=datetime.now(UTC), grace=grace, cipher=cipher()
        )
    assert post_order(client, old.api_key).status_code == 202
    assert post_order(client, new.api_key).status_code == 202
    age_keys(grace)  # the grace period is over
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
