"""The ops console: server-rendered pages of business state under ``/console``.

Pages: ``/console/pipeline`` (funnel per status, refreshed every few seconds from
``/console/pipeline/live``; transitions of the last hour; the oldest order waiting in each
stage; below, the last 24 hours as charts: transitions per hour, time in each stage, rejections
by reason), ``/console/orders/{id}`` and ``/console/search?q=`` (order id, external id or
waybill), ``/console/attention`` (NEEDS_ATTENTION orders, open dead letters, open circuits, open
disputes by evidence deadline, unresolved settlement differences (the count, linking to the
Settlement page: :mod:`api.console_settlement`), stale tracking, callback endpoints' health, each
with its CLI action; after a replay, what the replayed task did since), ``/console/stock``
(counters per SKU and warehouse with the drift check, paginated). The order list
(``/console/orders``), the charts' cache and the templates' filters (money, statuses by meaning,
durations): :mod:`api.console_pages`.

Authentication, sessions, roles and the audit trail: :mod:`api.console_auth`. Pages need any
role; actions (dead letter replay / discard, payments reconcile) need the operator role, carry the
session's CSRF token, call the same services as the CLI and write a ``console_action`` row on the
order's timeline and a row of the audit trail, both naming the person (``operator:<name>``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from adapters.registry import payment_provider
from api import console_auth as auth
from api.console_auth import Clock, Store
from api.console_pages import pipeline_charts
from domain.errors import NotFound, ValidationError
from domain.operators import Permission
from services import console as queries
from services import console_settlement, operators
from services import reconcile as reconciliation
from services.payments import disputes
from services.unit_of_work import unit_of_work
from settings import get_settings
from workers.ports import ports
from workers.publish import enqueue_followups

log = logging.getLogger(__name__)
T = TypeVar("T")

router = APIRouter(prefix="/console", include_in_schema=False)
HERE = Path(__file__).resolve().parent
STATIC = {"console.js": "text/javascript", "console.css": "text/css"}


def _read(fn: Callable[[Session], T]) -> T:
    with unit_of_work() as session:
        return fn(session)


def _now() -> datetime:
    return datetime.now(UTC)


@router.get("/static/{name}")
def static(name: str) -> Response:
    if name not in STATIC:
        return Response(status_code=404)
    return FileResponse(HERE / "static" / name, media_type=STATIC[name])


@router.get("")
@router.get("/")
def index() -> RedirectResponse:
    return RedirectResponse("/console/pipeline", status_code=303)


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
async def pipeline(request: Request, store: Store, now: Clock) -> Response:
    session = await auth.current(request, store, now)
    if session is None:
        return auth.to_login(request)
    data = await run_in_threadpool(_read, _pipeline_data)
    charts = await run_in_threadpool(pipeline_charts)  # not redrawn by the live refresh
    context = {"s": session, "nav": "pipeline", **data, **charts}
    return auth.page(request, "console/pipeline.html", context)


@router.get("/pipeline/live")
async def pipeline_live(request: Request, store: Store, now: Clock) -> Response:
    """The live part of the pipeline page (fetched by console.js every few seconds)."""
    if await auth.current(request, store, now) is None:
        return Response("login required", status_code=401)
    data = await run_in_threadpool(_read, _pipeline_data)
    return auth.page(request, "console/_pipeline_live.html", data)


# --- orders ----------------------------------------------------------------------------------


@router.get("/search")
async def search(request: Request, store: Store, now: Clock, q: str = "") -> Response:
    session = await auth.current(request, store, now)
    if session is None:
        return auth.to_login(request)
    order_id = await run_in_threadpool(_read, lambda s: queries.find_order(s, q))
    if order_id is not None:
        return RedirectResponse(f"/console/orders/{quote(order_id, safe='')}", status_code=303)
    context = {"s": session, "nav": "order", "q": q, "order": None}
    return auth.page(request, "console/order.html", context, status=404)


@router.get("/orders/{order_id}")
async def order(
    request: Request, store: Store, now: Clock, order_id: str, done: str = ""
) -> Response:
    session = await auth.current(request, store, now)
    if session is None:
        return auth.to_login(request)
    try:
        view = await run_in_threadpool(_read, lambda s: queries.order_page(s, order_id))
    except NotFound:
        context = {"s": session, "nav": "order", "q": order_id, "order": None}
        return auth.page(request, "console/order.html", context, status=404)
    context = {"s": session, "nav": "order", "q": order_id, "order": view, "done": done}
    return auth.page(request, "console/order.html", context)


# --- attention -------------------------------------------------------------------------------


def _circuits() -> tuple[list[dict[str, Any]], str | None]:
    from adapters.registry import PAYMENT_PROVIDERS
    from workers.connections import redis_client

    try:
        return queries.open_circuits(redis_client(), [*PAYMENT_PROVIDERS, "kuaidi100"]), None
    except Exception as exc:  # noqa: BLE001 - Redis down must not take the page down
        return [], f"Redis unavailable: {type(exc).__name__}"


@router.get("/attention")
async def attention(
    request: Request, store: Store, now: Clock, done: str = "", error: str = "",
    replayed: str = "",
) -> Response:  # fmt: skip
    """``replayed``: the id of the dead letter just replayed here, whose outcome so far heads
    the page."""
    session = await auth.current(request, store, now)
    if session is None:
        return auth.to_login(request)
    stale_after = get_settings().tracking_stale_after_s
    data = await run_in_threadpool(
        _read, lambda s: queries.attention(s, now=_now(), stale_after_s=stale_after)
    )
    replay = None
    if replayed.isdigit() and len(replayed) < 19:
        dl_id = int(replayed)
        replay = await run_in_threadpool(_read, lambda s: queries.replay_outcome(s, dl_id))
    circuits, circuit_error = await run_in_threadpool(_circuits)
    open_disputes = await run_in_threadpool(_read, lambda s: disputes.open_disputes(s, now=_now()))
    unresolved = await run_in_threadpool(_read, console_settlement.open_differences)
    context = {
        "s": session, "nav": "attention", "a": data, "circuits": circuits,
        "circuit_error": circuit_error, "done": done, "error": error, "replay": replay,
        "disputes": open_disputes, "settlement": unresolved,
    }  # fmt: skip
    return auth.page(request, "console/attention.html", context)


# --- stock -----------------------------------------------------------------------------------


@router.get("/stock")
async def stock(
    request: Request, store: Store, now: Clock, sku: str = "", page: int = 1, check: str = ""
) -> Response:
    session = await auth.current(request, store, now)
    if session is None:
        return auth.to_login(request)
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
    return auth.page(request, "console/stock.html", context)


# --- actions ---------------------------------------------------------------------------------


def _back(path: str, *, done: str = "", error: str = "", extra: str = "") -> RedirectResponse:
    query = f"done={quote(done)}" if done else f"error={quote(error)}"
    return RedirectResponse(f"{path}?{query}{extra}", status_code=303)


class _NotPublished(Exception):
    """The replay was recorded but its task could not be published (the broker is down)."""


def _resolve_dead_letter(dl_id: int, action: str, actor: str, address: str) -> tuple[str, bool]:
    """``orderflow dlq replay|discard``: the same service call, plus the console's timeline row
    and audit row in its transaction; a replayed task is published after the commit, as the CLI
    does. Returns the dead letter's task name and whether it names an order; raises
    :class:`_NotPublished` when the commit happened and the publish failed."""
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
        operators.audit(
            session, actor=actor, action=f"dlq_{action}", target=f"dead_letter:{dl_id}",
            address=address, detail={"order_id": dl.order_id if dl is not None else None},
        )  # fmt: skip
    if replay is not None:
        try:
            enqueue_replay(replay, actor=actor)
        except Exception as exc:  # enqueue_replay put the dead letter back to OPEN
            log.exception("dead letter %s: publishing %s failed; open again", dl_id, replay)
            raise _NotPublished(f"{replay.task_name}: {type(exc).__name__}") from exc
    return (dl.task_name, bool(dl.order_id)) if dl is not None else ("?", False)


@router.post("/actions/dead-letters/{dl_id}/{action}")
async def dead_letter_action(
    request: Request, store: Store, now: Clock, dl_id: int, action: str
) -> Response:
    session, refusal = await auth.acting(request, store, now, Permission.ACT_ON_ORDERS)
    if session is None:
        return refusal or Response(status_code=403)
    if action not in ("replay", "discard"):
        return Response("unknown action", status_code=404)
    try:
        address = auth.client_address(request)
        task, has_order = await run_in_threadpool(
            _resolve_dead_letter, dl_id, action, session.actor, address
        )
    except _NotPublished as exc:  # nothing will run: the dead letter is OPEN again
        await _audit_failure(request, session.actor, "dlq_replay", f"dead_letter:{dl_id}", exc)
        error = (f"dead letter {dl_id}: its task was not published ({exc}); "
                 "the dead letter is open again, replay it when the broker is back")  # fmt: skip
        return _back("/console/attention", error=error, extra=f"&replayed={dl_id}")
    except (NotFound, ValidationError) as exc:
        await _audit_failure(request, session.actor, f"dlq_{action}", f"dead_letter:{dl_id}", exc)
        return _back("/console/attention", error=str(exc))
    except Exception as exc:
        log.exception("console %s of dead letter %s failed", action, dl_id)
        await _audit_failure(request, session.actor, f"dlq_{action}", f"dead_letter:{dl_id}", exc)
        return _back("/console/attention", error=f"{action} failed: {type(exc).__name__}")
    log.info("console: %s dead letter %s by %s", action, dl_id, session.actor)
    if action == "discard":
        return _back("/console/attention", done=f"dead letter {dl_id}: discarded (task {task})")
    return _back("/console/attention", done=_published(dl_id, task, has_order=has_order),
                 extra=f"&replayed={dl_id}")  # fmt: skip


def _published(dl_id: int, task: str, *, has_order: bool) -> str:
    """The flash after a replay. Published is all that is known then (the task has not run):
    the page it leads to shows what the task did since, as it happens."""
    watch = "watch the order's timeline" if has_order else "it names no order"
    return f"dead letter {dl_id}: replay published (task {task}); {watch}"


async def _audit_failure(
    request: Request, actor: str, action: str, target: str | None, exc: Exception
) -> None:
    detail = {"error": type(exc).__name__, "message": str(exc)[:200]}
    await run_in_threadpool(
        auth.record, request, actor, action, outcome="error", target=target, detail=detail
    )


def _reconcile(actor: str, address: str) -> str:
    """``orderflow payments reconcile`` (the same service), then a timeline row per finding and
    one audit row."""
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
        summary = (
            f"checked {report.checked}, fixed {len(report.fixed)}, "
            f"unresolved {len(report.unresolved)}"
        )
        operators.audit(session, actor=actor, action="payments_reconcile", address=address,
                        detail={"summary": summary})  # fmt: skip
    return summary


@router.post("/actions/reconcile")
async def reconcile(request: Request, store: Store, now: Clock) -> Response:
    session, refusal = await auth.acting(request, store, now, Permission.ACT_ON_ORDERS)
    if session is None:
        return refusal or Response(status_code=403)
    try:
        summary = await run_in_threadpool(_reconcile, session.actor, auth.client_address(request))
    except Exception as exc:
        log.exception("console reconcile failed")
        await _audit_failure(request, session.actor, "payments_reconcile", None, exc)
        return _back("/console/attention", error=f"reconcile failed: {type(exc).__name__}")
    log.info("console: payments reconcile by %s: %s", session.actor, summary)
    return _back("/console/attention", done=f"payments reconcile: {summary}")
