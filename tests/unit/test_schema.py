"""The order message: field-level errors and the canonical body hash."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from producers.schema import field_errors, parse_message
from tests.conftest import order_message


def errors_of(data):
    with pytest.raises(ValidationError) as exc:
        parse_message(data)
    return {e["field"]: e["reason"] for e in field_errors(exc.value)}


def test_valid_message_parses():
    msg = parse_message(order_message("SKU-1", 3))
    assert msg.lines[0].quantity == 3


@pytest.mark.parametrize("quantity", [0, -1, 10_001, "2", 1.5])
def test_bad_quantity_names_the_field(quantity):
    data = order_message()
    data["lines"][0]["quantity"] = quantity
    assert "lines.0.quantity" in errors_of(data)


def test_missing_and_unknown_fields():
    data = order_message()
    del data["external_id"]
    data["surprise"] = 1
    errs = errors_of(data)
    assert errs["external_id"] == "Field required"
    assert "surprise" in errs


def test_unknown_currency_and_provider():
    data = order_message(currency="XYZ", provider="paypal")
    errs = errors_of(data)
    assert "unknown currency" in errs["currency"]
    assert "payment_provider" in errs


def test_customer_required():
    data = order_message()
    del data["customer_ref"]
    assert "either customer_ref or user_id" in errors_of(data)["body"]


def test_body_hash_ignores_key_order():
    a = order_message(external_id="x")
    b = dict(reversed(list(a.items())))
    assert parse_message(a).body_hash() == parse_message(b).body_hash()
    c = order_message(external_id="x", sku="SKU-2")
    assert parse_message(a).body_hash() != parse_message(c).body_hash()


@pytest.mark.parametrize("discount", [-1, "5", 1.5, 10**12 + 1])
def test_bad_discount_names_the_field(discount):
    assert "discount" in errors_of({**order_message(), "discount": discount})


def test_a_discount_changes_the_body_and_none_hashes_as_before_discounts_existed():
    plain = order_message(external_id="x")
    assert parse_message(plain).discount == 0
    before = parse_message(plain).body_hash()
    assert parse_message({**plain, "discount": 0}).body_hash() == before  # a repeat, not a conflict
    assert parse_message({**plain, "discount": 100}).body_hash() != before
    # The hash of a message without a discount, as stored before discounts existed.
    import hashlib
    import json

    body = parse_message(plain).model_dump(mode="json", exclude={"discount"})
    legacy = hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    assert before == legacy
