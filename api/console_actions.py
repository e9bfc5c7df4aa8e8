"""The console as a place to act: actions on an order in NEEDS_ATTENTION, and dead letters
replayed or discarded by filter.

* ``POST /console/orders/{id}/actions/{cancel|refund|retry|resolve}`` (``resolve`` takes a
  ``note``, required, at most 500 characters): :func:`services.attention_actions.act` in one
  transaction (the change, the order's ``console_action`` timeline row and the audit row), then
  its follow-up tasks are published. Success redirects to the order page with what was done; a
  refusal (the order's state does not allow it, a bad note) shows the order page with the
  reason (409 / 422) and changes nothing but an audit row of the refusal.
* ``POST /console/returns/{id}/{approve|reject}`` (``reject`` needs a ``note``): an operator's
  decision on a REQUESTED return (:func:`services.returns.decide`), audited; back to the
  order page.
* ``GET /console/dead-letters/bulk?task=&queue=&error=&older_than=``: the preview, "N dead
  letters match" with the oldest few, and the two buttons.
* ``POST /console/dead-letters/bulk/{replay|discard}`` (the same filter fields): at most
  :data:`~services.dead_letter_bulk.CLICK_CAP` matching OPEN dead letters, in batches of
  :data:`~services.dead_letter_bulk.BATCH`, each batch committed and then its replays
  published; one audit row for the click (filter, count, how many still match).

Every POST needs the operator role and the session's CSRF token (:func:`api.console_auth.acting`).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from api import console_auth as auth
from api.console_auth import Clock, Store
from domain.errors import ConflictError, InvalidTransition, NotFound, ValidationError
from domain.operators import Permission
from services import attention_actions, console
from services import dead_letter_bulk as bulk
from services.console_sessions import ConsoleSession
from services.dead_letter_bulk import DeadLetterFilter
from services.unit_of_work import unit_of_work
from settings import get_settings
from workers.ports import allocation_policy
from workers.publish import enqueue_followups, enqueue_replay

log = logging.getLogger(__name__)

router = APIRouter(prefix="/console", include_in_schema=False)
REFUSED = (ConflictError, InvalidTransition, ValidationError)


def _now() -> datetime:
    return datetime.now(UTC)


# --- order actions -----------------------------------------------------------------------------


def _act(order_id: str, action: str, actor: str, address: str, note: str) -> str:
    """The action's transaction, then its follow-ups (published after the commit)."""
    with unit_of_work() as session:
        done = attention_actions.act(
            session, order_id, action, now=_now(), actor=actor, address=address, note=note,
            redrive_s=get_settings().shipping_redrive_s, policy=allocation_policy(),
        )  # fmt: skip
    enqueue_followups(done.followups)
    return done.summary


def _order_page(
    request: Request, session: ConsoleSession, order_id: str, error: str, status: int
) -> Response:
    with unit_of_work() as s:
        try:
            view: dict[str, Any] | None = console.order_page(s, order_id)
        except NotFound:
            view = None
    context = {"s": session, "nav": "order", "q": order_id, "order": view, "error": error}
    return auth.page(request, "console/order.html", context, status=status)


async def _refuse(
    request: Request, session: ConsoleSession, order_id: str, action: str, exc: Exception
) -> Response:
    outcome = "refused" if isinstance(exc, (*REFUSED, NotFound)) else "error"
    detail = {"error": type(exc).__name__, "message": str(exc)[:200]}
    await run_in_threadpool(
        auth.record, request, session.actor, f"order_{action}", outcome=outcome,
        target=f"order:{order_id}", detail=detail,
    )  # fmt: skip
    if isinstance(exc, NotFound):
        status, message = 404, str(exc)
    elif isinstance(exc, REFUSED):
        status, message = (422 if isinstance(exc, ValidationError) else 409), str(exc)
    else:
        status, message = 500, f"{action} failed: {type(exc).__name__}"
    return await run_in_threadpool(_order_page, request, session, order_id, message, status)


@router.post("/orders/{order_id}/actions/{action}")
async def order_action(
    request: Request, store: Store, now: Clock, order_id: str, action: str
) -> Response:
    session, refusal = await auth.acting(request, store, now, Permission.ACT_ON_ORDERS)
    if session is None:
        return refusal or Response(status_code=403)
    if action not in attention_actions.ACTIONS:
        return Response("unknown action", status_code=404)
    note = (await auth.read_form(request)).get("note", "")
    address = auth.client_address(request)
    try:
        summary = await run_in_threadpool(_act, order_id, action, session.actor, address, note)
    except Exception as exc:
        if not isinstance(exc, (*REFUSED, NotFound)):
            log.exception("console %s of order %s failed", action, order_id)
        return await _refuse(request, session, order_id, action, exc)
    log.info("console: %s order %s by %s", action, order_id, session.actor)
    target = f"/console/orders/{quote(order_id, safe='')}?done={quote(summary)}"
    return RedirectResponse(target, status_code=303)


# --- return decisions --------------------------------------------------------------------------


def _decide(return_id: int, approve: bool, actor: str, note: str) -> str:
    """The decision's transaction (the return's timeline rows and the audit row in it), then
    its follow-ups (a refund-only return's refund); the return's new status."""
    from services import operators, returns
    from workers.ports import return_policy

    action = "return_approve" if approve else "return_reject"
    with unit_of_work() as session:
        out = returns.decide(session, return_id, approve=approve, actor=f"console:{actor}",
                             note=note, policy=return_policy(), now=_now())  # fmt: skip
        operators.audit(session, actor=actor, action=action, target=f"return:{return_id}",
                        detail={"status": out.status, "note": note})  # fmt: skip
    enqueue_followups(out.followups)
    return out.status


