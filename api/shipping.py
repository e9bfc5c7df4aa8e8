"""Shipping routes: the warehouse registers a waybill; Kuaidi100 pushes tracking updates."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from adapters.logistics.base import PushUpdate
from adapters.registry import tracking_provider
from api.auth import require_api_key
from api.errors import error_response, not_found
from domain.errors import ConflictError, NotFound, ProviderError, SignatureInvalid, ValidationError
from services import shipping, tracking
from services.followup import Followup
from services.queries import ensure_order_source
from services.unit_of_work import unit_of_work
from settings import get_settings

log = logging.getLogger(__name__)
router = APIRouter()


class WaybillBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    carrier: str = Field(pattern=r"^[a-z0-9]{2,32}$", description="Kuaidi100 code, e.g. yuantong")
    waybill: str = Field(pattern=r"^[A-Za-z0-9-]{6,32}$")


def _register(order_id: str, body: WaybillBody, source: str) -> list[Followup]:
    with unit_of_work() as session:
        ensure_order_source(session, order_id, source)
        return shipping.register_waybill(
            session, order_id, body.carrier, body.waybill, now=datetime.now(UTC),
            actor=f"api:{source}",
            first_poll_s=get_settings().tracking_first_poll_s,
        )  # fmt: skip


@router.post("/v1/orders/{order_id}/shipments", status_code=201)
async def register_shipment(
    order_id: str, body: WaybillBody, source: Annotated[str, Depends(require_api_key)]
) -> Any:
    try:
        followups = await run_in_threadpool(_register, order_id, body, source)
    except NotFound:
        return not_found("order_id", f"order {order_id} not found")
    except ValidationError as exc:
        return error_response(422, "validation_failed", str(exc),
                              [{"field": exc.field, "reason": exc.reason}])  # fmt: skip
    except ConflictError as exc:
        return error_response(409, "conflict", str(exc), [{"field": "waybill", "reason": str(exc)}])
    if followups:
        from workers.publish import enqueue_followups

        await run_in_threadpool(enqueue_followups, followups)
    return {"order_id": order_id, "carrier": body.carrier, "waybill": body.waybill,
            "status": "SHIPPED"}  # fmt: skip


def _apply_push(update: PushUpdate) -> bool:
    """Apply a verified push; False if the waybill is not one of ours."""
    if update.result is None:
        return True
    with unit_of_work() as session:
        shipment = shipping.shipment_by_waybill(
            session, update.result.carrier, update.result.waybill
        )
        if shipment is None:
            return False
        tracking.apply_result(session, shipment.id, update.result, now=datetime.now(UTC),
                              source="push")  # fmt: skip
    return True


@router.post("/webhooks/kuaidi100", include_in_schema=False)
async def kuaidi100_push(request: Request) -> Response:
    """Kuaidi100 push: verify ``sign = upper(MD5(param + salt))`` first, then apply, then ack."""
    try:
        provider = tracking_provider()
    except ProviderError as exc:  # not configured in this deployment: there is no webhook
        log.warning("kuaidi100 push refused: %s", exc)
        return not_found("provider", "no webhook for 'kuaidi100'")
    # Parsed by hand: a form-urlencoded body needs no extra dependency (python-multipart).
    raw = (await request.body()).decode("utf-8", errors="replace")
    form = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}
    try:
        update = provider.parse_push(form)
    except SignatureInvalid as exc:
        log.warning("rejected kuaidi100 push from %s: %s", request.client, exc)
        _status, body, content_type = provider.push_reply(False)
        return Response(body, status_code=400, media_type=content_type)
    except ProviderError as exc:
        _status, body, content_type = provider.push_reply(False)
        log.warning("unreadable kuaidi100 push: %s", exc)
        return Response(body, status_code=400, media_type=content_type)
    if not await run_in_threadpool(_apply_push, update):
        log.info("kuaidi100 push for a waybill we do not track; acknowledged")
    status, body, content_type = provider.push_reply(True)
    return Response(body, status_code=status, media_type=content_type)
