"""The console's audit trail (``/console/audit``, every role) and operator accounts
(``/console/operators``, admins: list, create, disable). The same services as
``orderflow operators``; every change is an audit row naming the admin who made it, in the
change's own transaction. Disabling an account ends its console sessions at once.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from api import console_auth as auth
from api.console_auth import Clock, Store
from domain.errors import ConflictError, NotFound, ValidationError
from domain.operators import Permission, Role, allowed
from services import operators
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


@router.get("/operators")
async def operator_list(
    request: Request, store: Store, now: Clock, done: str = "", error: str = ""
) -> Response:
    session = await auth.current(request, store, now)
    if session is None:
        return auth.to_login(request)
    if not allowed(session.role, Permission.MANAGE):
        return Response(f"forbidden: the {session.role.label} role cannot do this", 403)

    def read() -> list[operators.OperatorView]:
        with unit_of_work() as s:
            return operators.list_all(s)

    context = {"s": session, "nav": "operators", "operators": await run_in_threadpool(read),
               "roles": [r.label for r in Role], "done": done, "error": error}  # fmt: skip
    return auth.page(request, "console/operators.html", context)


def _back(*, done: str = "", error: str = "") -> RedirectResponse:
    query = f"done={quote(done)}" if done else f"error={quote(error)}"
    return RedirectResponse(f"/console/operators?{query}", status_code=303)


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
