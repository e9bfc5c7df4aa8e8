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
  signed by the provider (signed bodies: test_fuzz_api_webhooks.py).

The published schema is completed in :func:`complete_schema` before the run, and each change is
for a reason: ``POST /v1/orders`` reads its body by hand, so its request body (the
:class:`~producers.schema.OrderMessage` JSON schema) is added; the credential headers
(``X-API-Key``, ``X-Admin-Key``, ``Authorization``) become required with the test deployment's
one valid value, so positive cases get past authentication and negative cases test it; path ids
name the seeded order and products. In the schema positive cases are drawn from (only there:
outside a narrowed set a value may still be valid), values a route checks in code (currency,
SKU, password policy) are narrowed too, so positive cases reach the database.

Random generation rarely puts a hostile value inside a request that is otherwise valid:
test_fuzz_api_hostile.py does that systematically.

Each operation runs through ``APIOperation.as_strategy`` under Hypothesis' ``@given``:
``schemathesis.pytest.from_fixture`` fails on pytest 9.2 (it writes ``Node._nodeid``).

Size: ``max_examples`` per operation and mode is small by default (the API fuzzers run in about
a minute and a half on 2 cores) and larger with ``RELIABILITY_FULL=1``.
"""

from __future__ import annotations

import copy
import json
import time
import traceback
from collections import Counter
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import negative_data_rejection, response_schema_conformance
from sqlalchemy import text

from domain.money import CURRENCY_EXPONENTS
from producers.schema import OrderMessage
from services.unit_of_work import unit_of_work
from tests.security.conftest import row_counts
from tests.security.fuzz_api_support import ADMIN_KEY, FULL, HYPOTHESIS, SKUS, Target

MAX_EXAMPLES = 250 if FULL else 40
ORDER_EXAMPLES = 300 if FULL else 60
CHECKS = [not_a_server_error, response_schema_conformance, negative_data_rejection]

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


# Every operation in both modes: at full size (250 examples each) this takes longer than the
# suite's default 300 s timeout.
@pytest.mark.timeout(2400 if FULL else 300)
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
