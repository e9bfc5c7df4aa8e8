"""The contract of :class:`api.disconnects.QuietDisconnects`, with scripted ASGI messages (the
real server and hostile sockets: tests/security/test_fuzz_api_raw.py)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse

from api.disconnects import QuietDisconnects

SCOPE = {"type": "http", "method": "POST", "path": "/v1/orders\r\nforged",
         "client": ("10.0.0.9", 4), "headers": [(b"content-length", b"100")]}  # fmt: skip


def run(app, messages: list[dict]) -> list[dict]:
    """Call ``QuietDisconnects(app)`` with ``messages`` as the server's; returns what it sent."""
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(QuietDisconnects(app)(dict(SCOPE), receive, send))
    return sent


async def reads_body(scope, receive, send) -> None:
    await Request(scope, receive).body()
    await PlainTextResponse("ok")(scope, receive, send)


async def answers_first(scope, receive, send) -> None:
    await PlainTextResponse("no", status_code=401)(scope, receive, send)
    await receive()  # the server reports the request over: not a client cut short


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "api.disconnects"]


def test_a_body_cut_short_is_one_escaped_line_and_no_exception(caplog):
    caplog.set_level(logging.WARNING)
    cut = [{"type": "http.request", "body": b"x" * 10, "more_body": True},
           {"type": "http.disconnect"}]  # fmt: skip
    assert run(reads_body, cut) == []
    [line] = lines(caplog)
    assert line == ("client 10.0.0.9:4 disconnected mid-request: POST '/v1/orders\\r\\nforged', "
                    "10 body bytes received of '100'")  # fmt: skip


def test_an_answer_before_the_body_is_not_a_disconnect(caplog):
    body = [{"type": "http.request", "body": b"x", "more_body": True}]
    sent = run(answers_first, body)
    assert sent[0]["status"] == 401 and lines(caplog) == []


def test_a_whole_request_is_not_logged(caplog):
    sent = run(reads_body, [{"type": "http.request", "body": b"{}", "more_body": False}])
    assert sent[0]["status"] == 200 and lines(caplog) == []


def test_other_errors_still_reach_the_server():
    async def broken(scope, receive, send) -> None:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run(broken, [])


def test_a_client_disconnect_raised_anywhere_is_swallowed_and_logged(caplog):
    async def raises(scope, receive, send) -> None:
        raise ClientDisconnect

    assert run(raises, []) == [] and len(lines(caplog)) == 1
