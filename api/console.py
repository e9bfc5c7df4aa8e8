"""The ops console: server-rendered pages of business state under ``/console``.

Pages: ``/console/pipeline`` (funnel per status, refreshed every few seconds from
``/console/pipeline/live``; transitions of the last hour; the oldest order waiting in each
stage), ``/console/orders/{id}`` and ``/console/search?q=`` (order id, external id or waybill),
``/console/attention`` (NEEDS_ATTENTION orders, open dead letters, open circuits, stale
tracking, each with its CLI action), ``/console/stock`` (counters per SKU and warehouse with the
drift check, paginated).

Authentication: the operator types the admin key (``ADMIN_API_KEY``, the key of the admin API)
on ``/console/login``; it is compared in constant time and never stored or logged. The session is
a cookie (HttpOnly, SameSite=Strict, path ``/console``, Secure behind https) holding an expiry
and a nonce, signed with HMAC-SHA256 under a key derived from the admin key — rotating the admin
key logs every console out. Every POST carries a CSRF token derived from the session's nonce.
Actions (dead letter replay / discard, payments reconcile) call the same services as the CLI and
write a ``console_action`` row on the order's timeline with actor ``console:<key fingerprint>``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import SecretStr
from sqlalchemy.orm import Session

from adapters.registry import payment_provider
from api.catalog import admin_api_key_setting
from domain.errors import NotFound, ValidationError
from services import console as queries
from services import reconcile as reconciliation
from services.unit_of_work import unit_of_work
from settings import get_settings
from workers.ports import ports
from workers.publish import enqueue_followups

log = logging.getLogger(__name__)
T = TypeVar("T")

router = APIRouter(prefix="/console", include_in_schema=False)
HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
STATIC = {"console.js": "text/javascript", "console.css": "text/css"}

COOKIE = "orderflow_console"
SESSION_S = 8 * 3600
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
AdminKey = Annotated[SecretStr | None, Depends(admin_api_key_setting)]


# --- session ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    nonce: str
    expires: int
    csrf: str
    actor: str


def _signing_key(admin_key: SecretStr) -> bytes:
    return hmac.new(
        admin_key.get_secret_value().encode(), b"orderflow-console-v1", "sha256"
    ).digest()


def fingerprint(admin_key: SecretStr) -> str:
    """A short public name for the key (the actor on the timeline): never the key itself."""
    return hashlib.sha256(admin_key.get_secret_value().encode()).hexdigest()[:8]


def _sign(key: bytes, payload: bytes) -> str:
    return base64.urlsafe_b64encode(hmac.new(key, payload, "sha256").digest()).decode().rstrip("=")


def _new_cookie(admin_key: SecretStr) -> str:
    body = json.dumps({"exp": int(time.time()) + SESSION_S, "n": secrets.token_urlsafe(16)})
    payload = base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")
    return f"{payload}.{_sign(_signing_key(admin_key), payload.encode())}"


def read_session(request: Request, admin_key: SecretStr | None) -> ConsoleSession | None:
    """The valid, unexpired session of this request, or None."""
    raw = request.cookies.get(COOKIE)
    if admin_key is None or not raw or raw.count(".") != 1:
        return None
    payload, signature = raw.split(".")
    key = _signing_key(admin_key)
    if not hmac.compare_digest(_sign(key, payload.encode()), signature):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        expires, nonce = int(data["exp"]), str(data["n"])
    except (ValueError, KeyError, TypeError):
        return None
    if expires < time.time():
        return None
    csrf = _sign(key, b"csrf:" + nonce.encode())
    return ConsoleSession(nonce, expires, csrf, f"console:{fingerprint(admin_key)}")


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/console/login?next={quote(target, safe='')}", status_code=303)


def _safe_next(value: str | None) -> str:
    """Only a path inside the console (no open redirect)."""
    if value and value.startswith("/console/") and not value.startswith("//"):
        return value
    return "/console/pipeline"


async def _form(request: Request) -> dict[str, str]:
    body = (await request.body())[:65536].decode(errors="replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


def _csrf_ok(session: ConsoleSession, form: dict[str, str]) -> bool:
    return hmac.compare_digest(session.csrf.encode(), form.get("csrf", "").encode())


def _page(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    response = templates.TemplateResponse(request, name, context, status_code=status)
    response.headers.update(SECURITY_HEADERS)
    return response


def _read(fn: Callable[[Session], T]) -> T:
    with unit_of_work() as session:
        return fn(session)


def _now() -> datetime:
    return datetime.now(UTC)


# --- login -----------------------------------------------------------------------------------


@router.get("/static/{name}")
def static(name: str) -> Response:
    if name not in STATIC:
        return Response(status_code=404)
    return FileResponse(HERE / "static" / name, media_type=STATIC[name])


@router.get("")
@router.get("/")
def index() -> RedirectResponse:
    return RedirectResponse("/console/pipeline", status_code=303)


@router.get("/login")
def login_form(request: Request, key: AdminKey, next: str | None = None) -> Response:
    error = None if key is not None else "The console is disabled: ADMIN_API_KEY is not set."
    return _page(request, "console/login.html", {"next": _safe_next(next), "error": error})


@router.post("/login")
async def login(request: Request, key: AdminKey) -> Response:
    form = await _form(request)
    given = form.get("admin_key", "")
    target = _safe_next(form.get("next"))
    if key is None or not hmac.compare_digest(key.get_secret_value().encode(), given.encode()):
        log.warning("console login refused from %s", request.client.host if request.client else "?")
        context = {"next": target, "error": "That is not the admin key."}
        return _page(request, "console/login.html", context, status=401)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE, _new_cookie(key), max_age=SESSION_S, path="/console", httponly=True,
        samesite="strict", secure=request.url.scheme == "https",
    )  # fmt: skip
    log.info("console login as console:%s", fingerprint(key))
    return response


@router.post("/logout")
async def logout(request: Request, key: AdminKey) -> Response:
    session = read_session(request, key)
    if session is None or not _csrf_ok(session, await _form(request)):
        return Response("forbidden", status_code=403)
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(COOKIE, path="/console", httponly=True, samesite="strict")
    return response


# --- pipeline --------------------------------------------------------------------------------


def _pipeline_data(session: Session) -> dict[str, Any]:
    now = _now()
    funnel = queries.funnel(session)
    return {
        "funnel": funnel,
        "funnel_max": max((n for _, n in funnel), default=0) or 1,
        "total": sum(n for _, n in funnel),
        "throughput": queries.throughput(session, now=now),
        "oldest": queries.oldest_waiting(session, now=now),
        "now": now,
    }


@router.get("/pipeline")
async def pipeline(request: Request, key: AdminKey) -> Response:
    session = read_session(request, key)
    if session is None:
        return _to_login(request)
    data = await run_in_threadpool(_read, _pipeline_data)
    return _page(request, "console/pipeline.html", {"s": session, "nav": "pipeline", **data})


@router.get("/pipeline/live")
async def pipeline_live(request: Request, key: AdminKey) -> Response:
    """The live part of the pipeline page (fetched by console.js every few seconds)."""
    if read_session(request, key) is None:
        return Response("login required", status_code=401)
    data = await run_in_threadpool(_read, _pipeline_data)
    return _page(request, "console/_pipeline_live.html", data)


# --- orders ----------------------------------------------------------------------------------


@router.get("/search")
async def search(request: Request, key: AdminKey, q: str = "") -> Response:
    session = read_session(request, key)
    if session is None:
        return _to_login(request)
    order_id = await run_in_threadpool(_read, lambda s: queries.find_order(s, q))
    if order_id is not None:
        return RedirectResponse(f"/console/orders/{quote(order_id, safe='')}", status_code=303)
    context = {"s": session, "nav": "order", "q": q, "order": None}
    return _page(request, "console/order.html", context, status=404)


@router.get("/orders/{order_id}")
async def order(request: Request, key: AdminKey, order_id: str, done: str = "") -> Response:
    session = read_session(request, key)
    if session is None:
        return _to_login(request)
    try:
        view = await run_in_threadpool(_read, lambda s: queries.order_page(s, order_id))
    except NotFound:
        context = {"s": session, "nav": "order", "q": order_id, "order": None}
        return _page(request, "console/order.html", context, status=404)
    context = {"s": session, "nav": "order", "q": order_id, "order": view, "done": done}
    return _page(request, "console/order.html", context)


# --- attention -------------------------------------------------------------------------------


def _circuits() -> tuple[list[dict[str, Any]], str | None]:
    from adapters.registry import PAYMENT_PROVIDERS
    from workers.connections import redis_client

    try:
        return queries.open_circuits(redis_client(), [*PAYMENT_PROVIDERS, "kuaidi100"]), None
    except Exception as exc:  # noqa: BLE001 - Redis down must not take the page down
        return [], f"Redis unavailable: {type(exc).__name__}"


@router.get("/attention")
async def attention(request: Request, key: AdminKey, done: str = "", error: str = "") -> Response:
    session = read_session(request, key)
    if session is None:
        return _to_login(request)
    stale_after = get_settings().tracking_stale_after_s
    data = await run_in_threadpool(
        _read, lambda s: queries.attention(s, now=_now(), stale_after_s=stale_after)
    )
    circuits, circuit_error = await run_in_threadpool(_circuits)
    context = {
        "s": session, "nav": "attention", "a": data, "circuits": circuits,
        "circuit_error": circuit_error, "done": done, "error": error,
    }  # fmt: skip
    return _page(request, "console/attention.html", context)


# --- stock -----------------------------------------------------------------------------------


@router.get("/stock")
async def stock(
    request: Request, key: AdminKey, sku: str = "", page: int = 1, check: str = ""
) -> Response:
    session = read_session(request, key)
    if session is None:
        return _to_login(request)
    page, per_page = max(1, min(page, 100_000)), 100
    data = await run_in_threadpool(
        _read,
        lambda s: queries.stock_page(
            s, sku_prefix=sku[:64], offset=(page - 1) * per_page, limit=per_page
        ),
    )
    full = await run_in_threadpool(_read, queries.full_drift) if check == "all" else None
    pages = max(1, -(-data.total // per_page))
    context = {
        "s": session, "nav": "stock", "data": data, "sku": sku, "page": page, "pages": pages,
        "full": full,
    }  # fmt: skip
    return _page(request, "console/stock.html", context)


# --- actions ---------------------------------------------------------------------------------


async def _action_session(request: Request, key: SecretStr | None) -> ConsoleSession | None:
    session = read_session(request, key)
    if session is None or not _csrf_ok(session, await _form(request)):
        return None
    return session


def _back(path: str, *, done: str = "", error: str = "") -> RedirectResponse:
    query = f"done={quote(done)}" if done else f"error={quote(error)}"
    return RedirectResponse(f"{path}?{query}", status_code=303)


def _resolve_dead_letter(dl_id: int, action: str, actor: str) -> None:
    """``orderflow dlq replay|discard``: the same service call, plus the console's timeline row;
    a replayed task is published after the commit, as the CLI does."""
    from services import dead_letters
    from workers.publish import enqueue_replay

    replay = None
    with unit_of_work() as session:
        if action == "replay":
            replay = dead_letters.replay(session, dl_id, now=_now(), actor=actor)
        else:
            dead_letters.discard(session, dl_id, now=_now(), actor=actor)
        dl = dead_letters.find(session, dl_id)
        if dl is not None and dl.order_id:
            detail = {"dead_letter_id": dl_id, "task": dl.task_name}
            queries.record_action(session, dl.order_id, f"dlq_{action}", actor=actor, detail=detail)
    if replay is not None:
        enqueue_replay(replay)


@router.post("/actions/dead-letters/{dl_id}/{action}")
async def dead_letter_action(request: Request, key: AdminKey, dl_id: int, action: str) -> Response:
    session = await _action_session(request, key)
    if session is None:
        return Response("forbidden: log in and use the console's form", status_code=403)
    if action not in ("replay", "discard"):
        return Response("unknown action", status_code=404)
    try:
        await run_in_threadpool(_resolve_dead_letter, dl_id, action, session.actor)
    except (NotFound, ValidationError) as exc:
        return _back("/console/attention", error=str(exc))
    except Exception as exc:
        log.exception("console %s of dead letter %s failed", action, dl_id)
        return _back("/console/attention", error=f"{action} failed: {type(exc).__name__}")
    log.info("console: %s dead letter %s by %s", action, dl_id, session.actor)
    return _back("/console/attention", done=f"dead letter {dl_id}: {action} done")


def _reconcile(actor: str) -> str:
    """``orderflow payments reconcile`` (the same service), then a timeline row per finding."""
    report = reconciliation.reconcile(
        payment_provider, ports(), sample=get_settings().reconcile_sample
    )
    enqueue_followups(report.followups)
    with unit_of_work() as session:
        for f in report.findings[:200]:
            detail = {
                "provider": f.provider,
                "ours": f.ours,
                "theirs": f.theirs,
                "result": f.action,
            }
            queries.record_action(
                session, f.order_id, "payments_reconcile", actor=actor, detail=detail
            )
    return (
        f"checked {report.checked}, fixed {len(report.fixed)}, unresolved {len(report.unresolved)}"
    )


@router.post("/actions/reconcile")
async def reconcile(request: Request, key: AdminKey) -> Response:
    session = await _action_session(request, key)
    if session is None:
        return Response("forbidden: log in and use the console's form", status_code=403)
    try:
        summary = await run_in_threadpool(_reconcile, session.actor)
    except Exception as exc:
        log.exception("console reconcile failed")
        return _back("/console/attention", error=f"reconcile failed: {type(exc).__name__}")
    log.info("console: payments reconcile by %s: %s", session.actor, summary)
    return _back("/console/attention", done=f"payments reconcile: {summary}")
