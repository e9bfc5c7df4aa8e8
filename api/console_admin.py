"""The console's audit trail (``/console/audit``, every role) and the admins' pages: operator
accounts (``/console/operators``: list, create, disable), intake API keys (``/console/keys``:
list, revoke) and callback endpoints (``/console/callbacks``: list, pause, resume).

The same services as ``orderflow operators|apikeys|callbacks``; every change is an audit row
naming the admin who made it, in the change's own transaction. Disabling an account ends its
console sessions at once. A page never shows a secret, a hash or a ciphertext; what has a secret
to hand over once (creating or rotating a key, registering an endpoint) stays with the CLI and
the admin API. Other roles get 403 (a refused POST is audited as ``denied``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from api import console_auth as auth
from api.console_auth import Clock, Store
from domain.errors import ConflictError, NotFound, ValidationError
from domain.operators import Permission, Role, allowed
from services import api_keys, callbacks, operators
from services.console_sessions import ConsoleSession, SessionStore
from services.unit_of_work import unit_of_work

log = logging.getLogger(__name__)
router = APIRouter(prefix="/console", include_in_schema=False)
PER_PAGE = 100


@router.get("/audit")
async def audit(
    request: Request, store: Store, now: Clock, actor: str = "", before: int | None = None
) -> Response:
    session = await auth.current(request, store, now)
    if session is None:
        return auth.to_login(request)

    def read() -> tuple[list[dict[str, Any]], int]:
        with unit_of_work() as s:
            return operators.audit_page(s, actor=actor[:100], before_id=before, limit=PER_PAGE)

    rows, total = await run_in_threadpool(read)
    older = rows[-1]["id"] if len(rows) == PER_PAGE else None
    context = {"s": session, "nav": "audit", "rows": rows, "total": total, "actor": actor,
               "older": older}  # fmt: skip
    return auth.page(request, "console/audit.html", context)


async def _admin(
    request: Request, store: SessionStore, now: float
) -> tuple[ConsoleSession | None, Response | None]:
    """For an admin page (GET): the session when its role may manage, else the answer to send
    (to the login page, or 403)."""
    session = await auth.current(request, store, now)
    if session is None:
        return None, auth.to_login(request)
    if not allowed(session.role, Permission.MANAGE):
        return None, Response(f"forbidden: the {session.role.label} role cannot do this", 403)
    return session, None


async def _admin_page(
    request: Request,
    store: SessionStore,
    now: float,
    nav: str,
    read: Callable[[Session], list[Any]],
    **context: Any,
) -> Response:
    """An admin's list page: ``console/<nav>.html`` with ``rows`` from ``read``."""
    session, refusal = await _admin(request, store, now)
    if session is None:
        return refusal or Response(status_code=403)

    def rows() -> list[Any]:
        with unit_of_work() as s:
            return read(s)

    context = {"s": session, "nav": nav, "rows": await run_in_threadpool(rows), **context}
    return auth.page(request, f"console/{nav}.html", context)


@router.get("/operators")
async def operator_list(
    request: Request, store: Store, now: Clock, done: str = "", error: str = ""
) -> Response:
    return await _admin_page(
        request, store, now, "operators", operators.list_all,
        roles=[r.label for r in Role], done=done, error=error,
    )  # fmt: skip


def _back(*, done: str = "", error: str = "", to: str = "operators") -> RedirectResponse:
    query = f"done={quote(done)}" if done else f"error={quote(error)}"
    return RedirectResponse(f"/console/{to}?{query}", status_code=303)


def _create(session: ConsoleSession, form: dict[str, str], address: str) -> str:
    with unit_of_work() as s:
        made = operators.create(
            s, form.get("name", ""), form.get("password", ""), Role.parse(form.get("role", ""))
        )
        operators.audit(s, actor=session.actor, action="operator_create", target=made.actor,
                        address=address, detail={"role": made.role.label})  # fmt: skip
    return f"{made.name} created ({made.role.label})"


def _disable(session: ConsoleSession, store: SessionStore, name: str, address: str) -> str:
    with unit_of_work() as s:
        gone = operators.disable(s, name, now=datetime.now(UTC))
        operators.audit(s, actor=session.actor, action="operator_disable", target=gone.actor,
                        address=address)  # fmt: skip
    ended = store.revoke_operator(gone.id)
    return f"{gone.name} disabled; {ended} session(s) ended"


