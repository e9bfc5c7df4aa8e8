"""Payment provider webhooks (cancel and refunds are ``/v1/orders`` routes: :mod:`api.orders`).

Webhooks verify before they read (``parse_notification`` raises :class:`SignatureInvalid` on a
forgery, answered with 400 and nothing changed), apply the notification once in one transaction
(deduplicated on the provider's event id), publish follow-ups after the commit, and answer the
way each provider expects (Alipay ``success``, WeChat 204, Stripe 200).

Dispute notifications (Stripe ``charge.dispute.*``, kind ``DISPUTE``) go to
:func:`services.payments.disputes.apply_dispute_notification` instead, which deduplicates the same
way; everything else goes to :func:`services.payments.apply_notification`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from adapters.payments.base import Notification, NotificationKind
from adapters.registry import PAYMENT_PROVIDERS, payment_provider
from api.errors import not_found
from domain.errors import ProviderError, SignatureInvalid
from services import payments
from services.followup import Followup
from services.payments.disputes import apply_dispute_notification
from services.unit_of_work import unit_of_work

log = logging.getLogger(__name__)
router = APIRouter()


def _publish(followups: list[Followup]) -> None:
    if followups:
        from workers.publish import enqueue_followups

        enqueue_followups(followups)


def _apply(provider: str, note: Notification) -> list[Followup]:
    with unit_of_work() as session:
        now = datetime.now(UTC)
        if note.kind is NotificationKind.DISPUTE:
            return apply_dispute_notification(session, provider, note, now=now)
        return payments.apply_notification(session, provider, note, now=now)


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
