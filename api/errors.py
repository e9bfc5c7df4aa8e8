"""One JSON error shape for every API failure: ``{"error": code, "message": ..., "details": [...]}``
where each detail names a ``field`` and a ``reason`` (DESIGN §3.11). A 404 names the id field
that matched nothing (``sku``, ``order_id``, ...): see :func:`not_found`."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from domain.errors import ConflictError, NotFound, ValidationError
from services.unit_of_work import unit_of_work

T = TypeVar("T")


def error_response(
    status: int, code: str, message: str, details: list[dict[str, str]] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"error": code, "message": message}
    if details:
        body["details"] = details
    return JSONResponse(body, status_code=status)


def not_found(field: str, message: str) -> JSONResponse:
    """404 in the one error shape; ``field`` is the request field (path or body) whose value
    matched nothing, e.g. ``not_found("order_id", f"order {order_id} not found")``."""
    return error_response(404, "not_found", message, [{"field": field, "reason": message}])


#: ``NotFound("<noun> <id>")`` as the services raise it -> the id field the noun stands for.
#: Longest prefixes first. A ``NotFound("field: reason")`` names its field itself.
_NOT_FOUND_NOUNS = (
    ("no callback deliveries for order ", "order_id"),
    ("no callback deliveries for event ", "event_id"),
    ("payment of order ", "order_id"),
    ("dead letter ", "dead_letter_id"),
    ("product ", "sku"),
    ("order ", "order_id"),
    ("shipment ", "shipment_id"),
    ("delivery ", "delivery_id"),
)
_FIELD_NAME = re.compile(r"[a-z][a-z0-9_]*")


def not_found_response(exc: NotFound) -> JSONResponse:
    """The 404 for a service's :class:`NotFound`, naming the field (``id`` if it cannot tell)."""
    text = str(exc)
    field, sep, reason = text.partition(": ")
    if sep and _FIELD_NAME.fullmatch(field):
        return not_found(field, reason)
    noun_field = next((f for noun, f in _NOT_FOUND_NOUNS if text.startswith(noun)), "id")
    return not_found(noun_field, f"{text} not found")


def run_in_unit_of_work(fn: Callable[[Session], T]) -> T | JSONResponse:
    """Run ``fn`` in one unit of work (committed on success, rolled back on error) and map the
    service errors to the JSON error shape: 422, 404 and 409 each name the field."""
    try:
        with unit_of_work() as session:
            return fn(session)
    except ValidationError as exc:
        details = [{"field": exc.field, "reason": exc.reason}]
        return error_response(422, "validation_failed", str(exc), details)
    except NotFound as exc:
        return not_found_response(exc)
    except ConflictError as exc:
        field, _, reason = str(exc).partition(": ")
        return error_response(409, "conflict", str(exc), [{"field": field, "reason": reason}])
