"""Catalog administration: products created, updated, priced, deactivated and deleted, with a
price history, and the field checks the API, the CLI and the importer share.

Contracts:

* **SKU** is 1-64 characters of ``A-Z a-z 0-9 _ . : -`` (what an order line may name); the name
  is 1-200 characters after stripping; prices are :class:`Money` (integer minor units and an
  ISO 4217 currency orderflow knows). Invalid input raises ``ValidationError`` naming the field.
* **Price history.** Every price a product gets (at creation and at each change of amount or
  currency) is a ``product_prices`` row with the actor and the database clock taken while the
  product row is locked, so history order is commit order. The newest row is the current price.
* **Delete** (:func:`delete_product`) removes a product only if no order line ever named it and
  it never had stock (no ledger rows, no counters): a product that orders or the append-only
  ledger refer to is deactivated instead, and the caller is told which happened. Order lines
  still uncommitted when the delete starts count too (it waits for them).

Import and export (CSV and JSONL) live in :mod:`services.catalog_import`.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import delete, exists, func, insert, select
from sqlalchemy import text as sql_text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from domain.errors import ConflictError, NotFound, ValidationError
from domain.money import CURRENCY_EXPONENTS, Money, MoneyError
from models import OrderLine, Product, ProductPrice, Stock, StockMovement

# --- field checks (shared by the API, the CLI and the importer) --------------------------------

_CODE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")  # fullmatch: "$" would let a final "\n" pass
NAME_MAX = 200
#: Largest accepted price, in minor units: far above any product, far below BIGINT.
PRICE_MAX = 10**12
#: Longest return window a product may have: a year.
RETURN_WINDOW_MAX_S = 366 * 86_400


def check_code(value: object, field_name: str) -> str:
    """A SKU or warehouse code, or ``ValidationError(field_name, ...)``."""
    if not isinstance(value, str) or not value:
        raise ValidationError(field_name, "is required")
    if not _CODE.fullmatch(value):
        raise ValidationError(
            field_name, "must be 1-64 characters of letters, digits, '_', '.', ':' or '-'"
        )
    return value


def check_name(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("name", "is required")
    name = value.strip()
    if len(name) > NAME_MAX:
        raise ValidationError("name", f"must be at most {NAME_MAX} characters")
    return name


def check_price(amount: object, currency: object) -> Money:
    """Money from an integer amount of minor units and a known currency (no float, no bool)."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise ValidationError(
            "price_amount", "must be an integer number of minor units (1250 for 12.50)"
        )
    if not 0 <= amount <= PRICE_MAX:
        raise ValidationError("price_amount", f"must be between 0 and {PRICE_MAX}")
    if not isinstance(currency, str) or currency not in CURRENCY_EXPONENTS:
        raise ValidationError(
            "currency", f"unknown currency; expected one of {', '.join(sorted(CURRENCY_EXPONENTS))}"
        )
    try:
        return Money(amount, currency)
    except MoneyError as exc:  # unreachable after the checks above; kept as the last guard
        raise ValidationError("price_amount", str(exc)) from None


