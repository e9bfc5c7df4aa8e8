"""Catalog and stock administration, behind the admin API key (header ``X-Admin-Key``, compared
in constant time with the ``ADMIN_API_KEY`` setting; with no key configured every request is
refused with 401).

Products (prices are integer minor units, ``price_amount`` + ``currency``):

* ``GET /v1/admin/products`` (``?active=true&limit=``), ``POST /v1/admin/products`` -> 201
  (409 if the SKU exists), ``PATCH /v1/admin/products/{sku}`` (any of ``name``,
  ``price_amount``, ``currency``, ``active``), ``POST /v1/admin/products/{sku}/deactivate``,
  ``GET /v1/admin/products/{sku}/prices`` (the price history, oldest first).
* ``DELETE /v1/admin/products/{sku}`` -> 200 ``{"sku", "outcome": "deleted"}`` only for a
  product never ordered and never stocked; otherwise the product is deactivated and the outcome
  is ``"deactivated"`` (orders and the append-only stock ledger must keep pointing at it).

Stock (every change is a ledger row): ``POST /v1/admin/stock/receive``
``{sku, warehouse, quantity, reason?}``, ``/adjust`` ``{sku, warehouse, delta, reason}``,
``/move`` ``{sku, from_warehouse, to_warehouse, quantity, reason?}``;
``GET /v1/admin/stock/drift`` lists repair proposals (read-only; applying them is the CLI's
``orderflow stock repair --apply``).

Errors: 401 without a valid key, 404 for an unknown SKU or stock row, 409 for a taken SKU,
422 naming the field.
"""

from __future__ import annotations

import hmac
import logging
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Header, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field, SecretStr, StrictBool, StrictInt
from sqlalchemy.orm import Session

from api.errors import error_response, error_responses, run_in_unit_of_work
from services import catalog_admin, stock_admin
from settings import get_settings

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/admin", responses=error_responses(401, 404, 409))
T = TypeVar("T")
ACTOR = "admin-api"


def admin_api_key_setting() -> SecretStr | None:
    """The configured admin key (a dependency of its own, so tests can supply one)."""
    value = getattr(get_settings(), "admin_api_key", None)
    if isinstance(value, str):
        return SecretStr(value) if value else None
    return value if isinstance(value, SecretStr) and value.get_secret_value() else None


def require_admin(
    configured: Annotated[SecretStr | None, Depends(admin_api_key_setting)],
    x_admin_key: Annotated[str | None, Header()] = None,
) -> str:
    """The actor name for the ledger and price history, or 401."""
    if configured is None:
        log.warning("admin API called but ADMIN_API_KEY is not set; refusing")
    elif x_admin_key and hmac.compare_digest(
        configured.get_secret_value().encode(), x_admin_key.encode()
    ):
        return ACTOR
    raise HTTPException(status_code=401, detail="missing or invalid X-Admin-Key")


Admin = Annotated[str, Depends(require_admin)]


# --- products ----------------------------------------------------------------------------------


class ProductCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: str = Field(max_length=64)
    name: str = Field(max_length=1000)
    price_amount: StrictInt = Field(ge=0, description="Minor units: 1250 = 12.50")
    currency: str = Field(max_length=3)
    active: StrictBool = True


class ProductPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, max_length=1000)
    price_amount: StrictInt | None = Field(None, ge=0)
    currency: str | None = Field(None, max_length=3)
    active: StrictBool | None = None
    returnable: StrictBool | None = Field(
        None, description="Whether a return of it may be approved without an operator"
    )
    return_window_s: StrictInt | None = Field(
        None, description="Its own return window after receipt (seconds; default the shop's)"
    )


