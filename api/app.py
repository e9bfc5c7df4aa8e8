"""The HTTP surface: intake, order status, health.

``POST /v1/orders`` stores the order (committed) before it answers: 202 for a new order, 200 for
a repeat of the same ``(source, external_id)`` and body, 409 for the same key with a different
body. The ``orders.process`` task is published after the commit; if the broker is down the
request still succeeds and the sweeper publishes it later (the order has a stage deadline).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError as PydanticValidationError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from api.auth import require_api_key
from api.callbacks import router as callbacks_router
from api.catalog import router as catalog_router
from api.console import router as console_router
from api.errors import error_response, not_found
from api.limits import BodySizeLimit, RejectNulCharacters
from api.payments import router as payments_router
from api.shipping import router as shipping_router
from api.users import router as users_router
from domain.errors import ConflictError, NotFound, ValidationError
from observability.metrics import metrics_response
from producers.intake import accept
from producers.schema import OrderMessage, field_errors, parse_message
from services.intake import IntakeResult
from services.payments import payment_view
from services.queries import ensure_order_source, order_view
from services.shipping import shipment_view
from services.task_names import ORDERS_PROCESS
from services.unit_of_work import unit_of_work
from settings import get_settings

log = logging.getLogger(__name__)


def create_app() -> FastAPI:
    app = FastAPI(title="orderflow", version="0.1.0")
    app.add_middleware(RejectNulCharacters)  # inner: reads bodies BodySizeLimit has capped
    app.add_middleware(BodySizeLimit, max_bytes=get_settings().max_body_bytes)

    @app.exception_handler(HTTPException)
    async def _http_error(_req: Request, exc: HTTPException) -> JSONResponse:
        code = {401: "unauthorized", 403: "forbidden", 404: "not_found", 503: "unavailable"}.get(
            exc.status_code, "error"
        )
        # api.auth.AuthError carries details naming the header and the reason.
        details = getattr(exc, "details", None)
        return error_response(exc.status_code, code, str(exc.detail), details)

    @app.exception_handler(DBAPIError)
    async def _database_error(_req: Request, exc: DBAPIError) -> JSONResponse:
        # PostgreSQL unreachable or restarting: nothing was stored (the transaction did not
        # commit), so the client may send the same request again.
        if not (isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated):
            raise exc
        log.warning("database unavailable: %s", type(exc.orig).__name__)
        response = error_response(503, "unavailable", "database unavailable; retry shortly")
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_req: Request, exc: RequestValidationError) -> JSONResponse:
        # "body.carrier" -> "carrier": the same field names as the order message errors.
        details = [
            {"field": ".".join(str(p) for p in e["loc"][1 if e["loc"][:1] == ("body",) else 0 :])
             or "body", "reason": e["msg"]}
            for e in exc.errors()
        ]  # fmt: skip
        return error_response(422, "validation_failed", "request is invalid", details)

    # Static webhook paths (/webhooks/kuaidi100) before the /webhooks/{provider} pattern.
    app.include_router(shipping_router)
    app.include_router(payments_router)
    app.include_router(users_router)
    app.include_router(catalog_router)
    app.include_router(callbacks_router)
    app.include_router(console_router)

    app.add_api_route("/metrics", metrics_response, include_in_schema=False)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/orders", status_code=202)
    async def create_order(request: Request, source: str = Depends(require_api_key)) -> Any:
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
        try:
            result = await run_in_threadpool(_accept_and_publish, msg)
        except ConflictError as exc:
            return error_response(
                409,
                "conflict",
                str(exc),
                [{"field": "external_id", "reason": "already used with a different body"}],
            )
        except ValidationError as exc:
            details = [{"field": exc.field, "reason": exc.reason}]
            return error_response(422, "validation_failed", "order is invalid", details)
        body = {"id": result.order_id, "status": result.status, "created": result.created}
        return JSONResponse(body, status_code=202 if result.created else 200)

    @app.get("/v1/orders/{order_id}")
    def get_order(order_id: str, source: str = Depends(require_api_key)) -> Any:
        try:
            with unit_of_work() as session:
                ensure_order_source(session, order_id, source)
                view = order_view(session, order_id)
                view["payment"] = payment_view(session, order_id)
                view["shipment"] = shipment_view(session, order_id)
                return view
        except NotFound:
            return not_found("order_id", f"order {order_id} not found")

    return app


def _accept_and_publish(msg: OrderMessage) -> IntakeResult:
    """Store the order (committed), then publish ``orders.process`` for a new one: both in one
    trip to the thread pool. A publish failure is logged, not raised: the order is stored and
    the sweeper re-drives it at its stage deadline."""
    from workers.publish import enqueue  # the Celery app is only needed once we publish

    result = accept(msg, channel="http")
    if result.created:
        try:
            enqueue(ORDERS_PROCESS, result.order_id)
        except Exception:  # noqa: BLE001 - any broker failure is handled the same way
            log.warning(
                "could not publish orders.process for %s; the sweeper will", result.order_id
            )
    return result


app = create_app()
