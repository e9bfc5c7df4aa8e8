"""After-sale routes (issue 22), behind the intake API key; a key bound to a source reaches only
its source's orders and their returns (another's are answered like missing ones, 404).

* ``POST /v1/orders/{order_id}/returns`` -> 201 with the return: ``kind`` REFUND_ONLY,
  RETURN_AND_REFUND or EXCHANGE, ``lines`` by SKU with quantities, a ``reason``. Approved at
  once when the policy allows (``RETURN_AUTO_APPROVE_MAX``), else REQUESTED for an operator.
* ``GET /v1/orders/{order_id}/returns``, ``GET /v1/returns/{id}``.
* ``POST /v1/returns/{id}/approve`` | ``/reject`` -> the decision (the shop's back office; the
  CLI and the console do the same for operators).
* ``POST /v1/returns/{id}/parcel`` -> the buyer's return waybill, tracked back (Kuaidi100
  pushes and polling): its delivery at the warehouse moves the return to RECEIVED.
* ``POST /v1/returns/{id}/receive`` -> the warehouse's receipt, a disposition per line
  (restock, damaged, lost); settles the return (line refund, the exchange's replacement
  reserved and booked, or closed).

The rules and their errors (each naming its field) are in :mod:`services.returns` and
:mod:`services.return_receipt`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api.auth import require_api_key
from api.errors import error_responses
from domain.errors import NotFound
from models import Order
from services import return_receipt, returns
from services.followup import Followup
from services.queries import ensure_order_source
from services.return_views import get_return, returns_of
from services.unit_of_work import unit_of_work
from settings import get_settings

router = APIRouter(prefix="/v1", responses=error_responses(401, 404, 409), tags=["returns"])
Source = Annotated[str, Depends(require_api_key)]
Sku = Annotated[str, Field(min_length=1, max_length=64)]
#: The return as answered, and the tasks to publish once its transaction committed.
_Answer = tuple[dict[str, Any], list[Followup]]


class ReturnLineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: Sku
    quantity: int = Field(gt=0, le=10_000, strict=True)


class ReturnRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["REFUND_ONLY", "RETURN_AND_REFUND", "EXCHANGE"]
    lines: list[ReturnLineIn] = Field(min_length=1, max_length=100)
    reason: str = Field(min_length=1, max_length=200)
    return_no: str | None = Field(
        None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
        description="Your number for this request: the same number is the same return "
        "(a retry after a lost answer asks nothing twice)",
    )  # fmt: skip


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str = Field("", max_length=200)


class ParcelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    carrier: str = Field(pattern=r"^[a-z0-9]{2,32}$", description="Kuaidi100 code, e.g. yuantong")
    waybill: str = Field(pattern=r"^[A-Za-z0-9-]{6,32}$")


class FoundLine(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: Sku
    restock: int = Field(0, ge=0, strict=True)
    damaged: int = Field(0, ge=0, strict=True)
    lost: int = Field(0, ge=0, strict=True)


class ReceiptIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    warehouse: str | None = Field(
        None, min_length=1, max_length=64,
        description="Where the units go back on hand; default: the warehouse each line left from",
    )  # fmt: skip
    lines: list[FoundLine] = Field(min_length=1, max_length=100)


def _publish(followups: list[Followup]) -> None:
    if followups:
        from workers.publish import enqueue_followups  # the Celery app only once we publish

        enqueue_followups(followups)


def _now() -> datetime:
    return datetime.now(UTC)


def _request(order_id: str, body: ReturnRequest, source: str) -> tuple[_Answer, bool]:
    from workers.ports import return_policy

    with unit_of_work() as session:
        ensure_order_source(session, order_id, source)
        out = returns.request_return(
            session, order_id, kind=body.kind, lines=[(x.sku, x.quantity) for x in body.lines],
            reason=body.reason, actor=f"api:{source}", policy=return_policy(), now=_now(),
            return_no=body.return_no,
        )  # fmt: skip
        return (get_return(session, out.return_id), out.followups), out.repeat


@router.post("/orders/{order_id}/returns", status_code=201)
async def request_return(order_id: str, body: ReturnRequest, source: Source) -> Any:
    """201 with the new return; 200 with the stored one for a repeat of its ``return_no``."""
    (view, followups), repeat = await run_in_threadpool(_request, order_id, body, source)
    await run_in_threadpool(_publish, followups)
    return JSONResponse(view, status_code=200) if repeat else view


def _list(order_id: str, source: str) -> dict[str, Any]:
    with unit_of_work() as session:
        ensure_order_source(session, order_id, source)
        if session.get(Order, order_id) is None:  # the wildcard key reaches any: still 404
            raise NotFound(f"order {order_id} not found", field="order_id")
        return {"order_id": order_id, "returns": returns_of(session, order_id)}


@router.get("/orders/{order_id}/returns")
async def list_returns(order_id: str, source: Source) -> Any:
    return await run_in_threadpool(_list, order_id, source)


def _get(return_id: int, source: str) -> dict[str, Any]:
    with unit_of_work() as session:
        return get_return(session, return_id, source)


@router.get("/returns/{return_id}")
async def show_return(return_id: int, source: Source) -> Any:
    return await run_in_threadpool(_get, return_id, source)


def _decide(
    return_id: int, approve: bool, note: str, source: str
) -> tuple[dict[str, Any], list[Followup]]:
    from workers.ports import return_policy

    with unit_of_work() as session:
        get_return(session, return_id, source)  # 404 for another source's
        out = returns.decide(
            session, return_id, approve=approve, actor=f"api:{source}", note=note,
            policy=return_policy(), now=_now(),
        )  # fmt: skip
        return get_return(session, return_id), out.followups


@router.post("/returns/{return_id}/approve")
async def approve(return_id: int, body: Decision, source: Source) -> Any:
    view, followups = await run_in_threadpool(_decide, return_id, True, body.note, source)
    await run_in_threadpool(_publish, followups)
    return view


@router.post("/returns/{return_id}/reject")
async def reject(return_id: int, body: Decision, source: Source) -> Any:
    view, _ = await run_in_threadpool(_decide, return_id, False, body.note, source)
    return view


def _parcel(return_id: int, body: ParcelIn, source: str) -> _Answer:
    with unit_of_work() as session:
        get_return(session, return_id, source)
        out = returns.register_parcel(
            session, return_id, carrier=body.carrier, waybill=body.waybill,
            actor=f"api:{source}", now=_now(), first_poll_s=get_settings().tracking_first_poll_s,
        )  # fmt: skip
        return get_return(session, return_id), out.followups


@router.post("/returns/{return_id}/parcel")
async def register_parcel(return_id: int, body: ParcelIn, source: Source) -> Any:
    """The buyer's return waybill: tracked back like any parcel (pushes and polling)."""
    view, followups = await run_in_threadpool(_parcel, return_id, body, source)
    await run_in_threadpool(_publish, followups)
    return view


def _receive(return_id: int, body: ReceiptIn, source: str) -> _Answer:
    from workers.ports import allocation_policy

    with unit_of_work() as session:
        get_return(session, return_id, source)
        _status, followups = return_receipt.receive(
            session, return_id, [(x.sku, (x.restock, x.damaged, x.lost)) for x in body.lines],
            warehouse=body.warehouse, default_warehouse=get_settings().default_warehouse,
            actor=f"api:{source}", now=_now(), allocation=allocation_policy(),
            redrive_s=get_settings().shipping_redrive_s,
        )  # fmt: skip
        return get_return(session, return_id), followups


@router.post("/returns/{return_id}/receive")
async def receive(return_id: int, body: ReceiptIn, source: Source) -> Any:
    view, followups = await run_in_threadpool(_receive, return_id, body, source)
    await run_in_threadpool(_publish, followups)
    return view
