"""Kuaidi100 pushes tracking updates here (the warehouse registers a waybill through
``POST /v1/orders/{order_id}/shipments``: :mod:`api.orders`)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from urllib.parse import parse_qs

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from adapters.logistics.base import PushUpdate
from adapters.registry import tracking_provider
from api.errors import not_found
from domain.errors import ProviderError, SignatureInvalid
from services import parcels, tracking
from services.unit_of_work import unit_of_work

log = logging.getLogger(__name__)
router = APIRouter()


def _apply_push(update: PushUpdate) -> bool:
    """Apply a verified push; False if the waybill is not one of ours."""
    if update.result is None:
        return True
    with unit_of_work() as session:
        shipment = parcels.shipment_by_waybill(
            session, update.result.carrier, update.result.waybill
        )
        if shipment is None:
            return False
        # Applies lastResult, then ends tracking on a shutdown / abort (services.tracking.finish).
        tracking.apply_push(session, shipment.id, update, now=datetime.now(UTC))
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
