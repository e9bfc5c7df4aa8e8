"""A client that goes away mid-request costs one log line, never a traceback.

Reading the body of a request whose client has disconnected raises
:class:`starlette.requests.ClientDisconnect` wherever the body is read (a route's
``await request.body()``, a console form). Left alone it reaches uvicorn, which logs
"Exception in ASGI application" with a full traceback: anyone able to open a socket could fill
the API's log with them. FastAPI's own body parsing instead turns it into a 400 nobody receives,
so the same event would leave no trace at all on those routes.

:class:`QuietDisconnects`, the outermost middleware, makes both cases the same. Contract:

1. A request whose client disconnected before sending its whole body (and before it was
   answered: after an answer the server reports any request as disconnected) is logged as one
   ``WARNING`` line: client address, method, path (escaped and cut short, so a hostile path
   cannot forge a second line), the bytes received and the Content-Length declared. The line
   is written whether the app raised :class:`ClientDisconnect`, answered something no one
   will read, or returned.
2. :class:`ClientDisconnect` is swallowed here (the client is gone: there is no one to answer).
   Any other exception goes on to uvicorn as before: it is a bug, and its traceback is wanted.
3. Nothing else changes: messages and responses pass through untouched.
"""

from __future__ import annotations

import logging

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

#: Longest path quoted in the log line; the rest is elided (a path may be kilobytes long).
_PATH_CHARS = 200


class QuietDisconnects:
    """ASGI middleware: a client disconnect mid-body is one log line (the module's contract)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = 0
        body_complete = answered = cut_short = False

        async def watched_receive() -> Message:
            nonlocal received, body_complete, cut_short
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_complete = not message.get("more_body", False)
            elif message["type"] == "http.disconnect":
                # After an answer the server reports every request as disconnected (a route
                # that answered without reading the body, e.g. a 401, is not cut short).
                cut_short = cut_short or not (body_complete or answered)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal answered
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, watched_receive, watched_send)
        except ClientDisconnect:
            cut_short = True  # raised on a disconnect this wrapper saw, or by a response
        if cut_short:
            log.warning("%s", disconnect_line(scope, received))


def disconnect_line(scope: Scope, received: int) -> str:
    """The one line logged for a request whose client disconnected mid-body."""
    client = scope.get("client")
    peer = f"{client[0]}:{client[1]}" if client else "unknown"
    path = str(scope.get("path", ""))
    if len(path) > _PATH_CHARS:
        path = path[:_PATH_CHARS] + "..."
    declared = dict(scope.get("headers") or []).get(b"content-length", b"?")
    # repr() escapes CR/LF and other control characters a percent-encoded path may carry.
    return (
        f"client {peer} disconnected mid-request: {scope.get('method', '?')} {path!r}, "
        f"{received} body bytes received of {declared[:20].decode('latin-1')!r}"
    )
