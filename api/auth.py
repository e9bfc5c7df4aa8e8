"""Intake authentication: ``X-API-Key`` and, when asked for, a request signature.

A key is accepted when it is

* an ``API_KEYS`` entry (development and tests: ``key`` / ``source:key`` in clear, or
  ``sha256:<hex>`` / ``source:sha256:<hex>`` so a deployment keeps no key in clear in its
  environment); the SHA-256 of the presented key is compared with each entry in constant time;
* or a key from the ``api_keys`` table (``of_<key_id>_<secret>``; see :mod:`services.api_keys`),
  looked up by id through a per-process cache of ``API_KEY_CACHE_TTL_S`` seconds, so a
  revocation takes effect in every API process within that TTL.

A signature (``X-Timestamp``, ``X-Nonce``, ``X-Signature``) is verified when the key was created
with ``--require-signature``, when ``REQUIRE_SIGNED_REQUESTS`` is on, or whenever the request
carries any of those headers. ``API_KEYS`` keys have no signing secret, so they cannot be used
for signed requests. The signature covers the raw body: it is read here with
``Request.body()``, which Starlette caches, so the route still parses the same bytes.

Failures answer 401 with ``{"error": "unauthorized", "message", "details": [{"field": <header>,
"reason"}]}`` before the route runs, so a rejected request changes nothing; 503 when the nonce
store (Redis) is unreachable or a signing secret cannot be decrypted. Keys and secrets are never
logged; rejections are logged with the public key id only.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated

from fastapi import Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool

from services import api_keys, request_signing
from services.api_keys import AuthRejected, AuthUnavailable, KeyCache, StoredKey
from settings import Settings, get_settings

log = logging.getLogger(__name__)

BAD_KEY = "missing or invalid X-API-Key"
BAD_SIGNATURE = "request signature rejected"


class AuthError(HTTPException):
    """An HTTPException that carries the error shape's ``details`` (see ``api.app``)."""

    def __init__(self, status_code: int, message: str, field: str, reason: str) -> None:
        super().__init__(status_code=status_code, detail=message)
        self.details = [{"field": field, "reason": reason}]


@lru_cache(maxsize=4)
def _cache_for(ttl_s: float) -> KeyCache:
    return KeyCache(ttl_s)


def key_cache() -> KeyCache:
    """This process's cache of API-key lookups (TTL from ``API_KEY_CACHE_TTL_S``)."""
    return _cache_for(get_settings().api_key_cache_ttl_s)


def _load(key_id: str) -> StoredKey | None:
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        stored = api_keys.load_key(session, key_id)
    if stored is not None:
        key_cache().put(stored)
    return stored


def _from_api_keys_setting(presented: str, settings: Settings) -> str | None:
    """The source of a matching ``API_KEYS`` entry, or None. Every entry is compared."""
    digest = hashlib.sha256(presented.encode()).hexdigest()
    source = None
    for entry, entry_source in settings.api_key_digests():
        if hmac.compare_digest(entry, digest):
            source = entry_source
    return source


def _path_with_query(request: Request) -> str:
    # The request target as the client sent it: the raw (still percent-encoded) path.
    raw = request.scope.get("raw_path") or request.url.path.encode()
    path = raw.decode("latin-1")
    query = request.scope.get("query_string") or b""
    return f"{path}?{query.decode('latin-1')}" if query else path


def _nonce_store() -> request_signing.NonceStore:
    from workers.connections import redis_client

    return request_signing.RedisNonceStore(redis_client())


async def _verify_signature(request: Request, stored: StoredKey, settings: Settings) -> None:
    if stored.signing_secret is None:
        raise AuthRejected(
            api_keys.SIGNATURE_HEADER,
            f"key {stored.key_id} has no signing secret; create one with KEY_ENCRYPTION_KEY set",
        )
    try:
        cipher = api_keys.SecretCipher.from_setting(settings.key_encryption_key)
    except ValueError as exc:  # names the setting, never its value
        raise AuthUnavailable(api_keys.SIGNATURE_HEADER, str(exc)) from None
    if cipher is None:
        raise AuthUnavailable(
            api_keys.SIGNATURE_HEADER, "signature cannot be checked: KEY_ENCRYPTION_KEY is unset"
        )
    body = await request.body()  # cached by Starlette: the route reads the same bytes again
    await run_in_threadpool(
        request_signing.verify_signed_request,
        key_id=stored.key_id,
        signing_secret=cipher.decrypt(stored.signing_secret),
        headers=request.headers,
        method=request.method,
        path_with_query=_path_with_query(request),
        body=body,
        now=time.time(),
        window_s=settings.signature_window_s,
        nonces=_nonce_store(),
    )


async def _authenticate(request: Request, presented: str | None) -> str:
    settings = get_settings()
    if not presented:
        raise AuthRejected("X-API-Key", "missing")
    wants_signature = request_signing.has_signature_headers(request.headers)
    source = _from_api_keys_setting(presented, settings)
    if source is not None:
        if settings.require_signed_requests or wants_signature:
            raise AuthRejected(
                api_keys.SIGNATURE_HEADER,
                "keys from API_KEYS cannot sign requests; use a key made by "
                "`orderflow apikeys create`",
            )
        return source
    parsed = api_keys.parse_api_key(presented)
    if parsed is None:
        raise AuthRejected("X-API-Key", "unknown API key")
    key_id, secret = parsed
    stored = key_cache().get(key_id)
    if stored is None:
        stored = await run_in_threadpool(_load, key_id)
    api_keys.check_key(stored, secret, now=datetime.now(UTC))
    assert stored is not None  # check_key raised otherwise
    if stored.signing_required or settings.require_signed_requests or wants_signature:
        await _verify_signature(request, stored, settings)
    return stored.source


async def require_api_key(
    request: Request, x_api_key: Annotated[str | None, Header()] = None
) -> str:
    """Return the source the key is bound to (``*`` for any), or answer 401 (503 when the
    request cannot be checked now)."""
    try:
        return await _authenticate(request, x_api_key)
    except AuthRejected as exc:
        message = BAD_KEY if exc.field == "X-API-Key" else BAD_SIGNATURE
        key_id = (api_keys.parse_api_key(x_api_key or "") or ("-", ""))[0]
        log.info("intake auth rejected: key_id=%s %s: %s", key_id, exc.field, exc.reason)
        raise AuthError(401, message, exc.field, exc.reason) from None
    except AuthUnavailable as exc:
        log.error("intake auth unavailable: %s: %s", exc.field, exc.reason)
        raise AuthError(503, "authentication unavailable", exc.field, exc.reason) from None
