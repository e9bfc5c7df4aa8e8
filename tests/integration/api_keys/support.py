"""Helpers shared by the intake API-key tests: keys made through the service, requests signed
by the documented wire format (computed here independently of the service), the ``apikeys``
CLI, and :func:`age_keys` to let time pass for the stored keys."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

from cryptography.fernet import Fernet
from sqlalchemy import func, select, update

from models import ApiKey, Order
from services import api_keys
from services.unit_of_work import unit_of_work
from settings import get_settings
from tests.conftest import order_message

ENCRYPTION_KEY = Fernet.generate_key().decode()


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


def age_keys(by: timedelta) -> None:
    """As if ``by`` had passed: every stored key's times (made, expires, revoked) move back by
    that much. The API judges expiry by its own wall clock, which a test cannot move; moving
    the keys' times is the same step seen from the keys. The next request sees it, as the
    fixtures run without a key cache (``API_KEY_CACHE_TTL_S=0``)."""
    with unit_of_work() as s:
        s.execute(
            update(ApiKey).values(
                created_at=ApiKey.created_at - by,
                expires_at=ApiKey.expires_at - by,
                revoked_at=ApiKey.revoked_at - by,
            )
        )


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
