"""The ``/v1/orders`` routes, behind the intake API key (``X-API-Key``, see :mod:`api.auth`).

* ``POST /v1/orders`` stores the order (committed) before it answers: 202 for a new order, 200
  for a repeat of the same ``(source, external_id)`` and body, 409 for the same key with a
  different body, 400 for a body that is not JSON, 422 naming the field, 403 for a key bound to
  another source. Concurrent requests of one process are stored by a group commit
  (:mod:`api.group_commit`, :func:`services.intake.accept_orders`): one transaction for the
  batch, then one ``orders.reserve_batch`` message carrying the new orders' ids (one per
  ``RESERVE_BATCH_MAX``); each request still gets its own answer, and a 503 (database
  unreachable) is answered to every request of the batch that could not commit. If the broker
  is down the requests still succeed and the sweeper publishes later (every order has a stage
  deadline). The body
  is read raw, because a request signature covers its exact bytes, so its
  schema (:class:`~producers.schema.OrderMessage`) is declared to OpenAPI by hand
  (:func:`order_message_schemas`).
* ``GET /v1/orders/{order_id}``: the order with lines, timeline, payment and shipment.
* ``POST /v1/orders/{order_id}/cancel`` -> 202 (409 once it may no longer be cancelled).
* ``POST /v1/orders/{order_id}/refunds`` -> 202 (idempotent by ``refund_no``).
* ``POST /v1/orders/{order_id}/shipments``: the warehouse registers the waybill -> 201.
* ``POST /v1/orders/{order_id}/receipt``: the buyer confirms receipt -> 200 with the status.

An order of another source than the key's is answered exactly like a missing one (404). Service
errors are not translated here: the app's handlers map them to the error shape
(:mod:`api.errors`).
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from api.auth import require_api_key
from api.errors import error_response, error_responses
from api.group_commit import GroupCommit
from domain.errors import Overloaded
from models import Order
from observability import metrics
from producers.intake import accept_many
from producers.schema import OrderMessage, field_errors, parse_message
from services import backpressure, payments, receipt, shipping
from services.followup import Followup
from services.intake import IntakeResult
from services.order_state import lock_order
from services.parcel_views import parcels_view, shipment_view
from services.payments import payment_view
from services.queries import ensure_order_source, order_view
from services.unit_of_work import unit_of_work
from settings import get_settings
from workers import broker_blocked

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/orders", responses=error_responses(401, 404, 409))
Source = Annotated[str, Depends(require_api_key)]


def order_message_schemas() -> dict[str, Any]:
    """:class:`OrderMessage` and the models it uses, as OpenAPI ``components.schemas``."""
    schema = OrderMessage.model_json_schema(ref_template="#/components/schemas/{model}")
    return {**schema.pop("$defs", {}), OrderMessage.__name__: schema}


_ORDER_BODY = {
    "requestBody": {
        "required": True,
        "description": "The order message. Read as raw bytes: a request signature covers them.",
        "content": {
            "application/json": {
                "schema": {"$ref": f"#/components/schemas/{OrderMessage.__name__}"}
            }
        },
    }
}


def _publish(followups: list[Followup]) -> None:
    if followups:
        from workers.publish import enqueue_followups  # the Celery app only once we publish

        enqueue_followups(followups)


# --- intake ------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def intake_gate() -> backpressure.Gate:
    """This process's back-pressure gate (``INTAKE_MAX_WAIT_S``, ``INTAKE_MAX_BACKLOG``)."""
    s = get_settings()
    limits = backpressure.Limits(s.intake_max_wait_s, s.intake_max_backlog, s.intake_retry_after_s)
    return backpressure.Gate(limits, now=lambda: datetime.now(UTC))


@router.post(
    "", status_code=202, openapi_extra=_ORDER_BODY, responses=error_responses(400, 403, 429, 503)
)
async def create_order(request: Request, source: Source) -> Any:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        # ValueError: JSONDecodeError, UnicodeDecodeError, a number of over 4300 digits.
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        return error_response(
            400,
            "invalid_json",
            "body is not valid JSON",
            [{"field": "body", "reason": reason}],
        )
    try:
        msg = parse_message(data)
    except PydanticValidationError as exc:
        return error_response(422, "validation_failed", "order is invalid", field_errors(exc))
    if source != "*" and msg.source != source:
        return error_response(
            403,
            "forbidden",
            "this API key may not submit orders for that source",
            [{"field": "source", "reason": f"key is bound to source {source!r}"}],
        )
    if (wait_s := broker_blocked.retry_in(get_settings().intake_retry_after_s)) is not None:
        return _broker_blocked(wait_s)
    await _check_gate()
    result = await intake_batcher().submit(msg)
    body = {"id": result.order_id, "status": result.status, "created": result.created}
    return JSONResponse(body, status_code=202 if result.created else 200)


def _broker_blocked(wait_s: float) -> JSONResponse:
    """503 while RabbitMQ blocks this process's publishes (an alarm, workers/broker_blocked.py):
    nothing is stored, the client retries after ``Retry-After``."""
    response = error_response(503, "unavailable", "the task broker is refusing messages; retry")
    response.headers["Retry-After"] = str(max(1, math.ceil(wait_s)))
    return response


async def _check_gate() -> None:
    """429 with Retry-After while the accepted work is too far behind. The gate answers from
    memory between readings; only a reading (a query) goes to the thread pool."""
    gate = intake_gate()
    try:
        if gate.due():
            await run_in_threadpool(gate.check)
        else:
            gate.check()
    except Overloaded:
        metrics.intake_refused("http")
        raise


