"""One JSON error shape for every API failure, mapped in one place (DESIGN §3.11)::

    {"error": code, "message": ..., "details": [{"field": ..., "reason": ...}, ...]}

``details`` is left out when no field is to blame. :func:`install_error_handlers` registers the
handlers on the app, so routes raise and never translate:

* ``ValidationError``, FastAPI's ``RequestValidationError`` -> 422 ``validation_failed``
* ``NotFound`` -> 404 ``not_found``
* ``ConflictError``, ``InvalidTransition``, ``ReservationRefused`` -> 409 ``conflict``
* ``Overloaded`` (intake back-pressure) -> 429 ``overloaded`` with ``Retry-After``
* ``ProviderUnavailable`` -> 503 ``unavailable``; any other ``ProviderError`` -> 502
  ``provider_error``
* any other ``OrderflowError`` (a bug: logged) -> 500 ``internal_error``
* ``HTTPException`` (and :class:`api.auth.AuthError`, which carries ``details``) -> its status,
  ``unauthorized`` / ``forbidden`` / ``not_found`` / ``unavailable``
* ``DBAPIError`` with the database unreachable -> 503 ``unavailable`` with ``Retry-After``

The field in ``details`` is the one the raiser named (``NotFound(..., field="sku")``); a 404
that names none says ``id``. The message is the error's own. :class:`ErrorBody` is the same
shape as a pydantic model, declared for every 4xx/5xx in the OpenAPI schema through
:func:`error_responses`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, TypeVar

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from domain.errors import (
    ConflictError,
    InvalidTransition,
    NotFound,
    OrderflowError,
    Overloaded,
    ProviderError,
    ProviderUnavailable,
    ReservationRefused,
    ValidationError,
)
from services.unit_of_work import unit_of_work

log = logging.getLogger(__name__)
T = TypeVar("T")


class ErrorDetail(BaseModel):
    field: str = Field(description="The request field (body path, header, path or query name)")
    reason: str = Field(description="What is wrong with it")


class ErrorBody(BaseModel):
    """Every error the API answers, whatever the status."""

    error: str = Field(description="Machine-readable code: validation_failed, not_found, ...")
    message: str = Field(description="One human-readable sentence")
    details: list[ErrorDetail] = Field(
        default_factory=list, description="The fields to blame; absent when none is"
    )


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` declaring :class:`ErrorBody` for each status (set on a router)."""
    return {
        status: {"model": ErrorBody, "description": HTTPStatus(status).phrase}
        for status in statuses
    }


#: What any route may answer: body too large (api.limits), an invalid request (parameters,
#: body, a NUL character anywhere), the database or Redis unreachable.
COMMON_ERRORS = error_responses(413, 422, 503)


def error_response(
    status: int, code: str, message: str, details: list[dict[str, str]] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"error": code, "message": message}
    if details:
        body["details"] = details
    return JSONResponse(body, status_code=status)


def not_found(field: str, message: str) -> JSONResponse:
    """404 in the one error shape; ``field`` is the request field (path or body) whose value
    matched nothing, e.g. ``not_found("provider", f"no webhook for {provider!r}")``."""
    return error_response(404, "not_found", message, [{"field": field, "reason": message}])


#: The domain error tree -> (status, code), most specific first.
_STATUS: tuple[tuple[type[OrderflowError], int, str], ...] = (
    (ValidationError, 422, "validation_failed"),
    (NotFound, 404, "not_found"),
    (ConflictError, 409, "conflict"),
    (InvalidTransition, 409, "conflict"),
    (ReservationRefused, 409, "conflict"),
    (Overloaded, 429, "overloaded"),
    (ProviderUnavailable, 503, "unavailable"),
    (ProviderError, 502, "provider_error"),
)


def domain_error_response(exc: OrderflowError) -> JSONResponse:
    """The response for an error of the domain tree (see the table in the module docstring)."""
    status, code = next(((s, c) for cls, s, c in _STATUS if isinstance(exc, cls)), (500, ""))
    if status == 500:
        log.error("unmapped %s reached the API", type(exc).__name__, exc_info=exc)
        return error_response(500, "internal_error", "internal error")
    details = None
    if isinstance(exc, ValidationError | NotFound | ConflictError):
        field = exc.field or ("id" if isinstance(exc, NotFound) else None)
        details = [{"field": field, "reason": exc.reason}] if field else None
    elif isinstance(exc, InvalidTransition):
        details = [{"field": "status", "reason": str(exc)}]
    response = error_response(status, code, str(exc), details)
    if isinstance(exc, Overloaded):
        response.headers["Retry-After"] = str(exc.retry_after_s)
    return response


async def _domain_error(_req: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OrderflowError)
    return domain_error_response(exc)


async def _request_invalid(_req: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # "body.carrier" -> "carrier": the same field names as the order message errors.
    details = [
        {"field": ".".join(str(p) for p in e["loc"][1 if e["loc"][:1] == ("body",) else 0 :])
         or "body", "reason": e["msg"]}
        for e in exc.errors()
    ]  # fmt: skip
    return error_response(422, "validation_failed", "request is invalid", details)


async def _http_error(_req: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = {401: "unauthorized", 403: "forbidden", 404: "not_found", 503: "unavailable"}.get(
        exc.status_code, "error"
    )
    # api.auth.AuthError carries details naming the header and the reason.
    details = getattr(exc, "details", None)
    return error_response(exc.status_code, code, str(exc.detail), details)


async def _database_error(_req: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DBAPIError)
    # PostgreSQL unreachable or restarting: nothing was stored (the transaction did not
    # commit), so the client may send the same request again.
    if not (isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated):
        raise exc
    log.warning("database unavailable: %s", type(exc.orig).__name__)
    response = error_response(503, "unavailable", "database unavailable; retry shortly")
    response.headers["Retry-After"] = "1"
    return response


def install_error_handlers(app: FastAPI) -> None:
    """Map every error the routes let through to the one shape (the module docstring's table)."""
    app.add_exception_handler(OrderflowError, _domain_error)
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(DBAPIError, _database_error)


def run_in_unit_of_work(fn: Callable[[Session], T]) -> T:
    """Run ``fn`` in one unit of work: committed on success, rolled back on error. Errors go on
    to the app's handlers (:func:`install_error_handlers`), which answer in the error shape."""
    with unit_of_work() as session:
        return fn(session)
