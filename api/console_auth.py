"""Who is using the ops console: login, logout, the server-side session and the role checks.

Login (``POST /console/login``): an operator's name and password (accounts made with
``orderflow operators create``; argon2id like users'), or, with the name left empty, the admin
key (``ADMIN_API_KEY``: the bootstrap before the first account exists, with the admin role).
Attempts are throttled before any check, per name, per client address and globally, by the
limiter the users' logins use (:class:`services.login_limits.LoginLimiter`, namespace
``console``); a throttled attempt answers 429 with ``Retry-After`` even with the right password.

The session lives in Redis (:mod:`services.console_sessions`): the cookie (HttpOnly,
SameSite=Strict, path ``/console``, Secure behind https) holds only a random token. Logout,
disabling the account, rotating the admin key and ``CONSOLE_IDLE_TIMEOUT_S`` without a request
end it; ``CONSOLE_SESSION_MAX_S`` after login it ends anyway. Every POST carries the session's
own CSRF token. Roles (:mod:`domain.operators`): viewers read, operators act on orders and dead
letters, admins manage accounts. Logins (refused ones too), logouts, refusals by role and every
action are rows of the audit trail (``/console/audit``), naming the person.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

import redis
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import SecretStr

from api.catalog import admin_api_key_setting
from domain.operators import Permission, Role, allowed
from services import operators
from services.console_sessions import ConsoleSession, SessionStore
from services.login_limits import LoginLimiter, LoginThrottled
from services.unit_of_work import unit_of_work
from settings import get_settings

log = logging.getLogger(__name__)

router = APIRouter(prefix="/console", include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).resolve().parent / "templates"))

COOKIE = "orderflow_console"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
ADMIN_KEY_ACCOUNT = "<admin-key>"  # the limiter's account name for admin-key attempts

AdminKey = Annotated[SecretStr | None, Depends(admin_api_key_setting)]


def fingerprint(admin_key: SecretStr) -> str:
    """A short public name for the key (the actor on the timeline): never the key itself."""
    return hashlib.sha256(admin_key.get_secret_value().encode()).hexdigest()[:8]


def console_clock() -> float:
    """Now, in epoch seconds (a dependency, so tests can move the clock)."""
    return time.time()


def _redis() -> redis.Redis:
    from workers.connections import redis_client

    return redis_client()


def session_store(key: AdminKey) -> SessionStore:
    """Sessions under the current admin key's epoch (a rotation ends them all)."""
    s = get_settings()
    epoch = fingerprint(key) if key is not None else ""
    return SessionStore(_redis(), s.console_idle_timeout_s, s.console_session_max_s, epoch)


def console_limiter() -> LoginLimiter:
    s = get_settings()
    return LoginLimiter(
        _redis(), max_failures=s.console_login_max_failures, window_s=s.console_login_window_s,
        global_max_failures=s.console_login_global_max_failures, namespace="console",
    )  # fmt: skip


Store = Annotated[SessionStore, Depends(session_store)]
Clock = Annotated[float, Depends(console_clock)]
Limiter = Annotated[LoginLimiter, Depends(console_limiter)]