def check_window(value: object) -> int:
    """A product's return window in seconds, or ``ValidationError("return_window_s", ...)``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError("return_window_s", "must be a whole number of seconds")
    if not 0 <= value <= RETURN_WINDOW_MAX_S:
        raise ValidationError("return_window_s", f"must be between 0 and {RETURN_WINDOW_MAX_S}")
    return value


# --- single products ---------------------------------------------------------------------------


def product_view(product: Product) -> dict[str, Any]:
    return {
        "sku": product.sku,
        "name": product.name,
        "price_amount": product.price_amount,
        "currency": product.currency,
        "active": product.active,
        "returnable": product.returnable,
        "return_window_s": product.return_window_s,
        "created_at": product.created_at.isoformat(),
        "updated_at": product.updated_at.isoformat(),
    }


def _locked(session: Session, sku: str) -> Product:
    product = session.scalars(
        select(Product).where(Product.sku == sku).with_for_update()
    ).one_or_none()
    if product is None:
        raise NotFound(f"product {sku} not found", field="sku")
    return product


def record_price(session: Session, sku: str, price: Money, actor: str) -> None:
    # clock_timestamp(), not now(): now() is the transaction's start, which need not follow
    # the order in which concurrent price changes obtained the product lock.
    session.execute(
        insert(ProductPrice).values(
            sku=sku,
            price_amount=price.amount,
            currency=price.currency,
            valid_from=func.clock_timestamp(),
            actor=actor,
        )
    )


def create_product(
    session: Session, sku: str, name: str, price: Money, *, active: bool = True, actor: str
) -> Product:
    """Create a product and the first row of its price history; ``ConflictError`` if the SKU
    exists (use :func:`update_product` to change it)."""
    sku = check_code(sku, "sku")
    name = check_name(name)
    created = session.execute(
        pg_insert(Product)
        .values(
            sku=sku, name=name, price_amount=price.amount, currency=price.currency, active=active
        )
        .on_conflict_do_nothing(index_elements=[Product.sku])  # the unique index decides
        .returning(Product.id)
    ).scalar_one_or_none()
    if created is None:
        raise ConflictError(
            f"sku: product {sku} already exists",
            field="sku",
            reason=f"product {sku} already exists",
        )
    record_price(session, sku, price, actor)
    product = session.get(Product, created)
    assert product is not None
    return product


def update_product(
    session: Session,
    sku: str,
    *,
    name: str | None = None,
    price_amount: int | None = None,
    currency: str | None = None,
    active: bool | None = None,
    returnable: bool | None = None,
    return_window_s: int | None = None,
    actor: str,
) -> Product:
    """Change any of name, price (amount and/or currency), active and the after-sale terms
    (``returnable``: whether a return may be approved without an operator; ``return_window_s``:
    the product's own window after receipt, at most :data:`RETURN_WINDOW_MAX_S`). A price
    change writes a price history row; an unchanged price writes none."""
    product = _locked(session, sku)
    if name is not None:
        product.name = check_name(name)
    if price_amount is not None or currency is not None:
        price = check_price(
            product.price_amount if price_amount is None else price_amount,
            product.currency if currency is None else currency,
        )
        if (price.amount, price.currency) != (product.price_amount, product.currency):
            product.price_amount, product.currency = price.amount, price.currency
            record_price(session, sku, price, actor)
    if active is not None:
        product.active = active
    if returnable is not None:
        product.returnable = returnable
    if return_window_s is not None:
        product.return_window_s = check_window(return_window_s)
    session.flush()
    session.refresh(product)
    return product


def deactivate_product(session: Session, sku: str, *, actor: str) -> Product:
    """Stop selling: new orders naming the SKU are rejected (``inactive_product``); existing
    reservations are untouched. Idempotent."""
    return update_product(session, sku, active=False, actor=actor)


def delete_product(session: Session, sku: str, *, actor: str) -> str:
    """Delete a product that was never ordered and never stocked, with its price history, and
    return ``"deleted"``; otherwise deactivate it and return ``"deactivated"``.

    Intake inserts order lines without locking the product, so an order line inserted but not
    yet committed would be invisible to the check. ``LOCK TABLE order_lines IN SHARE MODE``
    closes that gap: it waits for every transaction that has inserted order lines to finish
    (SHARE conflicts with their ROW EXCLUSIVE), so the check then sees them, and it holds new
    inserts back until this transaction ends; an order line arriving after the delete commits
    is rejected by the reservation as ``unknown_sku``. Deletion is a rare admin act, so stalling
    intake for one short transaction is the cheap side of the trade. The table lock is taken
    before the product row lock: an intake transaction that locks the product after inserting
    its lines then cannot deadlock with us. Stock rows need no lock: their foreign key to the
    product row serializes them with the delete.
    """
    session.execute(sql_text("LOCK TABLE order_lines IN SHARE MODE"))
    product = _locked(session, sku)
    referenced = session.scalar(
        select(
            exists().where(OrderLine.sku == sku)
            | exists().where(StockMovement.sku == sku)
            | exists().where(Stock.sku == sku)
        )
    )
    if referenced:
        product.active = False
        session.flush()
        return "deactivated"
    session.execute(delete(Product).where(Product.id == product.id))
    return "deleted"


def price_history(session: Session, sku: str) -> list[dict[str, Any]]:
    """Every price the product has had, oldest first (the last one is current)."""
    if not session.scalar(select(exists().where(Product.sku == sku))):
        raise NotFound(f"product {sku} not found", field="sku")
    rows = session.scalars(
        select(ProductPrice)
        .where(ProductPrice.sku == sku)
        .order_by(ProductPrice.valid_from, ProductPrice.id)
    )
    return [
        {
            "price_amount": r.price_amount,
            "currency": r.currency,
            "valid_from": r.valid_from.isoformat(),
            "actor": r.actor,
        }
        for r in rows
    ]


def list_products(
    session: Session, *, active: bool | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    stmt = select(Product).order_by(Product.sku).limit(limit)
    if active is not None:
        stmt = stmt.where(Product.active.is_(active))
    return [product_view(p) for p in session.scalars(stmt)]
