"""The console's Settlement page: the providers' daily bills, their figures and the differences
found matching them (:mod:`services.settlement`; the CLI's ``orderflow settlement report`` and
``resolve``).

* ``GET /console/settlement?date=YYYY-MM-DD`` (any role; default: yesterday, UTC): the recent
  bill dates that have files, then for the day every provider's files (stored, or refused with
  the reason), its figures per provider, bill type and currency (gross, refunds, fees,
  adjustments, net) and every difference, open ones first, linked to its order when the
  payment or refund is ours. A date that is not ``YYYY-MM-DD`` is a 400 naming ``date``.
* ``POST /console/settlement/differences/{id}/resolve`` (operator role and the session's CSRF
  token, :func:`api.console_auth.acting`; form ``note``, required, at most 500 characters, and
  ``date``, the day to show afterwards): :func:`services.settlement_report.resolve` with the
  person as actor (``operator:<name>``), in one transaction with the audit row
  (``settlement_resolve``) and, when the difference concerns an order, a ``console_action`` row
  on its timeline. A refusal — an empty note (422), a difference resolved already (409, naming
  who and when), an unknown one (404) — shows the page with the reason, changes nothing and is
  audited with its outcome; a viewer's POST is refused (403) and audited by
  :func:`api.console_auth.acting`.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from api import console_auth as auth
from api.console_auth import Clock, Store
from domain.errors import ConflictError, NotFound, ValidationError
from domain.operators import Permission, allowed
from services import console as queries
from services import console_settlement as pages
from services import operators, settlement_report
from services.console_sessions import ConsoleSession
from services.unit_of_work import unit_of_work

log = logging.getLogger(__name__)

router = APIRouter(prefix="/console", include_in_schema=False)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
REFUSED = (ValidationError, ConflictError, NotFound)
ACTION = "settlement_resolve"


def _now() -> datetime:
    return datetime.now(UTC)


def parse_day(raw: str) -> date:
    """``YYYY-MM-DD``; empty is yesterday (UTC), the newest day whose bills can be complete.
    Raises ``ValidationError("date")`` for anything else."""
    if not raw:
        return _now().date() - timedelta(days=1)
    try:
        if _DATE.fullmatch(raw):
            return date.fromisoformat(raw)
    except ValueError:
        pass
    raise ValidationError("date", f"{raw[:40]!r} is not a date (YYYY-MM-DD)")


def _page_data(day: date) -> dict[str, Any]:
    with unit_of_work() as s:
        return {"r": pages.day_page(s, day), "recent": pages.recent_days(s)}


async def _render(
    request: Request, session: ConsoleSession, day: date | None, *, raw_day: str = "",
    done: str = "", error: str = "", status: int = 200,
) -> Response:  # fmt: skip
    """The page; ``day`` None (a bad date) shows the picker, the recent days and ``error``."""
    context: dict[str, Any] = {
        "s": session, "nav": "settlement", "done": done, "error": error,
        "day": day.isoformat() if day else raw_day[:40], "r": None,
        "can_act": allowed(session.role, Permission.ACT_ON_ORDERS),
    }  # fmt: skip
    if day is None:
        context["recent"] = await run_in_threadpool(_recent)
    else:
        context.update(await run_in_threadpool(_page_data, day))
    return auth.page(request, "console/settlement.html", context, status=status)


def _recent() -> list[pages.DaySummary]:
    with unit_of_work() as s:
        return pages.recent_days(s)


@router.get("/settlement")
async def settlement_page(
    request: Request, store: Store, now: Clock, day: str = Query("", alias="date"),
    done: str = "", error: str = "",
) -> Response:  # fmt: skip
    session = await auth.current(request, store, now)
    if session is None:
        return auth.to_login(request)
    try:
        wanted = parse_day(day)
    except ValidationError as exc:
        return await _render(request, session, None, raw_day=day, error=str(exc), status=400)
    return await _render(request, session, wanted, done=done[:300], error=error[:300])


def _resolve(diff_id: int, actor: str, address: str, note: str) -> dict[str, Any]:
    """The resolution, its audit row and (when the difference concerns an order) the order's
    timeline row, in one transaction."""
    with unit_of_work() as s:
        d = settlement_report.resolve(s, diff_id, actor=actor, note=note, now=_now())
        order_id = pages.order_of(s, d)
        detail = {"provider": d["provider"], "date": d["date"], "kind": d["kind"],
                  "ref": d["ref"], "note": d["resolution_note"]}  # fmt: skip
        operators.audit(s, actor=actor, action=ACTION, target=f"settlement_difference:{diff_id}",
                        address=address, detail={**detail, "order_id": order_id})  # fmt: skip
        if order_id is not None:
            queries.record_action(s, order_id, ACTION, actor=actor,
                                  detail={"difference_id": diff_id, **detail})  # fmt: skip
        return d


def _status_of(exc: Exception) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, ValidationError):
        return 422
    return 409 if isinstance(exc, ConflictError) else 500


@router.post("/settlement/differences/{diff_id}/resolve")
async def resolve_difference(
    request: Request, store: Store, now: Clock, diff_id: int = Path(ge=1, le=2**63 - 1)
) -> Response:
    session, refusal = await auth.acting(request, store, now, Permission.ACT_ON_ORDERS)
    if session is None:
        return refusal or Response(status_code=403)
    form = await auth.read_form(request)
    address, target = auth.client_address(request), f"settlement_difference:{diff_id}"
    try:
        d = await run_in_threadpool(_resolve, diff_id, session.actor, address, form.get("note", ""))
    except Exception as exc:
        refused = isinstance(exc, REFUSED)
        if not refused:
            log.exception("console: resolving settlement difference %s failed", diff_id)
        detail = {"error": type(exc).__name__, "message": str(exc)[:200]}
        await run_in_threadpool(
            auth.record, request, session.actor, ACTION, outcome="refused" if refused else "error",
            target=target, detail=detail,
        )  # fmt: skip
        message = str(exc) if refused else f"resolve failed: {type(exc).__name__}"
        try:
            day: date | None = parse_day(form.get("date", ""))
        except ValidationError:
            day = None
        return await _render(request, session, day, raw_day=form.get("date", ""),
                             error=message, status=_status_of(exc))  # fmt: skip
    log.info("console: settlement difference %s resolved by %s", diff_id, session.actor)
    done = f"difference {diff_id} ({d['provider']} {d['kind']} {d['ref']}) resolved"
    where = f"/console/settlement?date={d['date']}&done={quote(done)}#diff-{diff_id}"
    return RedirectResponse(where, status_code=303)