# --- helpers the console's pages share --------------------------------------------------------


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def read_form(request: Request) -> dict[str, str]:
    body = (await request.body())[:65536].decode(errors="replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


def page(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    response = templates.TemplateResponse(request, name, context, status_code=status)
    response.headers.update(SECURITY_HEADERS)
    return response


def safe_next(value: str | None) -> str:
    """Only a path inside the console (no open redirect)."""
    if value and value.startswith("/console/") and not value.startswith("//"):
        return value
    return "/console/pipeline"


def to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/console/login?next={quote(target, safe='')}", status_code=303)


def record(request: Request, actor: str, action: str, **kw: Any) -> None:
    """One audit row in its own transaction (for events with no other write: logins, denials)."""
    with unit_of_work() as session:
        operators.audit(session, actor=actor, action=action, address=client_address(request), **kw)


async def current(request: Request, store: SessionStore, now: float) -> ConsoleSession | None:
    """The live session of this request, or None."""
    token = request.cookies.get(COOKIE, "")
    return await run_in_threadpool(store.get, token, now=now) if token else None


async def acting(
    request: Request, store: SessionStore, now: float, permission: Permission
) -> tuple[ConsoleSession | None, Response | None]:
    """For a POST: the session when it is live, the form's CSRF token is its own and its role
    holds ``permission``; else the refusal to send (403), audited when someone was logged in."""
    session = await current(request, store, now)
    form = await read_form(request)
    if session is None or not session.csrf_ok(form.get("csrf", "")):
        return None, Response("forbidden: log in and use the console's form", status_code=403)
    if not allowed(session.role, permission):
        detail = {"role": session.role.label}
        await run_in_threadpool(
            record, request, session.actor, "denied", outcome="denied",
            target=request.url.path, detail=detail,
        )  # fmt: skip
        return None, Response(
            f"forbidden: the {session.role.label} role cannot do this", status_code=403
        )
    return session, None


# --- login and logout -------------------------------------------------------------------------


@router.get("/login")
def login_form(request: Request, next: str | None = None) -> Response:
    return page(request, "console/login.html", {"next": safe_next(next), "error": None})


def _check(name: str, password: str, key: SecretStr | None) -> tuple[str, Role, int | None] | None:
    """(actor, role, operator id) for valid credentials, else None."""
    if not name:
        if key is None or not hmac.compare_digest(key.get_secret_value().encode(),
                                                  password.encode()):  # fmt: skip
            return None
        return f"admin-key:{fingerprint(key)}", Role.ADMIN, None
    with unit_of_work() as session:
        who = operators.authenticate(session, name, password)
    return None if who is None else (who.actor, who.role, who.id)


def _refused(request: Request, target: str, status: int, error: str) -> Response:
    return page(request, "console/login.html", {"next": target, "error": error}, status=status)


@router.post("/login")
async def login(request: Request, key: AdminKey, store: Store, limiter: Limiter,
                now: Clock) -> Response:  # fmt: skip
    form = await read_form(request)
    name, password = form.get("name", "").strip().lower()[:64], form.get("password", "")
    target, address = safe_next(form.get("next")), client_address(request)
    account = name or ADMIN_KEY_ACCOUNT
    attempted = f"operator:{name}" if name else "admin-key"
    try:
        slot = await run_in_threadpool(limiter.acquire, account, address)
    except redis.RedisError as exc:  # no limiter, no login: unthrottled guessing is worse
        log.error("console login unavailable: Redis: %s", type(exc).__name__)
        return _refused(request, target, 503, "Logins are unavailable (Redis); try again soon.")
    except LoginThrottled as exc:
        await run_in_threadpool(record, request, attempted, "login", outcome="throttled")
        response = _refused(request, target, 429, f"Too many failed logins: try again in "
                            f"{exc.retry_after_s}s.")  # fmt: skip
        response.headers["Retry-After"] = str(exc.retry_after_s)
        return response
    who = await run_in_threadpool(_check, name, password, key)
    if who is None:
        log.warning("console login refused for %s from %s", attempted, address)
        await run_in_threadpool(record, request, attempted, "login", outcome="refused")
        return _refused(request, target, 401, "Wrong name or password (or not the admin key).")
    await run_in_threadpool(limiter.release, account, address, slot)
    actor, role, operator_id = who
    token = await run_in_threadpool(
        lambda: store.create(actor=actor, role=role, operator_id=operator_id, now=now)
    )
    await run_in_threadpool(record, request, actor, "login", detail={"role": role.label})
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE, token, max_age=store.absolute_s, path="/console", httponly=True,
        samesite="strict", secure=request.url.scheme == "https",
    )  # fmt: skip
    log.info("console login as %s (%s)", actor, role.label)
    return response


@router.post("/logout")
async def logout(request: Request, store: Store, now: Clock) -> Response:
    session, refusal = await acting(request, store, now, Permission.READ)
    if session is None:
        return refusal or Response(status_code=403)
    await run_in_threadpool(store.revoke, session)
    await run_in_threadpool(record, request, session.actor, "logout")
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(COOKIE, path="/console", httponly=True, samesite="strict")
    return response
