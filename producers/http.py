"""Sending orders to ``POST /v1/orders`` from an upstream system, waiting out back-pressure.

Intake is idempotent by ``(source, external_id)``, so sending the same order again is safe. A
429 (back-pressure: the accepted work is too far behind, :mod:`services.backpressure`) or a 503
(PostgreSQL unreachable) carries ``Retry-After``; :func:`intake_session` retries such an answer
after the time the server names, up to ``retries`` times, and connection failures and timeouts
with a short backoff (a repeat of a stored order answers 200 with the same id). urllib3's
``Retry`` does the waiting (``respect_retry_after_header``), so every caller (the demo, an
upstream's own code) behaves the same way. After the last retry the caller gets the last answer
(429 or 503) and keeps the order: nothing is lost either way.
"""

from __future__ import annotations

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

#: Answers that mean "not now, try again after Retry-After".
RETRY_STATUSES = (429, 503)


def intake_retry(retries: int = 10) -> Retry:
    """The retry policy of :func:`intake_session` (POST retried: intake is idempotent)."""
    return Retry(
        total=retries,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"POST", "GET"}),
        respect_retry_after_header=True,
        backoff_factor=0.2,
        raise_on_status=False,
    )


def intake_session(api_key: str, *, retries: int = 10, pool_size: int = 16) -> requests.Session:
    """A session with the API key set that retries refused orders (see the module docstring)."""
    session = requests.Session()
    session.headers["X-API-Key"] = api_key
    adapter = HTTPAdapter(
        max_retries=intake_retry(retries), pool_connections=1, pool_maxsize=pool_size
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
