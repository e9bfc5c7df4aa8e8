"""Intake API-key authentication (``X-API-Key``). Keys come from settings; hashed storage and
request signing arrive with the security work."""

from __future__ import annotations

import hmac

from fastapi import Header, HTTPException

from settings import get_settings


def require_api_key(x_api_key: str | None = Header(default=None)) -> str:
    """Return the source the key is bound to (``*`` for any), or answer 401."""
    if x_api_key:
        for key, source in get_settings().api_key_map().items():
            if hmac.compare_digest(key.encode(), x_api_key.encode()):
                return source
    raise HTTPException(status_code=401, detail="missing or invalid X-API-Key")
