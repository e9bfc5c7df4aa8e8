"""Hypothesis against the order message: mutations of a valid message (a field dropped, a value of
the wrong type, huge or negative numbers, arbitrary unicode, nested junk, oversize strings, unknown
fields) fed to

(a) the validation layer every way in shares (:func:`producers.schema.parse_message`, then
    :func:`producers.intake.accept` into real PostgreSQL), and
(b) ``POST /v1/orders`` over HTTP (FastAPI's TestClient on the real app, real PostgreSQL).

Properties: validation either accepts or raises pydantic's ValidationError with every error naming
a field, never anything else; what it accepts can be stored (the database never refuses it); a
mutation that is invalid by construction is refused naming the mutated field (or its parent or
child); over HTTP never a 5xx, an invalid message gets 422 (or 400 for a body that is not JSON)
with ``details`` naming a field and stores nothing, and a valid one gets 202 (200 for a repeat)
and stores exactly one order.
"""

from __future__ import annotations

import copy
import json
import os
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError as PydanticValidationError

from domain.errors import ConflictError
from producers.intake import accept
from producers.schema import MAX_QUANTITY, field_errors, parse_message
from tests.conftest import order_message
from tests.security.conftest import row_counts

FULL = os.environ.get("RELIABILITY_FULL") == "1"
LAYER_EXAMPLES = 5000 if FULL else 1000
HTTP_EXAMPLES = 2000 if FULL else 400
HYPOTHESIS = settings(
    deadline=None,
    database=None,
    derandomize=not FULL,
    suppress_health_check=list(HealthCheck),
)

Path_ = tuple[Any, ...]

#: Longest accepted length of each string field (patterns cap phone/country/currency lower).
MAX_LEN = {"source": 64, "external_id": 128, "customer_ref": 128, "sku": 64, "name": 200,
           "line1": 200, "line2": 200, "city": 200, "region": 100, "postal_code": 20,
           "phone": 21, "country": 2, "currency": 3, "payment_provider": 9}  # fmt: skip
OPTIONAL = {("shipping_address", "line2"), ("shipping_address", "region"),
            ("shipping_address", "postal_code"), ("user_id",)}  # fmt: skip


def base_message(extra: bool) -> dict[str, Any]:
    msg = order_message([("SKU-1", 2), ("SKU-2", 1)] if extra else "SKU-1", 1)
    if extra:
        msg["shipping_address"].update(line2="Flat 2", region="Pudong", postal_code="200120")
    return msg


def paths(value: Any, path: Path_ = ()) -> list[Path_]:
    """Every path into ``value`` (not the root)."""
    out: list[Path_] = []
    if isinstance(value, dict | list):
        items: Any = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            out.append((*path, key))
            out.extend(paths(item, (*path, key)))
    return out


def replace(msg: dict[str, Any], path: Path_, new: Any) -> dict[str, Any]:
    msg = copy.deepcopy(msg)
    parent: Any = msg
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = new
    return msg


def drop(msg: dict[str, Any], path: Path_) -> dict[str, Any]:
    msg = copy.deepcopy(msg)
    parent: Any = msg
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    return msg


def get(msg: Any, path: Path_) -> Any:
    for key in path:
        msg = msg[key]
    return msg


_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
)  # fmt: skip
_nested = st.recursive(
    _scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                         inner, max_size=4),
    max_leaves=20,
).filter(lambda v: isinstance(v, list | dict))  # fmt: skip
_huge = st.one_of(
    st.integers(min_value=MAX_QUANTITY + 1), st.integers(max_value=0),
    st.sampled_from([2**31, 2**63, 2**64, 10**100, -(2**63) - 1, 10**4000]),
)  # fmt: skip
_unicode = st.text(st.characters(codec=None), max_size=60) | st.sampled_from(
    ["\x00", "a\x00", "\ud800", "\udfff", "\u202e\u2066", "\ufeff", "😀" * 50, "\u0301" * 40,
     " ", "\t\n", "'; DROP TABLE orders; --"]
)  # fmt: skip


