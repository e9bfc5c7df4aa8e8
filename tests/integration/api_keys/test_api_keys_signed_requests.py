"""Signed intake requests against real PostgreSQL and Redis: accepted when signed by the
documented wire format; every failure (missing header, tampered body, other path or method,
wrong secret, bad timestamp or nonce, replayed nonce, skew) is a 401 naming the header and
stores nothing; an unreachable nonce store fails closed."""

from __future__ import annotations

import json
import logging
import secrets
import time

import pytest

from models import Order
from services.unit_of_work import unit_of_work
from settings import get_settings
from tests.conftest import order_message
from tests.integration.api_keys.support import (
    create,
    orders,
    post_order,
    post_signed,
    rejected,
    signed_headers,
)


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
