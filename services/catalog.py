"""Catalog and stock receipts (the administrative side grows in the users/catalog issue)."""

from __future__ import annotations

from sqlalchemy import insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from domain.errors import ValidationError
from domain.money import Money
from models import Product, Stock, StockMovement
from services import catalog_admin
from services.locks import lock_stock

#: Most units one (sku, warehouse) can hold on hand: ``stock.on_hand`` is an INTEGER column.
ON_HAND_MAX = 2**31 - 1


def check_room(on_hand: int, adding: int, field_name: str) -> None:
    """``ValidationError(field_name, ...)`` when adding ``adding`` units to ``on_hand`` would
    pass :data:`ON_HAND_MAX` (the database would refuse it with an error, not a reason)."""
    if on_hand + adding > ON_HAND_MAX:
        raise ValidationError(
            field_name, f"would put {on_hand + adding} units on hand; at most {ON_HAND_MAX}"
        )


def upsert_product(
    session: Session, sku: str, name: str, price: Money, active: bool = True, *, actor: str = "seed"
) -> None:
    """Create the product or update its name, price and active flag (price history included).

    A convenience for seeding (demo, tests); the admin API and CLI use
    :mod:`services.catalog_admin` directly.
    """
    if session.scalar(select(Product.id).where(Product.sku == sku)) is None:
        catalog_admin.create_product(session, sku, name, price, active=active, actor=actor)
        return
    catalog_admin.update_product(
        session, sku, name=name, price_amount=price.amount, currency=price.currency,
        active=active, actor=actor,
    )  # fmt: skip


def receive_stock(
    session: Session, sku: str, warehouse: str, quantity: int, *, actor: str, reason: str = ""
) -> None:
    """Add ``quantity`` units on hand, with a ledger row."""
    if quantity <= 0:
        raise ValidationError("quantity", "must be greater than 0")
    session.execute(
        pg_insert(Stock)
        .values(sku=sku, warehouse=warehouse, on_hand=0, reserved=0)
        .on_conflict_do_nothing()
    )
    row = lock_stock(session, [(sku, warehouse)])[(sku, warehouse)]
    check_room(row.on_hand, quantity, "quantity")
    row.on_hand += quantity
    session.execute(
        insert(StockMovement).values(
            sku=sku,
            warehouse=warehouse,
            kind="receive",
            delta_on_hand=quantity,
            reason=reason or None,
            actor=actor,
        )
    )
