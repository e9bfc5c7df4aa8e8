"""User routes: register, log in, log out, my orders.

* ``POST /v1/users`` -> 201 ``{id, email, display_name, created_at}``; 422 naming ``email`` or
  ``password`` when the policy refuses (see :mod:`services.users`); 409 when the email is taken;
  429 with ``Retry-After`` after ``REGISTER_MAX_PER_ADDRESS`` (20) valid attempts from one
  client address in ``REGISTER_WINDOW_S`` (3600) — that bound is what keeps the 409 from being
  an address-enumeration oracle; 503 if Redis is unreachable (fail closed, like login).
* ``POST /v1/sessions`` -> 201 ``{token, token_type, expires_at}``. A wrong password and an
  unknown email get the same 401 body after the same work; after 10 failed logins in a minute
  for the account or the client address, 429 with ``Retry-After`` (even for the right
  password). If Redis is unreachable logins are refused with 503: without the limiter the
  password could be guessed at full speed.
* ``DELETE /v1/sessions/current`` (``Authorization: Bearer <token>``) -> 204; the token is
  revoked. ``GET /v1/users/me/orders`` -> ``{orders: [...]}``, newest first.

The client address is the socket peer (``request.client``). Behind a reverse proxy, run uvicorn
with ``--proxy-headers --forwarded-allow-ips`` set to the proxy, never trust the header blindly.
Limits and token lifetime come from settings ``LOGIN_MAX_FAILURES`` (10), ``LOGIN_WINDOW_S``
(60), ``REGISTER_MAX_PER_ADDRESS`` (20), ``REGISTER_WINDOW_S`` (3600) and ``SESSION_TTL_S``
(86400).
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api.errors import error_response, error_responses
from services import login_limits, passwords, users
from services.unit_of_work import unit_of_work
from settings import get_settings

router = APIRouter(responses=error_responses(401, 409, 429))
passwords.warm_up()

_BAD_LOGIN = {"error": "invalid_credentials", "message": "email or password is incorrect"}


class RegisterBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(max_length=320)
    password: str = Field(max_length=1024)  # the policy's own limit (128) gives a clearer reason
    display_name: str | None = Field(None, max_length=100)


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(max_length=320)
    password: str = Field(max_length=1024)


def _setting(name: str, default: int) -> int:
    # Optional settings: read with a default so this router works before settings.py has them.
    value = getattr(get_settings(), name, None)
    return default if value is None else int(value)


@lru_cache(maxsize=4)
def _redis(url: str) -> redis.Redis:
    from workers.embedded import redis_client_url

    return redis.Redis.from_url(redis_client_url(url), socket_timeout=2)


def login_limiter() -> login_limits.LoginLimiter:
    """The limiter from settings (a dependency, so tests may swap the limits)."""
    url = get_settings().redis_url
    if not url:
        raise RuntimeError("REDIS_URL is not set")
    return login_limits.LoginLimiter(
        _redis(url),
        max_failures=_setting("login_max_failures", 10),
        window_s=_setting("login_window_s", 60),
    )


def registration_limiter() -> login_limits.RegistrationLimiter:
    """The registration limiter from settings (a dependency, so tests may swap the limits)."""
    url = get_settings().redis_url
    if not url:
        raise RuntimeError("REDIS_URL is not set")
    return login_limits.RegistrationLimiter(
        _redis(url),
        max_attempts=_setting("register_max_per_address", 20),
        window_s=_setting("register_window_s", 3600),
    )


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _throttled(exc: login_limits.RateLimited, field: str) -> JSONResponse:
    response = error_response(
        429, "rate_limited", f"too many {exc.what}; try again later",
        [{"field": field, "reason": f"retry after {exc.retry_after_s}s"}],
    )  # fmt: skip
    response.headers["Retry-After"] = str(exc.retry_after_s)
    return response


def bearer_token(authorization: Annotated[str | None, Header()] = None) -> str | None:
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _unauthorized() -> JSONResponse:
    response = error_response(401, "unauthorized", str(users.Unauthenticated()))
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


@router.post("/v1/users", status_code=201)
def register(
    body: RegisterBody,
    request: Request,
    limiter: Annotated[login_limits.RegistrationLimiter, Depends(registration_limiter)],
) -> Any:
    try:
        with unit_of_work() as session:
            user = users.register(
                session, body.email, body.password, display_name=body.display_name,
                limiter=limiter, client_address=_client_address(request),
            )  # fmt: skip
    except login_limits.RegistrationThrottled as exc:
        return _throttled(exc, "client_address")
    except redis.RedisError:
        return error_response(503, "unavailable", "registration is temporarily unavailable")
    return {
        "id": user.id,
        "email": user.email,
        "display_name": user.display_name,
        "created_at": user.created_at.isoformat(),
    }


@router.post("/v1/sessions", status_code=201)
def login(
    body: LoginBody,
    request: Request,
    limiter: Annotated[login_limits.LoginLimiter, Depends(login_limiter)],
) -> Any:
    try:
        with unit_of_work() as session:
            issued = users.login(
                session, limiter, body.email, body.password,
                client_address=_client_address(request),
                now=datetime.now(UTC), ttl_s=_setting("session_ttl_s", 86400),
            )  # fmt: skip
    except users.InvalidCredentials:
        return JSONResponse(_BAD_LOGIN, status_code=401)
    except login_limits.LoginThrottled as exc:
        return _throttled(exc, "email")
    except redis.RedisError:
        return error_response(503, "unavailable", "login is temporarily unavailable")
    return {"token": issued.token, "token_type": "bearer", "expires_at": issued.expires_at}


@router.delete("/v1/sessions/current", status_code=204, response_class=Response)
def logout(token: Annotated[str | None, Depends(bearer_token)]) -> Response:
    if token is None:
        return _unauthorized()
    try:
        with unit_of_work() as session:
            users.logout(session, token, now=datetime.now(UTC))
    except users.Unauthenticated:
        return _unauthorized()
    return Response(status_code=204)


@router.get("/v1/users/me/orders")
def my_orders(
    token: Annotated[str | None, Depends(bearer_token)],
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Any:
    if token is None:
        return _unauthorized()
    try:
        with unit_of_work() as session:
            user = users.authenticate(session, token, now=datetime.now(UTC))
            return {"orders": users.user_orders(session, user.id, limit=limit)}
    except users.Unauthenticated:
        return _unauthorized()