@st.composite
def mutations(draw: Any) -> tuple[str, Path_, dict[str, Any], bool]:
    """(kind, mutated path, message, invalid by construction)."""
    msg = base_message(draw(st.booleans()))
    msg["external_id"] = uuid.uuid4().hex  # hypothesis replays keep distinct keys
    kind = draw(
        st.sampled_from(
            ["drop", "type", "huge", "negative", "unicode", "nested", "oversize", "extra", "valid"]
        )
    )
    all_paths = paths(msg)
    leaves = [p for p in all_paths if not isinstance(get(msg, p), dict | list)]
    if kind == "valid":
        return kind, (), msg, False
    if kind == "drop":
        path = draw(st.sampled_from([p for p in all_paths if isinstance(p[-1], str)]))
        return kind, path, drop(msg, path), path not in OPTIONAL
    if kind == "type":
        path = draw(st.sampled_from(leaves))
        old = get(msg, path)
        new = draw(_scalar.filter(lambda v: type(v) is not type(old) and v is not None)
                   | _nested)  # fmt: skip
        return kind, path, replace(msg, path, new), True
    if kind in ("huge", "negative"):
        where = draw(st.sampled_from(["quantity", "user_id"]))
        path: Path_ = ("lines", 0, "quantity") if where == "quantity" else ("user_id",)
        value = draw(_huge if kind == "huge" else st.integers(max_value=0))
        # A huge user_id is a valid int: refused only because no such user exists (422).
        return kind, path, replace(msg, path, value), where == "quantity" or value <= 0
    if kind == "unicode":
        path = draw(st.sampled_from([p for p in leaves if isinstance(get(msg, p), str)]))
        return kind, path, replace(msg, path, draw(_unicode)), False
    if kind == "nested":
        path = draw(st.sampled_from(all_paths))
        return kind, path, replace(msg, path, draw(_nested)), True
    if kind == "oversize":
        path = draw(st.sampled_from([p for p in leaves if isinstance(get(msg, p), str)]))
        limit = MAX_LEN[next(k for k in reversed(path) if isinstance(k, str))]
        size = draw(st.integers(limit + 1, 60_000))  # under the 1 MiB body limit
        return kind, path, replace(msg, path, draw(st.sampled_from("xé字😀")) * size), True
    parent = draw(st.sampled_from([(), ("shipping_address",), ("lines", 0)]))
    key = draw(st.text(min_size=1, max_size=20).filter(lambda k: k not in get(msg, parent)))
    path = (*parent, key)
    return kind, path, replace(msg, path, draw(_scalar)), True


def names_field(fields: list[str], path: Path_) -> bool:
    """Some error names the mutated field, one of its parents or one of its children."""
    p = ".".join(str(k) for k in path)
    for f in fields:
        if f == p or f.startswith(p + ".") or p.startswith(f + "."):
            return True
        # "either customer_ref or user_id" is a model-level rule: it names the whole body.
        if f == "body" and path[:1] in (("customer_ref",), ("user_id",)):
            return True
    return False


def _run(examples: int, body: Any) -> None:
    @settings(HYPOTHESIS, max_examples=examples)
    @given(case=mutations())
    def run(case: tuple[str, Path_, dict[str, Any], bool]) -> None:
        body(*case)

    run()


# --- (a) the validation layer and the store behind it -------------------------------------------


def test_validation_layer_accepts_only_storable_messages_and_names_fields(db, catalog):
    """Hypothesis over parse_message then accept(): every accepted message is stored by the
    database (NUL, surrogates or out-of-range numbers that slipped through would fail here)."""
    catalog({"SKU-1": 10, "SKU-2": 10})
    kinds: Counter[tuple[str, str]] = Counter()

    def check(kind: str, path: Path_, msg: dict[str, Any], invalid: bool) -> None:
        # Through JSON, as every way in receives it (HTTP body, broker message, JSONL line).
        data = json.loads(json.dumps(msg))
        try:
            parsed = parse_message(data)
        except PydanticValidationError as exc:
            fields = [e["field"] for e in field_errors(exc)]
            assert fields and all(fields), fields
            assert all(e["reason"] for e in field_errors(exc))
            if invalid:
                assert names_field(fields, path), (kind, path, fields)
            kinds[kind, "refused"] += 1
            return
        assert not invalid, f"{kind} at {path} was accepted: {parsed!r}"[:500]
        json.dumps(parsed.model_dump(mode="json"))  # what the broker would carry
        if parsed.user_id is None:
            try:
                result = accept(parsed, channel="test")
            except ConflictError:
                return  # the key repeated with another body (a mutated external_id): refused
            assert result.order_id
        kinds[kind, "accepted"] += 1

    _run(LAYER_EXAMPLES, check)
    print(f"validation layer: {dict(sorted(kinds.items()))}")
    assert kinds["valid", "accepted"] > 0
    for kind in ("drop", "type", "huge", "negative", "nested", "oversize", "extra"):
        assert kinds[kind, "refused"] > 0, kind


# --- (b) POST /v1/orders ------------------------------------------------------------------------


@pytest.fixture
def client(db, catalog):
    from api.app import create_app

    catalog({"SKU-1": 10, "SKU-2": 10})
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


