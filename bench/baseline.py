"""The seed-style baseline: one process, SQLAlchemy ORM, one transaction per order doing
select product and stock -> check stock -> insert order and line -> update stock -> commit,
the way the original tutorial code does (no row locks, no ledger, no timeline, no queue)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from models import Order, OrderLine, Product, Stock
from models.db import get_engine


def _one_order(session: Session, sku: str, quantity: int) -> bool:
    product = session.scalars(select(Product).where(Product.sku == sku)).one()
    stock = session.get(Stock, (sku, "main"))
    if stock is None or stock.on_hand - stock.reserved < quantity:
        session.rollback()
        return False
    order_id = str(uuid.uuid4())
    session.add(
        Order(
            id=order_id, source="bench-seed", external_id=uuid.uuid4().hex, body_hash="seed",
            status="RESERVED", currency="CNY", total_amount=product.price_amount * quantity,
            payment_provider="alipay", shipping_address={"line1": "1 Bench Road"},
        )
    )  # fmt: skip
    session.flush()
    session.add(OrderLine(order_id=order_id, line_no=1, sku=sku, quantity=quantity))
    stock.reserved += quantity
    session.commit()
    return True


def seed_style(skus: Sequence[str], *, seconds: float = 5.0, cap: int = 20_000) -> float:
    """Orders/s of the naive synchronous loop (one thread), bounded in time and count."""
    done = 0
    started = time.monotonic()
    with Session(get_engine(), expire_on_commit=True) as session:
        while done < cap and time.monotonic() - started < seconds:
            _one_order(session, skus[(done * 7) % len(skus)], 1)
            done += 1
    return done / (time.monotonic() - started)
