"""Who may read ``GET /metrics``: the settings ``METRICS_TOKEN`` and ``METRICS_PORT``.

The page names queues, providers and volumes, and each scrape costs a database transaction:
it is for the monitoring system, not for the public. Two independent guards:

* ``METRICS_TOKEN`` set: ``/metrics`` answers 401 (with ``WWW-Authenticate: Bearer``) unless
  the request carries ``Authorization: Bearer <token>``; the token is compared in constant time.
* ``METRICS_PORT`` set: the public app has no ``/metrics`` (404, like any unknown path) and
  every API process serves it on a listener of its own, ``METRICS_BIND:METRICS_PORT`` (default
  ``127.0.0.1``; docker-compose.yml binds ``0.0.0.0`` and publishes nothing, for Prometheus on
  its internal network). The port is bound with ``SO_REUSEPORT``, so each worker of
  ``uvicorn --workers N`` binds it too and the kernel spreads scrapes over them; with the
  multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``, as in docker-compose) every worker
  answers the same merged page. A port another program holds fails the start-up.

With both set the listener requires the token too; with neither, ``/metrics`` is open on the
API's port, as before. The listener runs in a thread (a scrape blocks on PostgreSQL and Redis),
answers 404 to every other path and logs nothing per request; a scraper that hangs up
mid-answer is one log line, never a traceback.
"""

from __future__ import annotations

import hmac
import logging
import socket
import socketserver
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated, Any

from fastapi import FastAPI, Header
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import SecretStr
from starlette.responses import Response

from api.errors import error_response
from observability.metrics import metrics_response, render
from settings import Settings, get_settings

log = logging.getLogger(__name__)


def bearer_matches(authorization: str | None, token: SecretStr | None) -> bool:
    """True when no token is required, or ``authorization`` is ``Bearer <token>`` (compared in
    constant time, so the time taken tells nothing about how much of a guess was right)."""
    if token is None:
        return True
    scheme, _, given = (authorization or "").partition(" ")
    expected = token.get_secret_value().encode()
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected)


def _unauthorized() -> Response:
    response = error_response(401, "unauthorized", "a bearer token is required for /metrics")
    response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


def metrics_route(token: SecretStr | None) -> Callable[..., Response]:
    """The public app's ``GET /metrics``, behind ``token`` when there is one. Sync on purpose:
    a scrape blocks on PostgreSQL and Redis, so FastAPI runs it in the thread pool."""

    def metrics(authorization: Annotated[str | None, Header()] = None) -> Response:
        if not bearer_matches(authorization, token):
            return _unauthorized()
        return metrics_response()

    return metrics


def install_metrics(app: FastAPI, settings: Settings) -> None:
    """Mount ``/metrics`` on ``app``, unless ``METRICS_PORT`` moves it to its own listener
    (then :func:`metrics_lifespan` starts that listener with the app)."""
    if settings.metrics_port is None:
        app.add_api_route("/metrics", metrics_route(settings.metrics_token),
                          include_in_schema=False)  # fmt: skip


@asynccontextmanager
async def metrics_lifespan(_app: FastAPI) -> AsyncIterator[None]:
    """The app's lifespan: the ``METRICS_PORT`` listener runs while the app does."""
    settings = get_settings()
    if settings.metrics_port is None:
        yield
        return
    server = start_listener(settings.metrics_bind, settings.metrics_port, settings.metrics_token)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


class _ReusePortServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck scrape never holds up the process's exit

    def server_bind(self) -> None:
        # Every worker of `uvicorn --workers N` binds the same port (see the module docstring).
        if hasattr(socket, "SO_REUSEPORT"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # TCPServer's bind, not HTTPServer's: that one looks the bind address up in DNS
        # (getfqdn), which can stall a container's start-up; the name is never used here.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A scraper that hangs up mid-answer is one line, not socketserver's traceback on
        # stderr (the API's own rule: api.disconnects). Anything else is a bug: traceback.
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.warning("metrics client %s disconnected mid-answer", client_address[0])
            return
        super().handle_error(request, client_address)


def start_listener(host: str, port: int, token: SecretStr | None) -> ThreadingHTTPServer:
    """Serve ``GET /metrics`` on ``host:port`` in a background thread; returns the server
    (``shutdown()`` then ``server_close()`` stop it). Raises :class:`OSError` if the port is
    held by a program that did not ask to share it."""
    server = _ReusePortServer((host, port), _handler(token))
    threading.Thread(target=server.serve_forever, name="metrics-listener", daemon=True).start()
    log.info("serving /metrics on %s:%d", host, port)
    return server


def _handler(token: SecretStr | None) -> type[BaseHTTPRequestHandler]:
    class MetricsHandler(BaseHTTPRequestHandler):
        timeout = 30  # seconds per read: a slow client holds a thread no longer than that

        def do_GET(self) -> None:  # the name http.server dispatches GET to
            if self.path.partition("?")[0] != "/metrics":
                self._answer(404, b"not found\n", "text/plain; charset=utf-8")
            elif not bearer_matches(self.headers.get("Authorization"), token):
                self._answer(401, b"a bearer token is required\n", "text/plain; charset=utf-8")
            else:
                self._answer(200, render(), CONTENT_TYPE_LATEST)

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            if status == 401:
                self.send_header("WWW-Authenticate", 'Bearer realm="metrics"')
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a line per scrape (or per probe) would only fill the API's log

    return MetricsHandler