@router.get("/products")
def list_products(
    _actor: Admin,
    active: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> Any:
    return run_in_unit_of_work(
        lambda s: {"products": catalog_admin.list_products(s, active=active, limit=limit)}
    )


@router.post("/products", status_code=201)
def create_product(body: ProductCreate, actor: Admin) -> Any:
    def create(session: Session) -> dict[str, Any]:
        price = catalog_admin.check_price(body.price_amount, body.currency)
        product = catalog_admin.create_product(
            session, body.sku, body.name, price, active=body.active, actor=actor
        )
        return catalog_admin.product_view(product)

    return run_in_unit_of_work(create)


@router.patch("/products/{sku}")
def update_product(sku: str, body: ProductPatch, actor: Admin) -> Any:
    changes = body.model_dump(exclude_unset=True)
    if not changes or None in changes.values():
        return error_response(
            422, "validation_failed", "nothing to change",
            [{"field": "body", "reason": "give one or more of name, price_amount, currency, "
              "active, returnable, return_window_s (not null)"}],
        )  # fmt: skip
    return run_in_unit_of_work(
        lambda s: catalog_admin.product_view(
            catalog_admin.update_product(s, sku, actor=actor, **changes)
        )
    )


@router.post("/products/{sku}/deactivate")
def deactivate_product(sku: str, actor: Admin) -> Any:
    return run_in_unit_of_work(
        lambda s: catalog_admin.product_view(catalog_admin.deactivate_product(s, sku, actor=actor))
    )


@router.delete("/products/{sku}")
def delete_product(sku: str, actor: Admin) -> Any:
    return run_in_unit_of_work(
        lambda s: {"sku": sku, "outcome": catalog_admin.delete_product(s, sku, actor=actor)}
    )


@router.get("/products/{sku}/prices")
def price_history(sku: str, _actor: Admin) -> Any:
    return run_in_unit_of_work(
        lambda s: {"sku": sku, "prices": catalog_admin.price_history(s, sku)}
    )


# --- stock -------------------------------------------------------------------------------------


class ReceiveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: str = Field(max_length=64)
    warehouse: str | None = Field(None, max_length=64, description="Default: DEFAULT_WAREHOUSE")
    quantity: StrictInt = Field(gt=0)
    reason: str | None = Field(None, max_length=200)


class AdjustBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: str = Field(max_length=64)
    warehouse: str | None = Field(None, max_length=64)
    delta: StrictInt = Field(description="Units to add (positive) or remove (negative)")
    reason: str = Field(min_length=1, max_length=200)


class MoveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: str = Field(max_length=64)
    from_warehouse: str = Field(max_length=64)
    to_warehouse: str = Field(max_length=64)
    quantity: StrictInt = Field(gt=0)
    reason: str | None = Field(None, max_length=200)


def _warehouse(value: str | None) -> str:
    return value or get_settings().default_warehouse


@router.post("/stock/receive")
def receive(body: ReceiveBody, actor: Admin) -> Any:
    return run_in_unit_of_work(
        lambda s: stock_admin.receive(
            s, body.sku, _warehouse(body.warehouse), body.quantity, actor=actor,
            reason=body.reason,
        ).as_dict()
    )  # fmt: skip


@router.post("/stock/adjust")
def adjust(body: AdjustBody, actor: Admin) -> Any:
    return run_in_unit_of_work(
        lambda s: stock_admin.adjust(
            s, body.sku, _warehouse(body.warehouse), body.delta, reason=body.reason, actor=actor
        ).as_dict()
    )


@router.post("/stock/move")
def move(body: MoveBody, actor: Admin) -> Any:
    def run(session: Session) -> dict[str, Any]:
        src, dst = stock_admin.move(
            session, body.sku, body.from_warehouse, body.to_warehouse, body.quantity,
            actor=actor, reason=body.reason,
        )  # fmt: skip
        return {"from": src.as_dict(), "to": dst.as_dict()}

    return run_in_unit_of_work(run)


@router.get("/stock")
def stock_report(
    _actor: Admin, sku: Annotated[str | None, Query(min_length=1, max_length=64)] = None
) -> Any:
    """What ``orderflow stock report`` shows: on hand / reserved / available per SKU and
    warehouse, and the repairs the ledger check proposes (never applied here)."""
    return run_in_unit_of_work(
        lambda s: {
            "stock": [level.as_dict() for level in stock_admin.levels(s, sku)],
            "proposals": [p.as_dict() for p in stock_admin.propose_repairs(s)],
        }
    )


@router.get("/stock/drift")
def drift(_actor: Admin) -> Any:
    return run_in_unit_of_work(
        lambda s: {"proposals": [p.as_dict() for p in stock_admin.propose_repairs(s)]}
    )
