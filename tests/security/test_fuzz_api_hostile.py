"""Hostile values in otherwise valid requests, against the running API (uvicorn on 127.0.0.1,
real PostgreSQL and Redis, the provider simulators' generated keys in its settings).

Random generation (test_fuzz_api_schema.py) rarely puts a hostile value (NUL, a lone surrogate,
a 2**64) inside a request that is otherwise valid, which is where such values hurt; the
hostile-values test does that systematically. Properties: never a 5xx; a refused request (any
4xx) writes nothing: the row count of every table is unchanged; a 422 names its details. (It
found the NUL 500s fixed in :mod:`api.limits`.)
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from typing import Any
from urllib.parse import quote

import requests

from tests.conftest import order_message
from tests.security.conftest import row_counts
from tests.security.fuzz_api_support import ADMIN_KEY, Target

# --- hostile values in otherwise valid requests -------------------------------------------------

#: Replaces one value of a valid request. Random generation rarely produces these inside a
#: request that passes every other check, which is where they hurt (the database, the hash).
HOSTILE_JSON: list[Any] = [
    "\x00", "nul\x00inside", "\ud800", "\udfff lone", "\u202e\u2066rtl", "\ufeffbom", "😀" * 300,
    "x" * 100_000, "", " ", "\r\n", "%00", "../../etc/passwd", "' OR '1'='1", "${jndi:ldap://x}",
    None, True, -1, 0, 2**31, 2**63, 2**64, -(2**63) - 1, 1.5, 1e308, [], {}, [[[[]]]],
    {"$gt": ""},
]  # fmt: skip
HOSTILE_URL = ["\x00", "a\x00b", "%00", "..", "x" * 5000, "😀", " ", "%2e%2e%2f", "\u202e"]


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _leaves(v, (*path, k))] or [path]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _leaves(v, (*path, i))] or [path]
    return [path]


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    value = copy.deepcopy(value)
    parent = value
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = new
    return value


def _seeds(t: Target) -> list[tuple[str, str, dict[str, str], dict[str, Any] | None]]:
    """(method, path, headers, valid JSON body) for every operation that takes input."""
    api = {"X-API-Key": t.api_key}
    admin = {"X-Admin-Key": ADMIN_KEY}
    o = t.order_id
    return [
        ("POST", "/v1/orders", api, order_message("SKU-1", 1)),
        ("POST", f"/v1/orders/{o}/cancel", api, {"reason": "changed my mind"}),
        ("POST", f"/v1/orders/{o}/refunds", api, {"amount": 1, "refund_no": "r-1", "reason": "x"}),
        ("POST", f"/v1/orders/{o}/shipments", api, {"carrier": "yuantong", "waybill": "YT1234567"}),
        ("POST", "/v1/users", {}, {"email": "new@example.com", "password": "Another-pass-9",
                                   "display_name": "New"}),
        ("POST", "/v1/sessions", {}, {"email": "fuzz@example.com", "password": "fuzz-Password-1"}),
        ("POST", "/v1/admin/products", admin, {"sku": "NEW-1", "name": "New", "price_amount": 100,
                                               "currency": "CNY", "active": True}),
        ("PATCH", "/v1/admin/products/SKU-2", admin, {"name": "Renamed", "price_amount": 5}),
        ("POST", "/v1/admin/stock/receive", admin, {"sku": "SKU-1", "warehouse": "main",
                                                    "quantity": 1, "reason": "r"}),
        ("POST", "/v1/admin/stock/adjust", admin, {"sku": "SKU-1", "warehouse": "main",
                                                   "delta": -1, "reason": "r"}),
        ("POST", "/v1/admin/stock/move", admin, {"sku": "SKU-1", "from_warehouse": "main",
                                                 "to_warehouse": "b", "quantity": 1}),
        # A loopback URL registers only because the tests allow-list loopback
        # (OUTBOUND_ALLOWED_NETWORKS in tests/conftest.py): the seed must be valid.
        ("PUT", "/v1/admin/callbacks/web", admin, {"url": "http://127.0.0.1:9/hook",
                                                   "secret": "s" * 24}),
        ("POST", "/v1/admin/callbacks/resend", admin, {"order_id": o}),
    ]  # fmt: skip


def _url_seeds(t: Target) -> list[tuple[str, str, dict[str, str]]]:
    """(method, path with {} where the hostile value goes, headers)."""
    api = {"X-API-Key": t.api_key}
    admin = {"X-Admin-Key": ADMIN_KEY}
    bearer = {"Authorization": f"Bearer {t.token}"}
    return [
        ("GET", "/v1/orders/{}", api), ("POST", "/v1/orders/{}/cancel", api),
        ("GET", "/v1/admin/products/{}/prices", admin), ("DELETE", "/v1/admin/products/{}", admin),
        ("POST", "/v1/admin/products/{}/deactivate", admin),
        ("POST", "/v1/admin/callbacks/{}/resume", admin),
        ("GET", "/v1/admin/products?limit={}", admin),
        ("GET", "/v1/admin/products?active={}", admin),
        ("GET", "/v1/users/me/orders?limit={}", bearer), ("GET", "/v1/orders/x?{}=1", api),
    ]  # fmt: skip


def test_hostile_values_in_valid_requests_never_5xx_and_refusals_write_nothing(target):
    """Each value of a valid request is replaced, one at a time, by each hostile value (NUL,
    lone surrogates, huge numbers, wrong types, 100 kB strings, ...). Deterministic: every
    combination is sent."""
    session = requests.Session()
    failures: list[str] = []
    statuses: Counter[int] = Counter()

    def send(method: str, url: str, headers: dict[str, str], **kw: Any) -> None:
        before = row_counts()
        sent = kw.get("data", url)[:160]
        try:
            r = session.request(method, f"{target.base_url}{url}", headers=headers, timeout=60,
                                **kw)  # fmt: skip
        except requests.ConnectionError as exc:
            failures.append(f"{method} {url[:120]} -> connection dropped ({exc}) for {sent!r}")
            return
        statuses[r.status_code] += 1
        if r.status_code >= 500:
            failures.append(f"{method} {url[:120]} -> {r.status_code} for {sent!r}")
        elif 400 <= r.status_code < 500:
            after = row_counts()
            grown = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
            if grown:
                failures.append(f"{method} {url[:120]} -> {r.status_code} wrote {grown}")
            if r.status_code == 422 and not r.json().get("details"):
                failures.append(f"{method} {url[:120]} -> 422 without details: {r.text[:200]}")

    for method, url, headers, body in _seeds(target):
        for leaf in _leaves(body):
            for value in HOSTILE_JSON:
                data = json.dumps(_replaced(body, leaf, value))
                send(method, url, {**headers, "Content-Type": "application/json"}, data=data)
    for method, template, headers in _url_seeds(target):
        for value in HOSTILE_URL:
            send(method, template.format(quote(value, safe="")), headers)
    print(f"hostile values: {sum(statuses.values())} requests, statuses {dict(statuses)}")
    assert not failures, "\n".join(failures[:40]) + f"\n({len(failures)} failures)"
    assert sum(statuses.values()) > 1000
