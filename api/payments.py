"""Payment routes: provider webhooks, cancel and refunds.

Webhooks verify before they read (``parse_notification`` raises :class:`SignatureInvalid` on a
forgery, answered with 400 and nothing changed), apply the notification once in one transaction
(deduplicated on the provider's event id), publish follow-ups after the commit, and answer the
way each provider expects (Alipay ``success``, WeChat 204, Stripe 200).
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from adapters.registry import PAYMENT_PROVIDERS, payment_provider
from api.auth import require_api_key
from api.errors import error_response, not_found
from domain.errors import ConflictError, NotFound, ProviderError, SignatureInvalid, ValidationError
from services import payments
from services.followup import Followup
from services.queries import ensure_order_source
from services.unit_of_work import unit_of_work

log = logging.getLogger(__name__)
router = APIRouter()


def _publish(followups: list[Followup]) -> None:
    if followups:
        from workers.publish import enqueue_followups

        enqueue_followups(followups)


def _apply(provider: str, note: Any) -> list[Followup]:
    with unit_of_work() as session:
        return payments.apply_notification(session, provider, note, now=datetime.now(UTC))


@router.post("/webhooks/{provider}", include_in_schema=False)
async def webhook(provider: str, request: Request) -> Response:
    if provider not in PAYMENT_PROVIDERS:
        return not_found("provider", f"no webhook for {provider!r}")
    try:
        adapter = payment_provider(provider)
    except ProviderError as exc:  # not configured in this deployment: there is no webhook
        log.warning("%s notification refused: %s", provider, exc)
        return not_found("provider", f"no webhook for {provider!r}")
    body = await request.body()
    try:
        note = adapter.parse_notification(dict(request.headers), body)
    except SignatureInvalid as exc:
        # A security event: log who sent it, never the body (it may carry personal data).
        log.warning("rejected %s notification from %s: %s", provider, request.client, exc)
        reply = adapter.notification_reply(False)
        return Response(reply.body, status_code=400, media_type=reply.content_type)
    except ProviderError as exc:
        reply = adapter.notification_reply(False)
        return Response(str(exc).encode(), status_code=400, media_type=reply.content_type)
    followups = await run_in_threadpool(_apply, provider, note)
    await run_in_threadpool(_publish, followups)
    reply = adapter.notification_reply(True)
    return Response(reply.body, status_code=reply.status_code, media_type=reply.content_type)


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("requested by upstream", min_length=1, max_length=200)


class RefundBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: int | None = Field(None, gt=0, description="Minor units; omit for the full remainder")
    refund_no: str | None = Field(
        None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
        description="Your refund number; the same number is the same refund (idempotent)",
    )  # fmt: skip
    reason: str = Field("requested", min_length=1, max_length=200)


def _cancel(order_id: str, reason: str, source: str) -> list[Followup]:
    with unit_of_work() as session:
        ensure_order_source(session, order_id, source)
        return payments.cancel_order(
            session, order_id, now=datetime.now(UTC), actor=f"api:{source}", reason=reason
        )


@router.post("/v1/orders/{order_id}/cancel", status_code=202)
async def cancel(
    order_id: str, body: CancelRequest, source: Annotated[str, Depends(require_api_key)]
) -> Any:
    try:
        followups = await run_in_threadpool(_cancel, order_id, body.reason, source)
    except NotFound:
        return not_found("order_id", f"order {order_id} not found")
    except ConflictError as exc:
        return error_response(409, "conflict", str(exc), [{"field": "status", "reason": str(exc)}])
    await run_in_threadpool(_publish, followups)
    return {"id": order_id, "status": "CANCELLED"}


def _refund(order_id: str, body: RefundBody, refund_no: str, source: str) -> list[Followup]:
    with unit_of_work() as session:
        ensure_order_source(session, order_id, source)
        followup = payments.refund_for_order(
            session, order_id, amount=body.amount, refund_no=refund_no, reason=body.reason,
            actor=f"api:{source}", now=datetime.now(UTC),
        )  # fmt: skip
    return [followup] if followup else []


@router.post("/v1/orders/{order_id}/refunds", status_code=202)
async def refund(
    order_id: str, body: RefundBody, source: Annotated[str, Depends(require_api_key)]
) -> Any:
    refund_no = body.refund_no or f"r-{uuid.uuid4().hex[:24]}"
    try:
        followups = await run_in_threadpool(_refund, order_id, body, refund_no, source)
    except NotFound:
        return not_found("order_id", f"order {order_id} not found")
    except ValidationError as exc:
        return error_response(422, "validation_failed", str(exc),
                              [{"field": exc.field, "reason": exc.reason}])  # fmt: skip
    except ConflictError as exc:
        return error_response(
            409, "conflict", str(exc), [{"field": "refund_no", "reason": str(exc)}]
        )
    await run_in_threadpool(_publish, followups)
    return {"order_id": order_id, "refund_no": refund_no, "status": "REQUESTED"}
