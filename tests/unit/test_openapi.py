"""The published OpenAPI schema declares every request body and the one error shape, and the error
handlers answer in that shape (api/errors.py). Built without a database: ``app.openapi()`` and
the handlers' responses touch no server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from api.app import create_app
from api.errors import ErrorBody, domain_error_response
from domain.errors import (
    ConflictError,
    InvalidTransition,
    NotFound,
    OrderflowError,
    ProviderRejected,
    ProviderUnavailable,
    ValidationError,
)
from producers.schema import OrderMessage

ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}
METHODS = {"get", "put", "post", "patch", "delete"}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return create_app().openapi()


def operations(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in schema["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield f"{method.upper()} {path}", op


def resolve(schema: dict[str, Any], ref: str) -> dict[str, Any]:
    node: Any = schema
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    assert isinstance(node, dict), ref
    return node


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_order_intake_declares_the_order_message_body(schema):
    """POST /v1/orders reads its body raw (the signature covers the bytes); the schema still
    declares it, with the order message's required fields."""
    body = schema["paths"]["/v1/orders"]["post"]["requestBody"]
    assert body["required"] is True
    message = body["content"]["application/json"]["schema"]
    if "$ref" in message:
        message = resolve(schema, message["$ref"])
    required = set(OrderMessage.model_json_schema()["required"])
    assert {"source", "external_id", "lines", "currency"} <= required
    assert set(message["required"]) == required
    assert set(message["properties"]) == set(OrderMessage.model_fields)


def test_every_reference_resolves(schema):
    for ref in set(refs(schema)):
        resolve(schema, ref)


def test_every_body_is_declared(schema):
    bodies = {label for label, op in operations(schema) if "requestBody" in op}
    assert {
        "POST /v1/orders", "POST /v1/orders/{order_id}/cancel",
        "POST /v1/orders/{order_id}/refunds", "POST /v1/orders/{order_id}/shipments",
        "POST /v1/users", "POST /v1/sessions",
        "POST /v1/admin/products", "PUT /v1/admin/callbacks/{source}",
    } <= bodies  # fmt: skip


def test_no_operation_declares_fastapis_validation_error(schema):
    assert "HTTPValidationError" not in json.dumps(schema)
    for label, op in operations(schema):
        if op.get("parameters") or "requestBody" in op:
            assert "422" in op["responses"], label
            assert op["responses"]["422"]["content"]["application/json"]["schema"] == ERROR_BODY


def test_every_error_response_is_the_error_shape(schema):
    for label, op in operations(schema):
        errors = {s: r for s, r in op["responses"].items() if s[0] in "45"}
        assert errors, label
        for status, response in errors.items():
            assert response["content"]["application/json"]["schema"] == ERROR_BODY, (label, status)
    body = resolve(schema, ERROR_BODY["$ref"])
    assert set(body["required"]) == {"error", "message"}
    detail = resolve(schema, body["properties"]["details"]["items"]["$ref"])
    assert set(detail["required"]) == {"field", "reason"}


def test_the_order_routes_declare_their_errors(schema):
    post = schema["paths"]["/v1/orders"]["post"]["responses"]
    assert {"400", "401", "403", "409", "413", "422", "503"} <= set(post)
    get = schema["paths"]["/v1/orders/{order_id}"]["get"]["responses"]
    assert {"401", "404", "422"} <= set(get)


# --- the handlers answer in that shape --------------------------------------------------------


def answer(exc: OrderflowError) -> tuple[int, dict[str, Any]]:
    response = domain_error_response(exc)
    body = json.loads(bytes(response.body))
    ErrorBody.model_validate(body)
    return response.status_code, body


@pytest.mark.parametrize(
    ("exc", "status", "expected"),
    [
        (
            ValidationError("currency", "unknown currency"),
            422,
            {"error": "validation_failed", "message": "currency: unknown currency",
             "details": [{"field": "currency", "reason": "unknown currency"}]},
        ),
        (
            NotFound("product P-9 not found", field="sku"),
            404,
            {"error": "not_found", "message": "product P-9 not found",
             "details": [{"field": "sku", "reason": "product P-9 not found"}]},
        ),
        (
            NotFound("something else"),  # a raiser that names no field: the 404 says "id"
            404,
            {"error": "not_found", "message": "something else",
             "details": [{"field": "id", "reason": "something else"}]},
        ),
        (
            ConflictError("email is already registered", field="email",
                          reason="already registered"),
            409,
            {"error": "conflict", "message": "email is already registered",
             "details": [{"field": "email", "reason": "already registered"}]},
        ),
        (
            ConflictError("no field named"),
            409,
            {"error": "conflict", "message": "no field named"},
        ),
        (
            InvalidTransition("PAID", "RECEIVED"),
            409,
            {"error": "conflict", "message": "transition PAID -> RECEIVED is not allowed",
             "details": [{"field": "status",
                          "reason": "transition PAID -> RECEIVED is not allowed"}]},
        ),
        (
            ProviderUnavailable("alipay", "timed out"),
            503,
            {"error": "unavailable", "message": "alipay: timed out"},
        ),
        (
            ProviderRejected("stripe", "card declined", code="card_declined"),
            502,
            {"error": "provider_error", "message": "stripe: card declined [card_declined]"},
        ),
        (OrderflowError("a bug"), 500, {"error": "internal_error", "message": "internal error"}),
    ],
)  # fmt: skip
def test_the_domain_tree_maps_to_the_error_shape(exc, status, expected):
    assert answer(exc) == (status, expected)


def test_positional_construction_still_works():
    exc = NotFound("order 1f2e")
    assert (str(exc), exc.field, exc.reason) == ("order 1f2e", None, "order 1f2e")
    conflict = ConflictError("refund r-1 already exists with different details")
    assert conflict.field is None and conflict.reason == str(conflict)
