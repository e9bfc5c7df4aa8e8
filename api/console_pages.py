"""The console's order list (``/console/orders``) and what every console template shares: the
Jinja filters for money, durations and statuses coloured by meaning.

Filters (registered on the console's template environment by :func:`install_filters`):

* ``money``: ``{{ amount | money(currency) }}``, :func:`domain.money.format_money` (the one
  formatter the CLI uses too); a missing amount shows ``—``.
* ``tone``: ``{{ status | tone("order") }}``, the CSS class of a status by its meaning
  (:data:`TONES`): ``tone-good`` (ended well, or the money is in), ``tone-wait`` (on its way),
  ``tone-bad`` (needs a person, or failed), ``tone-off`` (cancelled, expired, closed). Kinds:
  ``order``, ``payment``, ``refund``, ``shipment``, ``dead_letter``, ``endpoint``; a status
  the table does not know is ``tone-wait``.
* ``duration``: seconds as ``4 min 10 s`` (:func:`services.console_charts.format_duration`);
  ``axis``: a chart's axis figure (``20k``).

The order list reads :mod:`services.console_orders` (filters, keyset pages, capped total).

The pipeline page's charts (:func:`pipeline_charts`) are kept for :data:`CHARTS_TTL_S` in each
API process: they are hourly figures of the last 24 hours, and computing them reads every
transition of the day (about half a second at 250,000 transitions a day), which a page that
operators reload should not repeat every time. The page says when they were computed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from jinja2 import Environment
from sqlalchemy.orm import Session

from adapters.registry import PAYMENT_PROVIDERS
from api import console_auth as auth
from api.console_auth import Clock, Store
from domain.aftersale import ReturnStatus
from domain.errors import ValidationError
from domain.money import format_money
from domain.orders import OrderStatus
from domain.payments import PaymentStatus, RefundStatus
from domain.tracking import ShipmentStatus
from services import console_charts
from services.console_charts import format_duration
from services.console_orders import Cursor, OrderFilter, order_list
from services.unit_of_work import unit_of_work

T = TypeVar("T")
router = APIRouter(prefix="/console", include_in_schema=False)

Ord, Pay, Ref, Shp, Ret = OrderStatus, PaymentStatus, RefundStatus, ShipmentStatus, ReturnStatus
#: Per kind of status: the statuses that are good, bad (a person must look, or it failed) and
#: off (cancelled, expired, closed); every other status is on its way ("wait").
TONES: dict[str, dict[str, frozenset[str]]] = {
    "order": {
        "good": frozenset({Ord.COMPLETED, Ord.RECEIPT_CONFIRMED, Ord.DELIVERED}),
        "bad": frozenset({Ord.NEEDS_ATTENTION, Ord.REJECTED}),
        "off": frozenset({Ord.CANCELLED, Ord.EXPIRED}),
    },
    "payment": {
        "good": frozenset({Pay.PAID, Pay.PARTIALLY_REFUNDED}),
        "off": frozenset({Pay.CLOSED, Pay.REFUNDED}),
    },
    "refund": {"good": frozenset({Ref.SUCCEEDED}), "bad": frozenset({Ref.FAILED})},
    "shipment": {
        "good": frozenset({Shp.DELIVERED}),
        "bad": frozenset({Shp.EXCEPTION, Shp.ATTEMPT_FAIL}),
        "off": frozenset({Shp.EXPIRED}),
    },
    "dead_letter": {"bad": frozenset({"OPEN"}), "off": frozenset({"DISCARDED"})},
    "return": {
        "good": frozenset({Ret.REFUNDED, Ret.RESHIPPED}),
        "bad": frozenset({Ret.REQUESTED}),  # waits for an operator's decision
        "off": frozenset({Ret.REJECTED, Ret.CLOSED}),
    },
    "endpoint": {
        "good": frozenset({"ok"}),
        "bad": frozenset({"paused", "failing"}),
        "off": frozenset({"inactive"}),
    },
}


def tone(status: str | None, kind: str = "order") -> str:
    """The CSS class for ``status`` of ``kind`` (see :data:`TONES`)."""
    for name, statuses in TONES[kind].items():
        if status in statuses:
            return f"tone-{name}"
    return "tone-wait"


def money(amount: int | None, currency: str) -> str:
    return "—" if amount is None else format_money(amount, currency)


def install_filters(env: Environment) -> None:
    """Register ``money``, ``tone``, ``duration`` and ``axis`` on the console's templates."""
    env.filters.update({"money": money, "tone": tone, "duration": format_duration,
                        "axis": console_charts.axis_label})  # fmt: skip


install_filters(auth.templates.env)


def _read(fn: Callable[[Session], T]) -> T:
    with unit_of_work() as session:
        return fn(session)


CHARTS_TTL_S = 60.0
_charts: dict[str, Any] = {}  # {"at": monotonic seconds, "data": the context}
_charts_lock = threading.Lock()


def pipeline_charts() -> dict[str, Any]:
    """The charts' context (``activity``, ``rejections``, ``charts_at``): computed at most once
    per :data:`CHARTS_TTL_S` per process (one request computes; others arriving meanwhile wait
    for it rather than run the same scan). Call from a worker thread: it blocks."""
    with _charts_lock:
        if _charts and time.monotonic() - _charts["at"] < CHARTS_TTL_S:
            return dict(_charts["data"])
        data = _read(
            lambda s: {
                "activity": console_charts.activity(s),
                "rejections": console_charts.rejections(s),
                "charts_at": datetime.now(UTC),
            }
        )
        _charts.update(at=time.monotonic(), data=data)
        return dict(data)


def forget_charts() -> None:
    """Drop the kept charts (the next page computes them again)."""
    with _charts_lock:
        _charts.clear()


@router.get("/orders")
async def orders(
    request: Request, store: Store, now: Clock, status: str = "", reason: str = "",
    provider: str = "", source: str = "", older_than: str = "", before: str = "",
    after: str = "",
) -> Response:  # fmt: skip
    """Orders newest first, filtered (:class:`services.console_orders.OrderFilter`), 50 a page."""
    session = await auth.current(request, store, now)
    if session is None:
        return auth.to_login(request)
    typed = {"status": status, "reason": reason, "provider": provider, "source": source,
             "older_than": older_than}  # fmt: skip
    typed = {k: v[:200] for k, v in typed.items()}
    context: dict[str, Any] = {
        "s": session, "nav": "orders", "f": typed, "data": None,
        "query": urlencode({k: v for k, v in typed.items() if v}),
        "statuses": [s.value for s in OrderStatus], "providers": PAYMENT_PROVIDERS,
    }  # fmt: skip
    try:
        wanted = OrderFilter.parse(**typed)
        older = Cursor.parse(before) if before else None
        newer = Cursor.parse(after) if after else None
    except ValidationError as exc:
        return auth.page(request, "console/orders.html", {**context, "error": str(exc)}, 400)
    context["data"] = await run_in_threadpool(
        _read, lambda s: order_list(s, wanted, before=older, after=newer)
    )
    return auth.page(request, "console/orders.html", context)