def test_http_intake_refuses_invalid_names_field_stores_nothing_and_accepts_valid(client, api_key):
    seen: dict[tuple[str, str], str] = {}
    statuses: Counter[tuple[str, int]] = Counter()

    def check(kind: str, path: Path_, msg: dict[str, Any], invalid: bool) -> None:
        body = json.dumps(msg)
        before = row_counts()
        r = client.post(
            "/v1/orders",
            content=body,
            headers={"X-API-Key": api_key, "Content-Type": "application/json"},
        )
        statuses[kind, r.status_code] += 1
        assert r.status_code < 500, (kind, path, r.status_code, r.text[:300])
        after = row_counts()
        try:
            parsed = parse_message(json.loads(body))
        except PydanticValidationError:
            parsed = None
        if parsed is None or parsed.user_id is not None:
            # Invalid (or naming a user that does not exist): 422 naming the field, no row.
            assert r.status_code == 422, (kind, path, r.status_code, r.text[:300])
            details = r.json()["details"]
            fields = [d["field"] for d in details]
            assert fields and all(fields) and all(d["reason"] for d in details), details
            if invalid:
                assert names_field(fields, path), (kind, path, fields)
            assert after == before, (kind, path)
            return
        assert not invalid, (kind, path, r.status_code)
        key = (parsed.source, parsed.external_id)
        if key not in seen:
            assert r.status_code == 202, (kind, path, r.text[:300])
            assert after["orders"] == before["orders"] + 1
            seen[key] = parsed.body_hash()
        else:
            expected = 200 if seen[key] == parsed.body_hash() else 409
            assert r.status_code == expected, (kind, path, r.text[:300])
            assert after["orders"] == before["orders"]

    _run(HTTP_EXAMPLES, check)
    print(f"POST /v1/orders: {dict(sorted(statuses.items()))}")
    assert statuses["valid", 202] > 0
    assert sum(n for (_k, code), n in statuses.items() if code == 422) > HTTP_EXAMPLES // 3


DEEP = 100_000


@pytest.mark.parametrize(
    "body",
    [
        "[" * DEEP + "]" * DEEP,
        json.dumps(order_message())[:-1] + ', "x": ' + "{\"a\": " * DEEP + "1" + "}" * DEEP + "}",
        json.dumps(order_message()).replace('"cust-1"', "[" * DEEP + "]" * DEEP),
        "\x00",
        '{"source": "web\x00"}',
        json.dumps(order_message()).replace('"cust-1"', '"cust\\u0000"'),
        json.dumps(order_message()).replace('"cust-1"', '"\\ud800"'),
        json.dumps(order_message()).replace('"cust-1"', "NaN"),
        json.dumps(order_message()).replace('"quantity": 1', '"quantity": 1e999999'),
        b"\xff\xfe\x00\x00",
        json.dumps(order_message()).replace('"quantity": 1', '"quantity": 1' + "0" * 5000),
        json.dumps({**order_message(), "\ud800": 1}),
        json.dumps({**order_message(), "lines": [{"sku": "SKU-1", "quantity": 1, "\udfff": 1}]}),
    ],
    ids=["deep-array", "deep-extra-field", "deep-in-field", "nul", "raw-nul", "escaped-nul",
         "lone-surrogate", "nan", "huge-exponent", "bad-utf8", "5000-digit-int",
         "surrogate-key", "surrogate-nested-key"],
)  # fmt: skip
def test_hostile_bodies_are_4xx_naming_a_field_and_store_nothing(client, api_key, body):
    before = row_counts()
    r = client.post(
        "/v1/orders",
        content=body,
        headers={"X-API-Key": api_key, "Content-Type": "application/json"},
    )
    assert r.status_code in (400, 422), (r.status_code, r.text[:300])
    details = r.json()["details"]
    assert details and all(d["field"] and d["reason"] for d in details), details
    assert row_counts() == before


def test_jsonl_import_reports_hostile_lines_and_keeps_good_ones(db, catalog, tmp_path: Path):
    """The batch way in shares the validation: hostile lines are reported by number (never a
    traceback), the good line is stored."""
    from cli.intake import import_jsonl

    catalog({"SKU-1": 10})
    good = order_message("SKU-1", 1)
    lines = [
        "[" * DEEP + "]" * DEEP,
        json.dumps(good),
        json.dumps({**order_message(), "customer_ref": "a\x00b"}),
        json.dumps({**order_message(), "external_id": "x" * 10_000}),
    ]
    path = tmp_path / "orders.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = import_jsonl(path, show_progress=False)
    assert report.accepted == 1 and row_counts()["orders"] == 1
    assert [n for n, _ in report.errors] == [1, 3, 4], report.errors
    assert "customer_ref" in report.errors[1][1] and "external_id" in report.errors[2][1]