def _order_of(return_id: int) -> str | None:
    from services.return_views import get_return

    with unit_of_work() as session:
        try:
            return str(get_return(session, return_id)["order_id"])
        except NotFound:
            return None


@router.post("/returns/{return_id}/{decision}")
async def return_decision(
    request: Request, store: Store, now: Clock, return_id: int, decision: str
) -> Response:
    """Approve or reject a REQUESTED return (:func:`services.returns.decide`); a reject needs
    a note. Back to the order page, with what was done or why it was refused."""
    session, refusal = await auth.acting(request, store, now, Permission.ACT_ON_ORDERS)
    if session is None:
        return refusal or Response(status_code=403)
    order_id = await run_in_threadpool(_order_of, return_id)
    if decision not in ("approve", "reject") or order_id is None:
        return Response("no such return or decision", status_code=404)
    note = (await auth.read_form(request)).get("note", "").strip()[:200]
    try:
        if decision == "reject" and not note:
            raise ValidationError("note", "say why the return is rejected")
        status = await run_in_threadpool(
            _decide, return_id, decision == "approve", session.actor, note or "approved"
        )
    except REFUSED as exc:
        return await _refuse(request, session, order_id, f"return_{decision}", exc)
    done = quote(f"return {return_id}: {status}")
    return RedirectResponse(f"/console/orders/{quote(order_id, safe='')}?done={done}", 303)


# --- dead letters by filter --------------------------------------------------------------------


def _preview(flt: DeadLetterFilter) -> dict[str, Any]:
    with unit_of_work() as s:
        rows = [_row(dl) for dl in bulk.sample(s, flt)]
        return {"matching": bulk.count_matching(s, flt), "sample": rows}


def _row(dl: Any) -> dict[str, Any]:
    return {
        "id": dl.id, "task": dl.task_name, "queue": dl.queue, "order_id": dl.order_id,
        "error": f"{dl.error_class.rsplit('.', 1)[-1]}: {dl.error_message[:200]}",
        "created_at": dl.created_at,
    }  # fmt: skip


@router.get("/dead-letters/bulk")
async def bulk_preview(
    request: Request, store: Store, now: Clock, done: str = "", error: str = ""
) -> Response:
    session = await auth.current(request, store, now)
    if session is None:
        return auth.to_login(request)
    context: dict[str, Any] = {"s": session, "nav": "attention", "bulk_page": True,
                               "cap": bulk.CLICK_CAP, "done": done, "error": error}  # fmt: skip
    try:
        flt = DeadLetterFilter.parse(dict(request.query_params))
    except ValidationError as exc:
        context.update(f=DeadLetterFilter(), matching=None, error=str(exc))
        return auth.page(request, "console/_bulk_dl.html", context, status=422)
    context.update(f=flt, **await run_in_threadpool(_preview, flt))
    return auth.page(request, "console/_bulk_dl.html", context)


def _bulk(flt: DeadLetterFilter, action: str, actor: str, address: str) -> tuple[int, int]:
    """Batches until the filter is exhausted or the click's cap is reached; each batch is
    committed, then its replays are published. Returns (done, still matching)."""
    now, done = _now(), 0
    try:
        while done < bulk.CLICK_CAP:
            limit = min(bulk.BATCH, bulk.CLICK_CAP - done)
            with unit_of_work() as s:
                batch = bulk.resolve_batch(s, flt, action, now=now, actor=actor, limit=limit)
            done += len(batch.ids)  # committed: counted even if a publish below fails
            for replay in batch.replays:  # a failed publish reopens its dead letter
                enqueue_replay(replay, actor=actor)
            if len(batch.ids) < limit:
                break
    except Exception as exc:
        with unit_of_work() as s:
            bulk.record_summary(s, flt, action, done=done, actor=actor, address=address,
                                error=f"{type(exc).__name__}: {exc}")  # fmt: skip
        raise
    with unit_of_work() as s:
        remaining = bulk.record_summary(s, flt, action, done=done, actor=actor, address=address)
    return done, remaining


@router.post("/dead-letters/bulk/{action}")
async def bulk_action(request: Request, store: Store, now: Clock, action: str) -> Response:
    session, refusal = await auth.acting(request, store, now, Permission.ACT_ON_ORDERS)
    if session is None:
        return refusal or Response(status_code=403)
    if action not in bulk.BULK_ACTIONS:
        return Response("unknown action", status_code=404)
    form = await auth.read_form(request)
    try:
        flt = DeadLetterFilter.parse(form)
    except ValidationError as exc:
        return _back(DeadLetterFilter(), error=str(exc))
    try:
        args = (flt, action, session.actor, auth.client_address(request))
        done, remaining = await run_in_threadpool(_bulk, *args)
    except Exception as exc:
        log.exception("console bulk %s of dead letters failed", action)
        return _back(flt, error=f"bulk {action} failed part-way: {type(exc).__name__}")
    verb = "replayed" if action == "replay" else "discarded"
    log.info("console: %s %d dead letters by %s (%s)", verb, done, session.actor, flt.describe())
    return _back(flt, done=f"{verb} {done} dead letters; {remaining} still match")


def _back(flt: DeadLetterFilter, *, done: str = "", error: str = "") -> RedirectResponse:
    query = {**flt.describe(), **({"done": done} if done else {"error": error})}
    return RedirectResponse(f"/console/dead-letters/bulk?{urlencode(query)}", status_code=303)
