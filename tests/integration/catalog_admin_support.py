"""Database probes shared by the catalog administration tests (admin API and CLI)."""

from __future__ import annotations

from sqlalchemy import func, select, text

from models import Product
from services.unit_of_work import unit_of_work


def product(sku: str) -> Product | None:
    with unit_of_work() as s:
        return s.scalars(select(Product).where(Product.sku == sku)).one_or_none()


def count(model) -> int:
    with unit_of_work() as s:
        return s.scalar(select(func.count()).select_from(model))


def waiting_on_a_lock(query_prefix: str) -> list[int]:
    """Backends of this database blocked on a lock while running a statement that starts so."""
    with unit_of_work() as s:
        return list(s.scalars(text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query ILIKE :q"
        ), {"q": f"{query_prefix}%"}))  # fmt: skip