@router.post("/operators")
async def operator_create(request: Request, store: Store, now: Clock) -> Response:
    form = await auth.read_form(request)  # cached body: acting() reads the same bytes
    session, refusal = await auth.acting(request, store, now, Permission.MANAGE)
    if session is None:
        return refusal or Response(status_code=403)
    try:
        done = await run_in_threadpool(_create, session, form, auth.client_address(request))
    except (ValidationError, ConflictError) as exc:
        return _back(error=str(exc))
    log.info("console: %s by %s", done, session.actor)
    return _back(done=done)


@router.post("/operators/{name}/disable")
async def operator_disable(request: Request, store: Store, now: Clock, name: str) -> Response:
    session, refusal = await auth.acting(request, store, now, Permission.MANAGE)
    if session is None:
        return refusal or Response(status_code=403)
    try:
        done = await run_in_threadpool(_disable, session, store, name, auth.client_address(request))
    except NotFound as exc:
        return _back(error=str(exc))
    log.info("console: %s by %s", done, session.actor)
    return _back(done=done)


# --- intake API keys ----------------------------------------------------------------------------


@router.get("/keys")
async def key_list(
    request: Request, store: Store, now: Clock, done: str = "", error: str = ""
) -> Response:
    return await _admin_page(
        request, store, now, "keys", api_keys.list_keys,
        at=datetime.now(UTC), done=done, error=error,
    )  # fmt: skip


def _revoke(session: ConsoleSession, key_id: str, address: str) -> str:
    with unit_of_work() as s:
        info, changed = api_keys.revoke_key(s, key_id, now=datetime.now(UTC))
        detail = {"source": info.source, "changed": changed}
        operators.audit(s, actor=session.actor, action="apikey_revoke", target=info.key_id,
                        address=address, detail=detail)  # fmt: skip
    return f"{info.key_id} ({info.source}) " + ("revoked" if changed else "was already revoked")


@router.post("/keys/{key_id}/revoke")
async def key_revoke(request: Request, store: Store, now: Clock, key_id: str) -> Response:
    session, refusal = await auth.acting(request, store, now, Permission.MANAGE)
    if session is None:
        return refusal or Response(status_code=403)
    try:
        done = await run_in_threadpool(_revoke, session, key_id, auth.client_address(request))
    except NotFound as exc:
        return _back(error=str(exc), to="keys")
    log.info("console: %s by %s", done, session.actor)
    return _back(done=done, to="keys")


# --- callback endpoints -------------------------------------------------------------------------


@router.get("/callbacks")
async def callback_list(
    request: Request, store: Store, now: Clock, done: str = "", error: str = ""
) -> Response:
    return await _admin_page(
        request, store, now, "callbacks", callbacks.list_endpoints, done=done, error=error
    )


def _pause_or_resume(session: ConsoleSession, source: str, action: str, address: str) -> str:
    with unit_of_work() as s:
        change = callbacks.pause if action == "pause" else callbacks.resume
        count = change(s, source, now=datetime.now(UTC))
        operators.audit(s, actor=session.actor, action=f"callback_{action}", target=source,
                        address=address, detail={"deliveries": count})  # fmt: skip
    if action == "pause":
        return f"{source} paused: {count} pending deliveries held"
    return f"{source} resumed: {count} held deliveries due now"


@router.post("/callbacks/{source}/{action}")
async def callback_pause_resume(
    request: Request, store: Store, now: Clock, source: str, action: str
) -> Response:
    if action not in ("pause", "resume"):
        return Response("unknown action", status_code=404)
    session, refusal = await auth.acting(request, store, now, Permission.MANAGE)
    if session is None:
        return refusal or Response(status_code=403)
    address = auth.client_address(request)
    try:
        done = await run_in_threadpool(_pause_or_resume, session, source, action, address)
    except (NotFound, ValidationError) as exc:
        return _back(error=str(exc), to="callbacks")
    log.info("console: %s by %s", done, session.actor)
    return _back(done=done, to="callbacks")
