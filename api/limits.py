"""ASGI middleware at the edge: refuse request bodies above a size limit before they are
buffered, and text containing NUL characters before it reaches the database."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Answer 413 when Content-Length, or the bytes actually received, exceed ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413,
            "body_too_large",
            f"request body exceeds {self.max_bytes} bytes",
            [{"field": "body", "reason": f"larger than {self.max_bytes} bytes"}],
        )
        response.headers["connection"] = "close"  # the rest of the body is not read
        await response(scope, receive, send)


#: ``\u0000`` as it appears in JSON text: the only way a NUL can be in valid JSON.
_JSON_NUL = b"\\u0000"


def _nul_field(value: Any, path: str = "") -> str | None:
    """The dotted path of the first string (key or value) in ``value`` that contains NUL."""
    if isinstance(value, str):
        return (path or "body") if "\x00" in value else None
    items: Any = ()
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    for key, item in items:
        here = f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and "\x00" in key:
            return here
        found = _nul_field(item, here)
        if found is not None:
            return found
    return None


class RejectNulCharacters:
    """Answer 422 naming the field when a JSON body, the path or the query holds a NUL.

    PostgreSQL cannot store NUL in ``text`` or ``jsonb``: such a value would otherwise fail
    at the INSERT as a 500. Bodies are only parsed when their bytes contain ``\\u0000`` (a raw
    NUL byte is not valid JSON and is refused by the route as such). Mount it inside
    :class:`BodySizeLimit`, so the body it reads is already size-limited.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        field = _url_nul_field(scope)
        if field is not None:
            await _refuse(scope, receive, send, field)
            return
        content_type = dict(scope.get("headers") or []).get(b"content-type", b"")
        if b"json" not in content_type.lower():
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
        if _JSON_NUL in body:
            try:
                field = _nul_field(json.loads(body))
            except (ValueError, RecursionError):
                field = None  # not JSON: the route answers that
            if field is not None:
                await _refuse(scope, receive, send, field)
                return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


def _url_nul_field(scope: Scope) -> str | None:
    if "\x00" in scope.get("path", ""):
        return "path"
    query = scope.get("query_string", b"").decode("latin-1")
    for name, value in parse_qsl(query, keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            return name.replace("\x00", "") or "query"
    return None


async def _refuse(scope: Scope, receive: Receive, send: Send, field: str) -> None:
    reason = "must not contain NUL (\\u0000) characters"
    response = error_response(
        422, "validation_failed", "request is invalid", [{"field": field, "reason": reason}]
    )
    await response(scope, receive, send)
