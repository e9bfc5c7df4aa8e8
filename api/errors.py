"""One JSON error shape for every API failure: ``{"error": code, "message": ..., "details": [...]}``
where each detail names a ``field`` and a ``reason``."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse


def error_response(
    status: int, code: str, message: str, details: list[dict[str, str]] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"error": code, "message": message}
    if details:
        body["details"] = details
    return JSONResponse(body, status_code=status)