@lru_cache(maxsize=1)
def intake_batcher() -> GroupCommit[OrderMessage, IntakeResult]:
    """This process's intake group commit (at most ``INTAKE_BATCH_MAX`` orders per flush)."""
    return GroupCommit(
        _store_and_publish, max_batch=get_settings().intake_batch_max, max_flushes=_FLUSHES
    )


#: Group commits in flight per API process: enough that the latency of one (its round trips,
#: its publish) does not hold up every request behind it, few enough to fit the pool.
_FLUSHES = 4


def _store_and_publish(msgs: list[OrderMessage]) -> list[IntakeResult | Exception]:
    """One flush of the group commit, in the thread pool: store the orders in one transaction
    (committed), then publish one ``orders.reserve_batch`` for the new ones (the reservation
    stage takes them together). A publish failure is logged by ``enqueue_reservations``, not
    raised: the orders are stored and the sweeper re-drives them at their stage deadline."""
    from workers.publish import enqueue_reservations  # the Celery app only once we publish

    results = accept_many(msgs, channel="http")
    metrics.intake_batch(len(msgs))
    created = [r.order_id for r in results if isinstance(r, IntakeResult) and r.created]
    if created:
        enqueue_reservations(created)
    return results


@router.get("/{order_id}")
def get_order(order_id: str, source: Source) -> Any:
    with unit_of_work() as session:
        ensure_order_source(session, order_id, source)
        view = order_view(session, order_id)
        view["payment"] = payment_view(session, order_id)
        # "shipment" (the first parcel) stays for clients written before parcels; "parcels"
        # lists every parcel, one per warehouse, cancelled ones with why.
        view["shipment"] = shipment_view(session, order_id)
        view["parcels"] = parcels_view(session, order_id)
        return view


# --- cancel and refunds ------------------------------------------------------------------------


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


def _cancel(order_id: str, reason: str, source: str) -> tuple[list[Followup], str]:
    """The cancel's tasks and the order's status after it: CANCELLED, or where its booked
    parcels stand when only what had not shipped was cancelled."""
    with unit_of_work() as session:
        ensure_order_source(session, order_id, source)
        followups = payments.cancel_order(
            session, order_id, now=datetime.now(UTC), actor=f"api:{source}", reason=reason
        )
        return followups, str(lock_order(session, order_id).status)  # locked already


@router.post("/{order_id}/cancel", status_code=202)
async def cancel(order_id: str, body: CancelRequest, source: Source) -> Any:
    followups, status = await run_in_threadpool(_cancel, order_id, body.reason, source)
    await run_in_threadpool(_publish, followups)
    return {"id": order_id, "status": status}


def _refund(order_id: str, body: RefundBody, refund_no: str, source: str) -> list[Followup]:
    with unit_of_work() as session:
        ensure_order_source(session, order_id, source)
        followup = payments.refund_for_order(
            session, order_id, amount=body.amount, refund_no=refund_no, reason=body.reason,
            actor=f"api:{source}", now=datetime.now(UTC),
        )  # fmt: skip
    return [followup] if followup else []


@router.post("/{order_id}/refunds", status_code=202)
async def refund(order_id: str, body: RefundBody, source: Source) -> Any:
    refund_no = body.refund_no or f"r-{uuid.uuid4().hex[:24]}"
    followups = await run_in_threadpool(_refund, order_id, body, refund_no, source)
    await run_in_threadpool(_publish, followups)
    return {"order_id": order_id, "refund_no": refund_no, "status": "REQUESTED"}


# --- receipt -----------------------------------------------------------------------------------


def _confirm_receipt(order_id: str, source: str) -> str:
    with unit_of_work() as session:
        ensure_order_source(session, order_id, source)
        return receipt.confirm_receipt(session, order_id, actor=f"api:{source}")


@router.post("/{order_id}/receipt", status_code=200)
async def confirm_receipt(order_id: str, source: Source) -> Any:
    """The buyer confirms receipt: DELIVERED -> RECEIPT_CONFIRMED, and the after-sale window
    starts. Confirming again answers the current status; before delivery it is a 409 naming
    ``status``."""
    status = await run_in_threadpool(_confirm_receipt, order_id, source)
    return {"id": order_id, "status": status}


# --- shipments ---------------------------------------------------------------------------------


class WaybillBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    carrier: str = Field(pattern=r"^[a-z0-9]{2,32}$", description="Kuaidi100 code, e.g. yuantong")
    waybill: str = Field(pattern=r"^[A-Za-z0-9-]{6,32}$")
    warehouse: str | None = Field(
        None, min_length=1, max_length=64,
        description="The warehouse whose parcel this is; needed when several are unshipped",
    )  # fmt: skip


def _register(order_id: str, body: WaybillBody, source: str) -> tuple[list[Followup], str]:
    with unit_of_work() as session:
        ensure_order_source(session, order_id, source)
        followups = shipping.register_waybill(
            session, order_id, body.carrier, body.waybill, now=datetime.now(UTC),
            actor=f"api:{source}", first_poll_s=get_settings().tracking_first_poll_s,
            warehouse=body.warehouse,
        )  # fmt: skip
        return followups, session.get_one(Order, order_id).status


@router.post("/{order_id}/shipments", status_code=201)
async def register_shipment(order_id: str, body: WaybillBody, source: Source) -> Any:
    """201 with the order's status after it: SHIPPED, or PARTIALLY_SHIPPED while other
    parcels wait for their waybill."""
    followups, status = await run_in_threadpool(_register, order_id, body, source)
    await run_in_threadpool(_publish, followups)
    return {"order_id": order_id, "carrier": body.carrier, "waybill": body.waybill,
            "warehouse": body.warehouse, "status": status}  # fmt: skip
