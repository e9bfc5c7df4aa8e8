"""Console sessions kept on the server (Redis), so that ending one means something.

Contracts:

* A session is created at login (:meth:`SessionStore.create`) and named by a random 256-bit
  token: the cookie holds the token, Redis holds only its SHA-256, so a read of Redis yields
  nothing a browser could present.
* :meth:`SessionStore.get` returns the session while all of these hold, else None (and a
  dead session is deleted): it exists (logout, an account's disabling and
  :meth:`revoke_operator` delete it); it was made under the current admin key
  (``epoch``: rotating ``ADMIN_API_KEY`` ends every console session); it was used within
  ``idle_s``; it is younger than ``absolute_s``. Each successful ``get`` counts as use.
  Times come from the caller (``now``, epoch seconds) so tests drive the clock; Redis expiry
  only collects what nobody will ask for again.
* The CSRF token is random per session and stored with it: a token from another session, or
  from one that ended, never matches (:meth:`ConsoleSession.csrf_ok`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

import redis

from domain.operators import Role

PREFIX = "console:session:"
BY_OPERATOR = "console:operator-sessions:"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    token_hash: str
    actor: str
    role: Role
    operator_id: int | None
    csrf: str

    def csrf_ok(self, given: str) -> bool:
        """The form's token is this session's (constant time)."""
        return hmac.compare_digest(self.csrf.encode(), given.encode())


@dataclass(frozen=True, slots=True)
class SessionStore:
    client: redis.Redis
    idle_s: int
    absolute_s: int
    #: A fingerprint of the admin key (``""`` when unset): sessions of another epoch are dead.
    epoch: str

    def create(self, *, actor: str, role: Role, operator_id: int | None, now: float) -> str:
        """Open a session and return its token (for the cookie; never stored)."""
        token = secrets.token_urlsafe(32)
        key = PREFIX + _hash(token)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping={
            "actor": actor, "role": int(role), "op": operator_id or 0, "epoch": self.epoch,
            "csrf": secrets.token_urlsafe(24), "created": now, "seen": now,
        })  # fmt: skip
        pipe.expire(key, self.absolute_s)
        if operator_id:
            pipe.sadd(BY_OPERATOR + str(operator_id), _hash(token))
            pipe.expire(BY_OPERATOR + str(operator_id), self.absolute_s)
        pipe.execute()
        return token

    def get(self, token: str, *, now: float) -> ConsoleSession | None:
        """The live session for ``token`` (and mark it used), or None."""
        if not token or len(token) > 100:
            return None
        key = PREFIX + _hash(token)
        raw = {_text(k): _text(v) for k, v in self.client.hgetall(key).items()}
        if not raw:
            return None
        expired = (
            raw.get("epoch") != self.epoch
            or now - float(raw["seen"]) > self.idle_s
            or now - float(raw["created"]) > self.absolute_s
        )
        if expired:
            self.client.delete(key)
            return None
        self.client.hset(key, "seen", now)
        operator_id = int(raw["op"]) or None
        return ConsoleSession(_hash(token), raw["actor"], Role(int(raw["role"])), operator_id,
                              raw["csrf"])  # fmt: skip

    def revoke(self, session: ConsoleSession) -> None:
        """End this session (logout)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(PREFIX + session.token_hash)
        if session.operator_id:
            pipe.srem(BY_OPERATOR + str(session.operator_id), session.token_hash)
        pipe.execute()

    def revoke_operator(self, operator_id: int) -> int:
        """End every session of this account; returns how many were live."""
        index = BY_OPERATOR + str(operator_id)
        hashes = [_text(h) for h in self.client.smembers(index)]
        pipe = self.client.pipeline(transaction=True)
        for h in hashes:
            pipe.delete(PREFIX + h)
        pipe.delete(index)
        results = pipe.execute()
        return sum(int(r) for r in results[: len(hashes)])
