"""One JSON error shape for every API failure: ``{"error": code, "message": ..., "details": [...]}``
where each detail names a ``field`` and a ``reason``."""

from __future__ import annotations

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


def run_in_unit_of_work(fn: Callable[[Session], T]) -> T | JSONResponse:
    """Run ``fn`` in one unit of work (committed on success, rolled back on error) and map the
    service errors to the JSON error shape: 422 names the field, 404, 409."""
    try:
        with unit_of_work() as session:
            return fn(session)
    except ValidationError as exc:
        details = [{"field": exc.field, "reason": exc.reason}]
        return error_response(422, "validation_failed", str(exc), details)
    except NotFound as exc:
        return error_response(404, "not_found", f"{exc} not found")
    except ConflictError as exc:
        field, _, reason = str(exc).partition(": ")
        return error_response(409, "conflict", str(exc), [{"field": field, "reason": reason}])
