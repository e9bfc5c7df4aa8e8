"""Signed intake requests: what a client signs, and how a signed request is checked.

Signed requests
    A key may carry a *signing secret* (``ofs_...``, 32 random bytes), shown once at creation.
    The server keeps only the hash of the API key, so the HMAC key has to be a separate secret,
    and the server must be able to read it: it is stored encrypted with Fernet under the
    ``KEY_ENCRYPTION_KEY`` setting (:class:`SecretCipher`; several comma-separated keys, newest
    first, allow re-keying). With that setting unset, keys are created without a signing secret
    and ``--require-signature`` fails with a clear error. A signed request carries::

        X-Timestamp: <unix seconds>
        X-Nonce:     <16-64 characters of A-Z a-z 0-9 . _ ~ + / = ->
        X-Signature: hex(HMAC-SHA256(signing_secret,
                         f"{timestamp}\\n{nonce}\\n{METHOD}\\n{path_with_query}\\n{sha256_hex(body)}"))

    ``path_with_query`` is the request target exactly as sent (percent-encoding untouched,
    ``?query`` included when present). :func:`verify_signed_request` checks, in this order: the
    three headers are present and well formed, the timestamp is within ``window_s`` of the
    server clock (both directions), the signature matches (constant time), and the nonce was not
    used by this key before (Redis ``SET NX`` kept for twice the window, so it outlives every
    timestamp it could be replayed with). Every attempt, a retry included, needs a new nonce.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import redis

from services.api_keys import (
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    AuthRejected,
    AuthUnavailable,
)

SIGNATURE_HEADERS = (TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER)
_NONCE = re.compile(r"[A-Za-z0-9._~+/=-]{16,64}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"[0-9a-fA-F]{64}")


def signing_payload(
    timestamp: str, nonce: str, method: str, path_with_query: str, body: bytes
) -> bytes:
    """The bytes that are signed (see the module docstring)."""
    digest = hashlib.sha256(body).hexdigest()
    return f"{timestamp}\n{nonce}\n{method.upper()}\n{path_with_query}\n{digest}".encode()


def sign_request(
    signing_secret: str,
    *,
    timestamp: str,
    nonce: str,
    method: str,
    path_with_query: str,
    body: bytes,
) -> str:
    """Hex HMAC-SHA256 of the request: what a client puts in ``X-Signature``."""
    payload = signing_payload(timestamp, nonce, method, path_with_query, body)
    return hmac.new(signing_secret.encode(), payload, hashlib.sha256).hexdigest()


class NonceStore(Protocol):
    def claim(self, key_id: str, nonce: str, ttl_s: int) -> bool:
        """Record ``nonce`` for ``key_id`` for ``ttl_s``; False if it was already recorded."""
        ...


@dataclass(frozen=True, slots=True)
class RedisNonceStore:
    """Nonces in Redis: ``SET intake:nonce:<key_id>:<nonce> 1 NX EX ttl``, atomic across every
    API process. An unreachable Redis raises :class:`AuthUnavailable` (fail closed)."""

    client: redis.Redis

    def claim(self, key_id: str, nonce: str, ttl_s: int) -> bool:
        try:
            return bool(self.client.set(f"intake:nonce:{key_id}:{nonce}", 1, nx=True, ex=ttl_s))
        except redis.RedisError:
            raise AuthUnavailable(NONCE_HEADER, "cannot check the nonce now; retry") from None


def has_signature_headers(headers: Mapping[str, str]) -> bool:
    """True if any of the three signature headers is present (then all three are checked)."""
    return any(headers.get(name) is not None for name in SIGNATURE_HEADERS)


def verify_signed_request(
    *,
    key_id: str,
    signing_secret: str,
    headers: Mapping[str, str],
    method: str,
    path_with_query: str,
    body: bytes,
    now: float,
    window_s: int,
    nonces: NonceStore,
) -> None:
    """Raise :class:`AuthRejected` naming the header unless the request is correctly signed,
    fresh (``|now - X-Timestamp| <= window_s``) and its nonce new for this key. The nonce is
    recorded only once the signature verified, for ``2 * window_s`` seconds. ``headers`` must
    look names up case-insensitively (Starlette's ``Headers`` does)."""
    for name in SIGNATURE_HEADERS:
        if headers.get(name) is None:
            raise AuthRejected(
                name, "missing; signed requests need " + ", ".join(SIGNATURE_HEADERS)
            )
    timestamp, nonce, signature = (headers.get(name) or "" for name in SIGNATURE_HEADERS)
    if not _TIMESTAMP.fullmatch(timestamp):
        raise AuthRejected(TIMESTAMP_HEADER, "must be unix time in whole seconds")
    skew = int(timestamp) - now
    if abs(skew) > window_s:
        direction = "ahead of" if skew > 0 else "behind"
        raise AuthRejected(
            TIMESTAMP_HEADER,
            f"{abs(skew):.0f}s {direction} the server clock; allowed skew is {window_s}s",
        )
    if not _NONCE.fullmatch(nonce):
        raise AuthRejected(NONCE_HEADER, "must be 16-64 characters of A-Z a-z 0-9 . _ ~ + / = -")
    if not _SIGNATURE.fullmatch(signature):
        raise AuthRejected(SIGNATURE_HEADER, "must be 64 hex digits (HMAC-SHA256)")
    expected = sign_request(
        signing_secret,
        timestamp=timestamp,
        nonce=nonce,
        method=method,
        path_with_query=path_with_query,
        body=body,
    )
    if not hmac.compare_digest(expected, signature.lower()):
        raise AuthRejected(
            SIGNATURE_HEADER,
            "does not match: HMAC-SHA256 over timestamp, nonce, method, path with query and "
            "the body's SHA-256, each on its own line",
        )
    if not nonces.claim(key_id, nonce, 2 * window_s):
        raise AuthRejected(NONCE_HEADER, "already used with this key (replayed request)")
