"""HTTP helpers the JSON-over-HTTP adapters share: one classification of transport failures and
of garbled answers into the error tree (``ProviderUnavailable`` retry, ``ProviderRejected`` not)."""

from __future__ import annotations

from typing import Any

import requests

from domain.errors import ProviderRejected, ProviderUnavailable


def post_classified(
    session: requests.Session,
    provider: str,
    url: str,
    timeout: tuple[float, float],
    **kwargs: Any,
) -> requests.Response:
    """POST and classify transport failures: anything that is not an HTTP answer, or an HTTP
    5xx/429 answer, is :class:`ProviderUnavailable` (retry later)."""
    try:
        resp = session.post(url, timeout=timeout, **kwargs)
    except requests.RequestException as exc:
        raise ProviderUnavailable(provider, f"{type(exc).__name__}: {exc}") from exc
    if resp.status_code >= 500 or resp.status_code == 429:
        raise ProviderUnavailable(provider, f"HTTP {resp.status_code}", code=str(resp.status_code))
    return resp


def json_object(provider: str, resp: requests.Response) -> dict[str, Any]:
    """The body as a JSON object. Anything else is a garbled answer: transient on a 2xx/3xx,
    a refusal on a 4xx (wrong URL or credentials will not fix themselves)."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    message, code = f"unexpected answer (HTTP {resp.status_code})", str(resp.status_code)
    if resp.status_code >= 400:
        raise ProviderRejected(provider, message, code=code)
    raise ProviderUnavailable(provider, message, code=code)
