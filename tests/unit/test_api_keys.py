"""Pure parts of intake authentication: key parsing, API_KEYS entries, the lookup cache's TTL,
and signature verification with an in-memory nonce store."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest

from domain.config_values import parse_api_keys
from services.api_keys import (
    AuthRejected,
    KeyCache,
    StoredKey,
    check_key,
    hash_secret,
    parse_api_key,
)
from services.request_signing import sign_request, verify_signed_request

SECRET = "s" * 43
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def stored(**kw):
    values = {
        "key_id": "0123456789abcdef",
        "source": "shop-a",
        "secret_hash": hash_secret(SECRET),
        "signing_secret": None,
        "signing_required": False,
        "expires_at": None,
        "revoked_at": None,
    }
    return StoredKey(**{**values, **kw})


class Nonces:
    def __init__(self):
        self.seen = {}

    def claim(self, key_id, nonce, ttl_s):
        if (key_id, nonce) in self.seen:
            return False
        self.seen[(key_id, nonce)] = ttl_s
        return True


def test_parse_api_key():
    assert parse_api_key(f"of_0123456789abcdef_{SECRET}") == ("0123456789abcdef", SECRET)
    for bad in (
        "",
        "of_",
        f"of_0123_{SECRET}",
        f"xx_0123456789abcdef_{SECRET}",
        "of_0123456789abcdef_short",
    ):
        assert parse_api_key(bad) is None


def test_api_keys_entries():
    digest = "a" * 64
    assert parse_api_keys(f"k1, shop:k2, sha256:{digest}, shop-b:sha256:{digest},,") == [
        ("*", "k1", False),
        ("shop", "k2", False),
        ("*", digest, True),
        ("shop-b", digest, True),
    ]


def test_check_key_states():
    assert check_key(stored(), SECRET, now=NOW).source == "shop-a"
    with pytest.raises(AuthRejected, match="unknown API key"):
        check_key(stored(), "t" * 43, now=NOW)
    with pytest.raises(AuthRejected, match="unknown API key"):
        check_key(None, SECRET, now=NOW)
    with pytest.raises(AuthRejected, match="revoked"):
        check_key(stored(revoked_at=NOW), SECRET, now=NOW)
    with pytest.raises(AuthRejected, match="expired"):
        check_key(stored(expires_at=NOW), SECRET, now=NOW)
    assert check_key(stored(expires_at=NOW + timedelta(seconds=1)), SECRET, now=NOW)


def test_cache_keeps_a_snapshot_for_its_ttl_only():
    clock = [100.0]
    cache = KeyCache(5, clock=lambda: clock[0])
    cache.put(stored())
    clock[0] += 4.9
    assert cache.get("0123456789abcdef") is not None
    clock[0] += 0.1
    assert cache.get("0123456789abcdef") is None
    off = KeyCache(0)
    off.put(stored())
    assert off.get("0123456789abcdef") is None


def _headers(secret="ofs_k", ts="1000", nonce="n" * 16, body=b"{}", target="/v1/orders"):
    sig = sign_request(secret, timestamp=ts, nonce=nonce, method="POST", path_with_query=target,
                       body=body)  # fmt: skip
    return {"X-Timestamp": ts, "X-Nonce": nonce, "X-Signature": sig}


def _verify(headers, *, now=1000.0, body=b"{}", nonces=None):
    verify_signed_request(key_id="k", signing_secret="ofs_k", headers=headers, method="POST",
                          path_with_query="/v1/orders", body=body, now=now, window_s=300,
                          nonces=nonces or Nonces())  # fmt: skip


def test_signature_payload_is_the_documented_one():
    body = b'{"a": 1}'
    payload = f"1000\n{'n' * 16}\nPOST\n/v1/orders?x=1\n{hashlib.sha256(body).hexdigest()}"
    expected = hmac.new(b"ofs_k", payload.encode(), hashlib.sha256).hexdigest()
    assert _headers(body=body, target="/v1/orders?x=1")["X-Signature"] == expected


def test_signature_verification_order_and_nonce():
    nonces = Nonces()
    _verify(_headers(), nonces=nonces)
    assert nonces.seen == {("k", "n" * 16): 600}  # twice the window
    with pytest.raises(AuthRejected, match="already used"):
        _verify(_headers(), nonces=nonces)
    with pytest.raises(AuthRejected, match="does not match"):  # checked before the nonce
        _verify(_headers(), body=b"[]", nonces=nonces)
    with pytest.raises(AuthRejected, match="301s ahead of"):
        _verify(_headers(ts="1301"))
    with pytest.raises(AuthRejected, match="301s behind"):
        _verify(_headers(ts="699"))
    _verify(_headers(ts="1300"))
    _verify(_headers(ts="700"))
