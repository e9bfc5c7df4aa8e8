"""The order message: one pydantic model for every way in (HTTP, broker, JSONL file).

Errors are reported per field (``lines.0.quantity: Input should be greater than 0``) by
:func:`field_errors`, so every edge answers bad input the same way.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic import ValidationError as PydanticValidationError

from domain.money import CURRENCY_EXPONENTS


def _no_nul(value: str) -> str:
    # PostgreSQL cannot store NUL in text or jsonb: refuse it here, naming the field.
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000) characters")
    return value


NoNul = AfterValidator(_no_nul)
Code = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), NoNul]
Ref = Annotated[str, StringConstraints(min_length=1, max_length=128), NoNul]
Phone = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^\+?[0-9][0-9 -]{5,19}$")]

PROVIDERS = ("alipay", "wechatpay", "stripe")
MAX_QUANTITY = 10_000
MAX_DISCOUNT = 10**12  # minor units: far above any order, well inside BIGINT


class ShippingAddress(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Text
    phone: Phone
    line1: Text
    line2: Annotated[str, StringConstraints(max_length=200), NoNul] | None = None
    city: Text
    region: Annotated[str, StringConstraints(max_length=100), NoNul] | None = None
    postal_code: Annotated[str, StringConstraints(max_length=20), NoNul] | None = None
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]


class OrderLineIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sku: Code
    quantity: int = Field(gt=0, le=MAX_QUANTITY, strict=True)


class OrderMessage(BaseModel):
    """An order as upstream sends it. ``(source, external_id)`` is the idempotency key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Code
    external_id: Ref
    customer_ref: Ref | None = None
    user_id: int | None = Field(None, gt=0)
    lines: list[OrderLineIn] = Field(min_length=1, max_length=100)
    #: An order-level discount in minor units (a coupon, a promotion): the order is charged its
    #: lines' catalog total less this (never below 0), and the difference is split over the
    #: lines in proportion at reservation, so a return refunds each line's charged share.
    discount: int = Field(0, ge=0, le=MAX_DISCOUNT, strict=True)
    currency: str
    payment_provider: Literal["alipay", "wechatpay", "stripe"]
    shipping_address: ShippingAddress

    @field_validator("currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        if value not in CURRENCY_EXPONENTS:
            raise ValueError(f"unknown currency; expected one of {sorted(CURRENCY_EXPONENTS)}")
        return value

    @model_validator(mode="after")
    def _customer(self) -> OrderMessage:
        if self.customer_ref is None and self.user_id is None:
            raise ValueError("either customer_ref or user_id is required")
        return self

    def body_hash(self) -> str:
        """SHA-256 of the canonical JSON body: equal for equal orders, whatever the key order."""
        # No discount hashes as before discounts existed: a repeat of an order stored then is
        # still recognised as the same body.
        body = self.model_dump(mode="json", exclude={"discount"} if not self.discount else None)
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def field_errors(exc: PydanticValidationError) -> list[dict[str, str]]:
    """``[{"field": "lines.0.quantity", "reason": "..."}]`` from a pydantic error."""
    out = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        out.append({"field": loc, "reason": err["msg"]})
    return out


def parse_message(data: Any) -> OrderMessage:
    """Validate a decoded JSON value as an order message (raises pydantic's ValidationError)."""
    return OrderMessage.model_validate(data)
