"""Schemathesis against the running API (uvicorn on 127.0.0.1, real PostgreSQL and Redis, the
provider simulators' generated keys in its settings).

Properties, for every generated request, valid (positive) or invalid (negative):

* never a 5xx;
* a response whose status the schema declares conforms to the declared body schema
  (``status_code_conformance`` is not checked: FastAPI documents only 2xx and 422, while
  401/404/409/413 are part of the documented contract in each router's docstring);
* a request the schema calls invalid is refused with a 4xx (schemathesis'
  ``negative_data_rejection``);
* a refused request (any 4xx) writes nothing: the row count of every table is unchanged;
* a negative-only run against ``POST /v1/orders`` stores no order at all, while a positive run
  (the control) stores exactly one order per 202;
* the webhooks (not in the published schema; described here by hand) answer 4xx to anything not
  signed by the provider, never 5xx to a correctly signed but meaningless body, and 404 (not
  500) for a provider the deployment does not use.

The published schema is completed in :func:`complete_schema` before the run, and each change is
for a reason: ``POST /v1/orders`` reads its body by hand, so its request body (the
:class:`~producers.schema.OrderMessage` JSON schema) is added; the credential headers
(``X-API-Key``, ``X-Admin-Key``, ``Authorization``) become required with the test deployment's
one valid value, so positive cases get past authentication and negative cases test it; path ids
name the seeded order and products. In the schema positive cases are drawn from (only there:
outside a narrowed set a value may still be valid), values a route checks in code (currency,
SKU, password policy) are narrowed too, so positive cases reach the database.

Random generation rarely puts a hostile value (NUL, a lone surrogate, a 2**64) inside a request
that is otherwise valid, which is where such values hurt; the hostile-values test does that
systematically. (It found the NUL 500s fixed in :mod:`api.limits`.)

Each operation runs through ``APIOperation.as_strategy`` under Hypothesis' ``@given``:
``schemathesis.pytest.from_fixture`` fails on pytest 9.2 (it writes ``Node._nodeid``).

Size: ``max_examples`` per operation and mode is small by default (the file runs in about a
minute and a half on 2 cores) and larger with ``RELIABILITY_FULL=1``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import secrets
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    response_schema_conformance,
)
from sqlalchemy import text

from domain.money import CURRENCY_EXPONENTS
from producers.schema import OrderMessage
from services.unit_of_work import unit_of_work
from settings import get_settings
from tests.conftest import order_message
from tests.security.conftest import row_counts

FULL = os.environ.get("RELIABILITY_FULL") == "1"
MAX_EXAMPLES = 250 if FULL else 40
ORDER_EXAMPLES = 300 if FULL else 60
WEBHOOK_EXAMPLES = 300 if FULL else 40
ADMIN_KEY = f"admin-fuzz-{secrets.token_hex(8)}"
SKUS = ["SKU-1", "SKU-2"]
CHECKS = [not_a_server_error, response_schema_conformance, negative_data_rejection]
HYPOTHESIS = settings(
    deadline=None,
    database=None,
    derandomize=not FULL,
    suppress_health_check=list(HealthCheck),
)


@dataclass
class Target:
    base_url: str
    api_key: str
    stack: Any
    order_id: str
    token: str
    logout_token: str


def _login(base: str, email: str, password: str) -> str:
    r = requests.post(f"{base}/v1/sessions", json={"email": email, "password": password},
                      timeout=30)  # fmt: skip
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


@pytest.fixture
def target(pipeline_env, procs, db, api_key, catalog, monkeypatch) -> Target:
    """The API alone (no workers: nothing moves an order behind the fuzzer's back), seeded with
    two products, one order and a user with two session tokens."""
    port, stack = pipeline_env
    monkeypatch.setenv("ADMIN_API_KEY", ADMIN_KEY)
    # The registration limit (20 per address) would turn most generated registrations into
    # 429s after the first few; lift it so positive cases keep reaching the database.
    monkeypatch.setenv("REGISTER_MAX_PER_ADDRESS", "100000")
    get_settings.cache_clear()
    catalog({sku: 1000 for sku in SKUS})
    procs.api(port)
    base = f"http://127.0.0.1:{port}"
    r = requests.post(f"{base}/v1/orders", json=order_message("SKU-1", 1),
                      headers={"X-API-Key": api_key}, timeout=30)  # fmt: skip
    assert r.status_code == 202, r.text
    order_id = str(r.json()["id"])
    email, password = "fuzz@example.com", "fuzz-Password-1"
    r = requests.post(f"{base}/v1/users", json={"email": email, "password": password}, timeout=30)
    assert r.status_code == 201, r.text
    return Target(base, api_key, stack, order_id, _login(base, email, password),
                  _login(base, email, password))  # fmt: skip


# --- the schema ---------------------------------------------------------------------------------


def _required_header(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": True,
            "schema": {"type": "string", "enum": [value]}}  # fmt: skip


def _order_body_schema(raw: dict[str, Any], narrow: bool) -> dict[str, Any]:
    """The order message as JSON schema, its definitions moved to ``components``; ``narrow``
    adds what pydantic checks in code (currency, customer), so positive cases are mostly valid."""
    schema = OrderMessage.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in schema.pop("$defs", {}).items():
        raw["components"]["schemas"][name] = definition
    if narrow:
        schema["properties"]["currency"] = {"type": "string", "enum": sorted(CURRENCY_EXPONENTS)}
        schema["properties"]["customer_ref"] = {"type": "string", "minLength": 1, "maxLength": 128}
        schema["required"] = [*schema["required"], "customer_ref"]
    raw["components"]["schemas"]["OrderMessage"] = schema
    return {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/OrderMessage"}}}}  # fmt: skip


_ANY_REPLY = {code: {"description": "provider reply"} for code in ("200", "204", "400", "404")}
_TEXT = {"type": "string", "maxLength": 300}


def _webhook_paths(t: Target) -> dict[str, Any]:
    """The provider webhooks, described from docs/provider-protocols: what a forger can send."""
    alipay_form = {
        "type": "object",
        "properties": {
            k: _TEXT
            for k in (
                "notify_id",
                "notify_type",
                "app_id",
                "out_trade_no",
                "trade_no",
                "trade_status",
                "total_amount",
                "sign_type",
                "sign",
                "gmt_payment",
            )
        },
    }
    event = {
        "type": "object",
        "properties": {
            "id": _TEXT,
            "type": _TEXT,
            "event_type": _TEXT,
            "data": {"type": "object", "properties": {"object": {"type": "object"}}},
            "resource": {
                "type": "object",
                "properties": {
                    "algorithm": {"type": "string", "enum": ["AEAD_AES_256_GCM"]},
                    "ciphertext": _TEXT,
                    "nonce": _TEXT,
                    "associated_data": _TEXT,
                },
            },
        },
    }
    now = str(int(time.time()))
    headers = [
        {"name": "Stripe-Signature", "in": "header", "required": False,
         "schema": {"type": "string", "pattern": r"^t=1[0-9]{9},v1=[0-9a-f]{64}$"}},
        {"name": "Wechatpay-Timestamp", "in": "header", "required": False,
         "schema": {"type": "string", "enum": [now]}},
        {"name": "Wechatpay-Nonce", "in": "header", "required": False,
         "schema": {"type": "string", "pattern": "^[A-Za-z0-9]{1,32}$"}},
        {"name": "Wechatpay-Signature", "in": "header", "required": False,
         "schema": {"type": "string", "pattern": "^[A-Za-z0-9+/]{1,344}={0,2}$"}},
        {"name": "Wechatpay-Serial", "in": "header", "required": False,
         "schema": {"type": "string", "enum": [t.stack.wechatpay.platform_serial]}},
    ]  # fmt: skip
    return {
        "/webhooks/{provider}": {"post": {
            "operationId": "payment_webhook",
            "parameters": [{"name": "provider", "in": "path", "required": True,
                            "schema": {"type": "string", "enum": ["alipay", "wechatpay",
                                                                  "stripe"]}}, *headers],
            "requestBody": {"required": True, "content": {
                "application/x-www-form-urlencoded": {"schema": alipay_form},
                "application/json": {"schema": event}}},
            "responses": _ANY_REPLY}},
        "/webhooks/kuaidi100": {"post": {
            "operationId": "kuaidi100_push",
            "requestBody": {"required": True, "content": {
                "application/x-www-form-urlencoded": {"schema": {
                    "type": "object", "required": ["param", "sign"],
                    "properties": {"param": {"type": "string", "maxLength": 2000},
                                   "sign": {"type": "string", "pattern": "^[0-9A-F]{32}$"}}}}}},
            "responses": _ANY_REPLY}},
    }  # fmt: skip


def _narrow_bodies(schemas: dict[str, Any]) -> None:
    """Where a route checks a value in code (a known currency, an existing SKU, the password
    policy), say so, so positive cases get past that check to the database. For positive cases
    only: a value outside the narrowed set may well be valid (another strong password)."""
    currency = {"type": "string", "enum": sorted(CURRENCY_EXPONENTS)}
    sku = {"type": "string", "enum": SKUS}
    narrowed = {
        "ProductCreate": {"currency": currency},
        "ProductPatch": {"currency": currency},
        "ReceiveBody": {"sku": sku},
        "AdjustBody": {"sku": sku},
        "MoveBody": {"sku": sku, "from_warehouse": {"type": "string", "enum": ["main"]}},
        "RegisterBody": {
            "email": {"type": "string", "format": "email", "maxLength": 320},
            "password": {"type": "string", "pattern": "^Aa1[A-Za-z0-9]{8,30}$"},
        },
        "LoginBody": {
            "email": {"type": "string", "enum": ["fuzz@example.com"]},
            "password": {"type": "string", "enum": ["fuzz-Password-1"]},
        },
    }
    for name, properties in narrowed.items():
        schemas[name]["properties"].update(properties)


def complete_schema(raw: dict[str, Any], t: Target, *, narrow: bool) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    credentials = {
        "x-api-key": ("X-API-Key", t.api_key),
        "x-admin-key": ("X-Admin-Key", ADMIN_KEY),
    }
    path_values = {"order_id": [t.order_id], "sku": SKUS}
    for ops in raw["paths"].values():
        for method, op in ops.items():
            params = []
            for p in op.get("parameters", []):
                name = p["name"].lower()
                if p["in"] == "header" and name in credentials:
                    params.append(_required_header(*credentials[name]))
                elif p["in"] == "header" and name == "authorization":
                    token = t.logout_token if method == "delete" else t.token
                    params.append(_required_header("Authorization", f"Bearer {token}"))
                elif p["in"] == "path" and p["name"] in path_values:
                    params.append({**p, "schema": {"type": "string",
                                                   "enum": path_values[p["name"]]}})  # fmt: skip
                else:
                    params.append(p)
            op["parameters"] = params
    raw["paths"]["/v1/orders"]["post"]["requestBody"] = _order_body_schema(raw, narrow)
    if narrow:
        _narrow_bodies(raw["components"]["schemas"])
    raw["paths"].update(_webhook_paths(t))
    return raw


def _load(t: Target, *, narrow: bool) -> Any:
    raw = requests.get(f"{t.base_url}/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(complete_schema(raw, t, narrow=narrow))
    schema.config.update(base_url=t.base_url, request_timeout=30)
    schema.config.generation.update(max_examples=MAX_EXAMPLES)
    return schema


@pytest.fixture
def schemas(target: Target) -> dict[GenerationMode, Any]:
    """The schema positive cases are drawn from (narrowed) and the one negative cases are drawn
    from (as published, plus the order body and the credentials)."""
    return {
        GenerationMode.POSITIVE: _load(target, narrow=True),
        GenerationMode.NEGATIVE: _load(target, narrow=False),
    }


def _run(strategy: Any, examples: int, call: Any) -> None:
    @settings(HYPOTHESIS, max_examples=examples)
    @given(case=strategy)
    def run(case: Any) -> None:
        call(case)

    run()


class StockSeed:
    """The stock counters as the target seeded them, put back before each example of a stock
    route. An accepted receive, adjust or move changes the counters the next example's answer
    depends on (``at most N units can be removed``), so without this a failing example could
    answer otherwise when Hypothesis replays it (a ``FlakyFailure`` that hides the bug). The
    ledger is append-only (a trigger refuses deletes), so it keeps the fuzzer's rows: counters
    and ledger disagree afterwards, which no check here looks at."""

    def __init__(self) -> None:
        with unit_of_work() as s:
            self.rows = [
                dict(row)
                for row in s.execute(text("SELECT sku, warehouse, on_hand, reserved FROM stock"))
                .mappings()
                .all()
            ]

    def restore(self) -> None:
        with unit_of_work() as s:
            s.execute(text("""
                DELETE FROM stock WHERE (sku, warehouse) NOT IN (
                    SELECT x.sku, x.warehouse
                    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS x(sku text, warehouse text))
            """), {"rows": json.dumps(self.rows)})  # fmt: skip
            for row in self.rows:  # a product the fuzzer deleted keeps no stock
                s.execute(text("""
                    INSERT INTO stock (sku, warehouse, on_hand, reserved)
                    SELECT :sku, :warehouse, :on_hand, :reserved
                    WHERE EXISTS (SELECT 1 FROM products WHERE sku = :sku)
                    ON CONFLICT (sku, warehouse) DO UPDATE
                    SET on_hand = excluded.on_hand, reserved = excluded.reserved
                """), row)  # fmt: skip


def _failure(label: str, exc: BaseException) -> str:
    """The whole failure, groups included: a FlakyFailure's own message omits the failure that
    Hypothesis saw first, which is kept in its ``exceptions``."""
    return f"{label}:\n" + "".join(traceback.format_exception(exc))[-4000:]


def test_every_operation_no_5xx_conforms_and_refusals_write_nothing(schemas):
    """Every operation, positive then negative. Failures are collected over all operations
    (each one already shrunk by Hypothesis) and reported together."""
    outcomes: Counter[tuple[str, int]] = Counter()
    failures: list[str] = []
    stock_seed = StockSeed()

    def call(case: Any) -> None:
        if case.operation.path.startswith("/v1/admin/stock"):
            stock_seed.restore()  # each example sees the stock the target seeded
        before = row_counts()
        response = case.call_and_validate(checks=CHECKS)
        outcomes[case.operation.label, response.status_code] += 1
        if case.operation.path.startswith("/webhooks/"):  # nothing here is signed
            assert 400 <= response.status_code < 500, response.status_code
        if 400 <= response.status_code < 500:
            after = row_counts()
            grown = {t: (before[t], after[t]) for t in before if before[t] != after[t]}
            assert not grown, f"answered {response.status_code} but wrote {grown}"

    operations = []
    for mode, schema in schemas.items():
        for op in [result.ok() for result in schema.get_all_operations()]:
            operations.append(op)
            try:
                _run(op.as_strategy(generation_mode=mode), MAX_EXAMPLES, call)
            except Unsatisfiable:
                continue  # nothing to make invalid (GET /healthz has no inputs)
            except Exception as exc:
                failures.append(_failure(f"{op.label} [{mode.value}]", exc))
    for label in sorted({label for label, _ in outcomes}):
        print(label, {code: n for (lbl, code), n in sorted(outcomes.items()) if lbl == label})
    assert not failures, "\n\n".join(failures)
    assert len(operations) >= 2 * 26  # the published operations and the two webhook routes
    assert {label for label, _ in outcomes} == {op.label for op in operations}


def test_webhooks_of_providers_not_configured_are_404_not_500(db, monkeypatch):
    """A deployment that does not use a provider has no webhook for it: anyone posting there
    gets 404 (it used to be a 500 from the missing settings)."""
    from fastapi.testclient import TestClient

    from adapters import registry
    from api.app import create_app

    for name in ("ALIPAY_APP_ID", "WECHATPAY_MCHID", "STRIPE_SECRET_KEY", "KUAIDI100_KEY"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    registry.reset()
    try:
        with TestClient(create_app(), raise_server_exceptions=False) as client:
            for provider in ("alipay", "wechatpay", "stripe", "kuaidi100"):
                r = client.post(f"/webhooks/{provider}", content=b"notify_id=1&sign=x")
                assert r.status_code == 404, (provider, r.status_code, r.text)
                assert r.json()["error"] == "not_found"
    finally:
        registry.reset()


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


# --- POST /v1/orders: negative-only, and the positive control -----------------------------------


def test_invalid_orders_are_refused_and_store_nothing(schemas, target):
    """Negative mode only, with the valid key fixed so every case is an invalid body (the key's
    own negation runs in the every-operation test)."""
    op = schemas[GenerationMode.NEGATIVE]["/v1/orders"]["POST"]
    before = row_counts()
    statuses: Counter[int] = Counter()

    def call(case: Any) -> None:
        response = case.call()
        statuses[response.status_code] += 1
        assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
        if response.status_code == 422:
            details = response.json()["details"]
            assert details and all(d["field"] and d["reason"] for d in details), details

    strategy = op.as_strategy(
        generation_mode=GenerationMode.NEGATIVE, headers={"X-API-Key": target.api_key}
    )
    _run(strategy, ORDER_EXAMPLES, call)
    print(f"negative POST /v1/orders: {dict(statuses)}")
    assert sum(statuses.values()) >= ORDER_EXAMPLES // 2
    assert statuses[422] > sum(statuses.values()) // 2  # most reached validation
    after = row_counts()
    assert after == before, {t: (before[t], after[t]) for t in before if before[t] != after[t]}


def test_valid_orders_are_stored_once_each(schemas):
    """The control for the negative run: the same counting sees every accepted order."""
    op = schemas[GenerationMode.POSITIVE]["/v1/orders"]["POST"]
    before = row_counts()["orders"]
    statuses: Counter[int] = Counter()

    def call(case: Any) -> None:
        response = case.call()
        statuses[response.status_code] += 1
        assert response.status_code < 500, response.text[:500]

    _run(op.as_strategy(generation_mode=GenerationMode.POSITIVE), ORDER_EXAMPLES, call)
    print(f"positive POST /v1/orders: {dict(statuses)}")
    assert statuses[202] > 0
    assert row_counts()["orders"] - before == statuses[202]


# --- webhooks: correctly signed nonsense --------------------------------------------------------

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False), st.text(max_size=40),
)  # fmt: skip
_junk = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=4),
    max_leaves=12,
)  # fmt: skip


def _mostly(*good: Any) -> Any:
    """Usually one of ``good`` (so parsing gets deep), sometimes anything at all."""
    return st.one_of(st.sampled_from(good), st.sampled_from(good), st.sampled_from(good), _junk)


def _object(required: dict[str, Any], optional: dict[str, Any]) -> Any:
    return st.fixed_dictionaries(required, optional=optional)


def _alipay(t: Target, trade: str) -> Any:
    values = st.text(max_size=30) | st.sampled_from(
        ["", "10.00", "0.01", "-1", "1e400", "NaN", "abc", "2024-01-01 10:00:00", "x" * 300]
    )
    return _object(
        {
            "notify_id": _mostly("n-1", "n-2", "") | st.text(max_size=20),
            "app_id": st.sampled_from(["2021000000000001", "2021000000000001", "other"]),
            "out_trade_no": st.sampled_from([trade, trade, "unknown-trade", ""]),
            "trade_status": st.sampled_from(
                ["TRADE_SUCCESS", "TRADE_FINISHED", "TRADE_CLOSED", "WAIT_BUYER_PAY", "", "bogus"]
            ),
        },
        {
            k: values
            for k in (
                "notify_type",
                "total_amount",
                "receipt_amount",
                "refund_fee",
                "gmt_refund",
                "out_biz_no",
                "trade_no",
                "gmt_payment",
                "seller_id",
                "buyer_pay_amount",
                "currency",
            )
        },
    ).map(lambda d: {k: v if isinstance(v, str) else json.dumps(v) for k, v in d.items()})


def _wechat_resource(trade: str) -> Any:
    amount = _object(
        {},
        {
            "total": _mostly(1000, 1, 0, -1, 2**63),
            "payer_total": _scalars,
            "currency": _mostly("CNY", "USD", ""),
            "refund": _scalars,
        },
    )
    return _object({
        "mchid": st.sampled_from(["1900000001", "1900000001", "1900000001", "1900000002"]),
        "out_trade_no": _mostly(trade, "unknown"), "out_refund_no": _mostly("r-1", ""),
        "trade_state": _mostly("SUCCESS", "CLOSED", "REFUND", "NOTPAY", "PAYERROR"),
        "refund_status": _mostly("SUCCESS", "CLOSED", "ABNORMAL", "PROCESSING"),
    }, {
        "amount": amount | _junk, "transaction_id": _scalars,
        "success_time": _mostly("2024-01-01T10:00:00+08:00", "yesterday"), "junk": _junk,
    })  # fmt: skip


def _stripe_event(trade: str) -> Any:
    obj = _object({
        "metadata": _object({}, {"out_trade_no": _mostly(trade, "unknown"),
                                 "refund_no": _scalars}) | _junk,
        "id": _mostly("pi_1", "ch_1", "re_1"), "amount": _mostly(1000, 0, -1, 2**70),
        "currency": _mostly("cny", "usd", "", "xx"),
        "status": _mostly("succeeded", "canceled", "requires_payment_method", "pending"),
    }, {
        "amount_received": _mostly(1000, 0), "amount_refunded": _mostly(0, 1000),
        "payment_intent": _scalars, "junk": _junk,
        "refunds": _object({}, {"data": st.lists(_junk, max_size=2)}),
    })  # fmt: skip
    return _object({
        "id": _mostly("evt_1", "evt_2", ""),
        "type": _mostly("payment_intent.succeeded", "payment_intent.canceled",
                        "payment_intent.payment_failed", "charge.refunded",
                        "charge.refund.updated", "x"),
        "data": _object({"object": obj}, {}) | _junk,
    }, {"created": _scalars})  # fmt: skip


def _kuaidi100_param(trade: str) -> Any:
    step = _object(
        {},
        {
            "time": _mostly("2024-01-01 10:00:00", "bad", ""),
            "ftime": _scalars,
            "context": _scalars,
            "status": _scalars,
            "areaCode": _scalars,
        },
    )
    last = _object({"com": _mostly("yuantong", "sf"), "nu": _mostly(trade, "YT1234567")}, {
        "state": _mostly("0", "1", "3", "5", "14", "x", 3),
        "ischeck": _scalars, "data": st.lists(step | _junk, max_size=3) | _junk,
    })  # fmt: skip
    return _object({"status": _mostly("polling", "shutdown", "abort", "updateall")},
                   {"message": _mostly("", "3天查询无记录"), "lastResult": last | _junk,
                    "autoCheck": _scalars})  # fmt: skip


def _signed(t: Target, provider: str, draw: Any) -> tuple[bytes, dict[str, str]]:
    """A notification signed with the provider's real key whose content is generated."""
    trade = t.order_id.replace("-", "")
    if provider == "alipay":
        body = t.stack.alipay.sign_notification(draw(_alipay(t, trade)))
        return body, {"Content-Type": "application/x-www-form-urlencoded"}
    if provider == "wechatpay":
        kind = draw(st.sampled_from(["TRANSACTION.SUCCESS", "REFUND.SUCCESS", "REFUND.ABNORMAL",
                                     "REFUND.CLOSED", "TRANSACTION.X"]))  # fmt: skip
        headers, body = t.stack.wechatpay.build_notification(kind, draw(_wechat_resource(trade)))
        return body, headers
    if provider == "stripe":
        body = json.dumps(draw(_stripe_event(trade))).encode()
        return body, {"Content-Type": "application/json",
                      "Stripe-Signature": t.stack.stripe.sign(body)}  # fmt: skip
    param = json.dumps(draw(_kuaidi100_param(trade)), ensure_ascii=False)
    salt = os.environ["KUAIDI100_CALLBACK_SALT"]
    sign = hashlib.md5((param + salt).encode()).hexdigest().upper()  # the protocol's MD5
    form = urlencode({"param": param, "sign": sign}).encode()
    return form, {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize("provider", ["alipay", "wechatpay", "stripe", "kuaidi100"])
def test_signed_nonsense_notifications_never_5xx(target, provider):
    """A body signed with the provider's real key but with arbitrary content (wrong types, missing
    fields, unknown statuses, amounts out of range) is parsed after verification: it may be
    acknowledged or refused, but it must never crash the handler, and never move the order
    (it has no payment, so no notification can be for it)."""
    statuses: Counter[int] = Counter()
    session = requests.Session()

    @settings(HYPOTHESIS, max_examples=WEBHOOK_EXAMPLES)
    @given(data=st.data())
    def run(data: Any) -> None:
        body, headers = _signed(target, provider, data.draw)
        r = session.post(f"{target.base_url}/webhooks/{provider}", data=body, headers=headers,
                         timeout=30)  # fmt: skip
        statuses[r.status_code] += 1
        assert r.status_code < 500, (r.status_code, r.text[:300], body[:300])

    run()
    print(f"signed nonsense {provider}: {dict(statuses)}")
    # Some were acknowledged: the signatures are real, so parsing past verification was fuzzed.
    assert sum(n for code, n in statuses.items() if 200 <= code < 300) > 0, statuses
    order = requests.get(f"{target.base_url}/v1/orders/{target.order_id}",
                         headers={"X-API-Key": target.api_key}, timeout=30).json()  # fmt: skip
    assert order["status"] == "RECEIVED" and order["payment"] is None
