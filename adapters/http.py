"""HTTP helpers the JSON-over-HTTP adapters share: one classification of transport failures and
of garbled answers into the error tree (``ProviderUnavailable`` retry, ``ProviderRejected`` not)."""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlsplit

import requests

from domain.errors import ProviderRejected, ProviderUnavailable


class ProviderSession(requests.Session):
    """A ``requests.Session`` that reads the proxy and CA-bundle environment once per host.

    A plain session re-reads the whole process environment on every request (``HTTP_PROXY``,
    ``NO_PROXY``, ``REQUESTS_CA_BUNDLE``, ...): measured, that was 40 % of the client CPU of a
    provider call. The environment of a worker does not change while it runs, so the merged
    settings are kept per scheme and host; a call that passes its own ``proxies``, ``verify``,
    ``cert`` or ``stream`` is merged afresh, as requests would.
    """

    def __init__(self) -> None:
        super().__init__()
        self._env: dict[tuple[str, str], Any] = {}
        self._env_lock = threading.Lock()

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> Any:  # requests' own TypedDict is private
        if proxies or stream is not None or verify is not None or cert is not None:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        parts = urlsplit(str(url))
        key = (parts.scheme, parts.netloc)
        with self._env_lock:
            merged = self._env.get(key)
            if merged is None:
                merged = super().merge_environment_settings(url, {}, None, None, None)
                self._env[key] = merged
        # requests mutates nothing it gets back, but each call gets its own dicts regardless.
        return {**merged, "proxies": dict(merged["proxies"])}


def provider_session(pool_maxsize: int = 32) -> ProviderSession:
    """The session one provider adapter keeps for the life of the process: keep-alive
    connections pooled per host (up to ``pool_maxsize`` for a threads pool), environment read
    once per host (:class:`ProviderSession`)."""
    session = ProviderSession()
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_maxsize)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


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
