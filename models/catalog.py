"""Products and their price history, stock counters per (sku, warehouse) and the append-only
stock ledger."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, DateTime, ForeignKey, Index, String, func, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, CreatedAt, Currency, MinorUnits, UpdatedAt


class Product(Base):
    __tablename__ = "products"
    __table_args__ = (CheckConstraint("price_amount >= 0", name="price_not_negative"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    price_amount: Mapped[MinorUnits]
    currency: Mapped[Currency]
    active: Mapped[bool] = mapped_column(server_default=text("true"))
    # After-sale (issue 22): whether a return may be approved without an operator, and the
    # product's own window after receipt (None: AFTERSALE_WINDOW_S).
    returnable: Mapped[bool] = mapped_column(server_default=text("true"))
    return_window_s: Mapped[int | None]
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class ProductPrice(Base):
    """One row per price a product has had: valid from ``valid_from`` until the next row's.

    Written beside every price change made through ``services.catalog_admin`` (never updated);
    the newest row equals ``products.price_amount`` / ``currency``. Rows go with the product
    when a never-ordered product is deleted.
    """

    __tablename__ = "product_prices"
    __table_args__ = (
        CheckConstraint("price_amount >= 0", name="price_not_negative"),
        Index("ix_product_prices_sku_valid_from", "sku", "valid_from"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sku: Mapped[str] = mapped_column(
        String(64), ForeignKey("products.sku", onupdate="CASCADE", ondelete="CASCADE")
    )
    price_amount: Mapped[MinorUnits]
    currency: Mapped[Currency]
    valid_from: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    actor: Mapped[str | None] = mapped_column(String(100))


class Stock(Base):
    """Counters for one SKU in one warehouse. ``available = on_hand - reserved``.

    The CHECK is the last guard against oversell: a bug that tried to reserve more than is on
    hand fails the transaction instead of corrupting stock.
    """

    __tablename__ = "stock"
    __table_args__ = (
        CheckConstraint("0 <= reserved AND reserved <= on_hand", name="reserved_within_on_hand"),
    )

    sku: Mapped[str] = mapped_column(
        String(64), ForeignKey("products.sku", onupdate="CASCADE"), primary_key=True
    )
    warehouse: Mapped[str] = mapped_column(String(64), primary_key=True)
    on_hand: Mapped[int] = mapped_column(server_default=text("0"))
    reserved: Mapped[int] = mapped_column(server_default=text("0"))
    updated_at: Mapped[UpdatedAt]


class StockMovement(Base):
    """One row per change of a stock counter; never updated or deleted.

    For every (sku, warehouse): ``sum(delta_on_hand) == on_hand`` and
    ``sum(delta_reserved) == reserved`` — the drift check compares exactly that.
    """

    __tablename__ = "stock_movements"
    __table_args__ = (Index("ix_stock_movements_sku_warehouse", "sku", "warehouse"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sku: Mapped[str] = mapped_column(String(64))
    warehouse: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))  # receive, adjust, reserve, release, ship, move
    delta_on_hand: Mapped[int] = mapped_column(server_default=text("0"))
    delta_reserved: Mapped[int] = mapped_column(server_default=text("0"))
    order_id: Mapped[str | None] = mapped_column(String(36), index=True)
    reason: Mapped[str | None] = mapped_column(String(200))
    actor: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[CreatedAt]
