"""Flower behind basic auth on every page and API: ``python -m workers.flower [flower options]``.

Why a launcher: Flower 2.x checks credentials only in handlers decorated with
``@tornado.web.authenticated``, and ``/metrics`` and ``/healthcheck`` are not, so plain
``celery flower --basic-auth=…`` leaves them open. This launcher makes ``celery flower`` build
:class:`GuardedFlower`, which checks the credentials before routing: every path (pages, API,
metrics, health check, static files, login, the 404 page) answers 401 without them.

Contract:

- The credentials come from ``FLOWER_BASIC_AUTH`` (``user:password``, comma-separated for
  several), read through :mod:`settings` and handed to Flower in its environment, never on the
  command line (``ps`` shows every process's argv to every user). The launcher refuses to start
  without them, and refuses ``--basic-auth`` / ``--auth`` on the command line.
- Every other argument is passed to ``celery -A workers.app flower`` unchanged.
- Flower's own ``flower_*`` series stay in its memory, on its ``/metrics`` only, even when
  ``PROMETHEUS_MULTIPROC_DIR`` is set (it is, for every app service of docker-compose): the
  API's ``/metrics`` merges that directory and must carry orderflow's series alone.
- ``python -m workers.flower healthcheck [--port N] [--host H]`` exits 0 when Flower answers
  ``GET /healthcheck`` with 200 given the credentials, 1 otherwise (the container health check).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import sys
from collections.abc import Sequence
from typing import Any

import tornado.web
from flower.app import Flower
from tornado.httputil import HTTPServerRequest

from settings import get_settings

#: Flower reads its options from ``FLOWER_<OPTION>`` variables as well as from argv.
AUTH_ENV = "FLOWER_BASIC_AUTH"
DEFAULT_PORT = 5555
_FORBIDDEN_ARGS = ("--basic-auth", "--basic_auth", "--auth")


def credentials_match(header: str | None, allowed: Sequence[str]) -> bool:
    """True when ``header`` (an ``Authorization`` value) is ``Basic <base64 user:password>`` of
    one of ``allowed``. Compared in constant time; no ``allowed`` entries means nobody matches."""
    if not header or not allowed:
        return False
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    matched = False
    for entry in allowed:  # no early exit: the time taken does not tell which entry matched
        matched |= hmac.compare_digest(entry.encode(), given)
    return matched


class _Unauthorized(tornado.web.RequestHandler):
    """What every request without valid credentials reaches, whatever its path or method."""

    def check_xsrf_cookie(self) -> None:
        """Nothing to protect here; answer 401 (not the XSRF 403) to a POST without credentials."""

    def prepare(self) -> None:
        self.set_status(401)
        self.set_header("WWW-Authenticate", 'Basic realm="flower"')
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish("Access denied")  # tornado skips the method once prepare has finished


class GuardedFlower(Flower):  # type: ignore[misc]  # flower is untyped
    """Flower's tornado application with the credential check in front of its router, so it
    covers every route: Flower's URL table, tornado's own static-file route and the 404
    fallback alike, independent of which handlers Flower marks ``@authenticated``."""

    def find_handler(
        self, request: HTTPServerRequest, **kwargs: Any
    ) -> tornado.web._HandlerDelegate:
        allowed = list(getattr(self.options, "basic_auth", None) or [])
        if credentials_match(request.headers.get("Authorization"), allowed):
            return super().find_handler(request, **kwargs)  # type: ignore[no-any-return]
        return self.get_handler_delegate(request, _Unauthorized)  # type: ignore[no-any-return]


def flower_argv(port: int, address: str = "127.0.0.1") -> list[str]:
    """The command that runs Flower through this launcher (credentials go in the environment:
    ``{AUTH_ENV: "user:password"}``)."""
    return [
        sys.executable, "-m", "workers.flower", f"--port={port}", f"--address={address}",
        "--persistent=False",
    ]  # fmt: skip


def run(argv: Sequence[str]) -> int:
    """Start Flower with every handler protected; returns its exit code."""
    if any(arg.split("=", 1)[0] in _FORBIDDEN_ARGS for arg in argv):
        print(f"workers.flower: set {AUTH_ENV}, not --basic-auth/--auth", file=sys.stderr)
        return 2
    secret = get_settings().flower_basic_auth
    if secret is None or not secret.get_secret_value().strip():
        print(f"workers.flower: {AUTH_ENV} (user:password) is required", file=sys.stderr)
        return 2
    # Flower reads FLOWER_* itself; the value may have come from .env rather than the environment.
    os.environ[AUTH_ENV] = secret.get_secret_value()
    # Before Flower creates its metrics: its flower_* series stay on its own /metrics, out of
    # the directory the API's /metrics merges (they would be served there, and go stale).
    from observability.metrics import keep_in_memory

    keep_in_memory()

    import flower.command
    from celery.bin.celery import main as celery_main

    flower.command.Flower = GuardedFlower  # the class `celery flower` instantiates
    sys.argv = ["celery", "-A", "workers.app", "flower", *argv]
    return int(celery_main() or 0)


def healthcheck(argv: Sequence[str]) -> int:
    """``healthcheck [--port N] [--host H]``: 0 when ``/healthcheck`` answers 200 with the
    credentials of ``FLOWER_BASIC_AUTH``."""
    import argparse

    import requests

    parser = argparse.ArgumentParser(prog="python -m workers.flower healthcheck")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(list(argv))
    secret = get_settings().flower_basic_auth
    if secret is None:
        print(f"{AUTH_ENV} is not set", file=sys.stderr)
        return 1
    user, _, password = secret.get_secret_value().split(",")[0].partition(":")
    try:
        answer = requests.get(
            f"http://{args.host}:{args.port}/healthcheck", auth=(user, password), timeout=5
        )
    except requests.RequestException as exc:
        print(f"flower unreachable: {exc}", file=sys.stderr)
        return 1
    print(f"flower /healthcheck: {answer.status_code}")
    return 0 if answer.status_code == 200 else 1


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["healthcheck"]:
        return healthcheck(argv[1:])
    return run(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
