"""Shipping routes: the warehouse registers a waybill; Kuaidi100 pushes tracking updates."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from api.auth import require_api_key
from api.errors import error_response
from domain.errors import ConflictError, NotFound, ValidationError
from services import shipping
from services.payments import Followup
from services.unit_of_work import unit_of_work

router = APIRouter()


class WaybillBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    carrier: str = Field(pattern=r"^[a-z0-9]{2,32}$", description="Kuaidi100 code, e.g. yuantong")
    waybill: str = Field(pattern=r"^[A-Za-z0-9-]{6,32}$")


def _register(order_id: str, body: WaybillBody, actor: str) -> list[Followup]:
    from tasks.shipping import first_poll_s

    with unit_of_work() as session:
        return shipping.register_waybill(
            session, order_id, body.carrier, body.waybill, now=datetime.now(UTC), actor=actor,
            first_poll_s=first_poll_s(),
        )  # fmt: skip


@router.post("/v1/orders/{order_id}/shipments", status_code=201)
async def register_shipment(
    order_id: str, body: WaybillBody, source: Annotated[str, Depends(require_api_key)]
) -> Any:
    try:
        followups = await run_in_threadpool(_register, order_id, body, f"api:{source}")
    except NotFound:
        return error_response(404, "not_found", f"order {order_id} not found")
    except ValidationError as exc:
        return error_response(422, "validation_failed", str(exc),
                              [{"field": exc.field, "reason": exc.reason}])  # fmt: skip
    except ConflictError as exc:
        return error_response(409, "conflict", str(exc), [{"field": "waybill", "reason": str(exc)}])
    if followups:
        from tasks.dispatch import enqueue_followups

        await run_in_threadpool(enqueue_followups, followups)
    return {"order_id": order_id, "carrier": body.carrier, "waybill": body.waybill,
            "status": "SHIPPED"}  # fmt: skip
