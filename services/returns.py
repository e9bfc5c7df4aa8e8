"""Returns: asking for one, and the decision on it (issue 22). The rules are
:mod:`domain.aftersale`'s; receiving the parcel and settling are in
:mod:`services.return_receipt`.

1. **Who may ask, and when** (:func:`request_return`). A refund-only return may be asked for
   once the order is paid: before shipping (PAID, while no parcel has been sent to a warehouse)
   its units are not shipped at all (rule 7), after shipping (SHIPPED … RECEIPT_CONFIRMED: a
   parcel lost on the way) they are paid back without coming back; a return-and-refund or an
   exchange (the same lines shipped again, :mod:`services.exchange`) once it is delivered
   (DELIVERED or RECEIPT_CONFIRMED). After the after-sale window (``AFTERSALE_WINDOW_S`` from
   receipt) or once the order is COMPLETED the request is refused (409 naming ``status``).
2. **What may be asked for.** Lines are named by SKU; each line's returnable units are its
   units less those every earlier return still holds (:func:`domain.aftersale.returnable`).
   The order row is locked first, so two concurrent requests on one line are serialized and
   the second sees the first's units: together they never exceed the line.
3. **The amount** asked for is the requested units' part of each line's charged share
   (:func:`domain.aftersale.line_shares` of the order's total, :func:`refund_for` over the
   units already refunded), so a line returned in parts refunds exactly its share in all.
4. **Approval** (:func:`domain.aftersale.auto_approve`): with ``RETURN_AUTO_APPROVE_MAX`` set,
   a request of at most that amount on returnable products within their windows is approved at
   once by ``policy``; every other waits for an operator (:func:`decide`).
5. **After approval** a refund-only return is settled at once (its refund requested, status
   REFUNDED); a return-and-refund waits for its parcel (AWAITING_PARCEL) until
   ``RETURN_SHIP_BACK_S`` after approval (an exchange too), and one never shipped back by then
   is closed by the sweep (:func:`sweep_overdue`).
6. **The parcel back** (:func:`register_parcel`): the buyer's waybill becomes a shipment of
   direction RETURN, subscribed to Kuaidi100 pushes and polled like any parcel (never one of
   the order's: it does not move the order); delivered at the warehouse, the return is
   RECEIVED (:func:`services.return_state.parcel_moved`), and the warehouse's inspection then
   settles it. The warehouse may also receive a parcel that tracking has not seen arrive.

7. **Refund-only before shipping**, when approved: the units are released from the order's
   reservations (:func:`services.stock.release_units`, ledger ``release`` / ``release_part``)
   and taken off its planned parcels (:func:`services.parcel_planning.drop_units`) in the
   same transaction as the refund, under the order's lock, so the booking (which takes the
   same lock) ships what is left. Once a parcel has been sent to a warehouse it is too late
   (409 naming ``status``), and a refund-only of every unit is a cancel (409: use
   ``POST /v1/orders/{id}/cancel``).

Every change is written to the order's timeline (kind ``return``) in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from domain import aftersale as rules
from domain.aftersale import ReturnKind, ReturnStatus
from domain.errors import ConflictError, ValidationError
from domain.orders import OrderStatus
from domain.tracking import ShipmentStatus
from models import Order, OrderLine, Product, Return, ReturnLine, Shipment
from models.logistics import RETURN
from services.followup import Followup
from services.order_state import lock_order
from services.parcel_planning import drop_units
from services.parcels import live_parcels
from services.return_receipt import line_shares_of, refunded_units, settle_refund
from services.return_state import lock_return, move_return, record_return
from services.stock import release_units
from services.task_names import SHIPPING_SUBSCRIBE

_SHIPPED_OR_LATER = frozenset(
    {OrderStatus.SHIPPED, OrderStatus.IN_TRANSIT, OrderStatus.PARTIALLY_DELIVERED,
     OrderStatus.DELIVERED, OrderStatus.RECEIPT_CONFIRMED}
)  # fmt: skip
_DELIVERED = frozenset({OrderStatus.DELIVERED, OrderStatus.RECEIPT_CONFIRMED})
_OPENS_AFTER: dict[ReturnKind, frozenset[OrderStatus]] = {
    ReturnKind.REFUND_ONLY: _SHIPPED_OR_LATER | {OrderStatus.PAID},
    ReturnKind.RETURN_AND_REFUND: _DELIVERED,
    ReturnKind.EXCHANGE: _DELIVERED,
}


@dataclass(frozen=True, slots=True)
class ReturnPolicy:
    """The after-sale settings a return is decided under (built from settings by the caller)."""

    window_s: int = 7 * 86_400  # AFTERSALE_WINDOW_S
    ship_back_s: int = 7 * 86_400  # RETURN_SHIP_BACK_S
    auto_approve_max: int | None = None  # RETURN_AUTO_APPROVE_MAX; None: an operator decides


@dataclass
class ReturnOutcome:
    """The return a call made or moved, and the tasks to publish after the commit."""

    return_id: int
    status: str
    followups: list[Followup] = field(default_factory=list)
    repeat: bool = False  # the same return_no asked again: nothing new was stored


def request_return(
    session: Session,
    order_id: str,
    *,
    kind: str,
    lines: Sequence[tuple[str, int]],
    reason: str,
    actor: str,
    policy: ReturnPolicy,
    now: datetime,
    return_no: str | None = None,
) -> ReturnOutcome:
    """Rules 1-5: store a return of ``lines`` (``(sku, quantity)``) on the order, approved
    at once when the policy allows. Raises ValidationError / ConflictError naming the field.

    ``return_no`` is the client's number for the request: the same number with the same kind
    and lines answers the stored return (``repeat``: a retry after a lost answer asks
    nothing twice); with others it is a 409 naming ``return_no``."""
    order = lock_order(session, order_id)
    k = _kind(kind)
    if return_no is not None and (same := _numbered(session, order_id, return_no, k, lines)):
        return same
    _check_open(order, k, policy, now)
    by_sku = _lines_by_sku(order)
    earlier = _earlier_lines(session, order_id)
    available = rules.returnable({sku: line.quantity for sku, line in by_sku.items()}, earlier)
    rules.check_request(list(lines), available, key_field="sku")
    shares = line_shares_of(order)
    before = refunded_units(session, order_id)
    amount = sum(
        rules.refund_for(shares[sku], by_sku[sku].quantity, before.get(sku, 0), qty)
        for sku, qty in lines
    )
    ret = Return(
        order_id=order_id, return_no=return_no, kind=k, status=ReturnStatus.REQUESTED,
        reason=reason[:200],
        requested_by=actor, currency=order.currency,
        lines=[ReturnLine(line_no=by_sku[sku].line_no, sku=sku, quantity=qty)
               for sku, qty in lines],
    )  # fmt: skip
    session.add(ret)
    session.flush()
    record_return(session, ret, None, actor, amount=amount, lines=dict(lines))
    flags, within = _product_terms(session, order, [sku for sku, _ in lines], policy, now)
    if rules.auto_approve(
        k, amount, flags, within_window=within, threshold=policy.auto_approve_max
    ):
        return _approve(session, order, ret, actor="policy", note="auto", policy=policy, now=now)
    return ReturnOutcome(ret.id, ret.status)


def decide(
    session: Session,
    return_id: int,
    *,
    approve: bool,
    actor: str,
    note: str,
    policy: ReturnPolicy,
    now: datetime,
) -> ReturnOutcome:
    """An operator approves or rejects a REQUESTED return (rule 5). Deciding the same way
    again answers where it stands; the other way is a 409 naming ``status``."""
    order, ret = lock_return(session, return_id)
    target = ReturnStatus.APPROVED if approve else ReturnStatus.REJECTED
    if ret.status != ReturnStatus.REQUESTED:
        rejected = ret.status == ReturnStatus.REJECTED
        if ret.decided_by is not None and rejected == (not approve):  # the same decision again
            return ReturnOutcome(ret.id, ret.status)
        raise ConflictError(f"return {return_id} is {ret.status}; it was decided already",
                            field="status")  # fmt: skip
    if not approve:
        move_return(session, ret, target, actor, note=note)
        ret.decided_by, ret.decision_note = actor, note[:200]
        return ReturnOutcome(ret.id, ret.status)
    return _approve(session, order, ret, actor=actor, note=note, policy=policy, now=now)


def register_parcel(
    session: Session,
    return_id: int,
    *,
    carrier: str,
    waybill: str,
    actor: str,
    now: datetime,
    first_poll_s: float,
) -> ReturnOutcome:
    """The buyer's return waybill (rule 6). The same waybill again is a no-op; another one, a
    waybill some parcel has already, or a return not awaiting its parcel, is a 409 naming
    ``waybill`` or ``status``. Returns the subscription to publish."""
    order, ret = lock_return(session, return_id)
    if ret.waybill is not None:
        if (ret.carrier, ret.waybill) == (carrier, waybill):
            return ReturnOutcome(ret.id, ret.status)
        raise ConflictError(f"return {return_id} was shipped back as {ret.waybill} already",
                            field="waybill")  # fmt: skip
    if ret.status != ReturnStatus.AWAITING_PARCEL:
        raise ConflictError(f"return {return_id} is {ret.status}; it is not awaiting a parcel",
                            field="status")  # fmt: skip
    taken = session.scalar(
        select(Shipment.id).where(Shipment.carrier == carrier, Shipment.waybill == waybill)
    )
    if taken is not None:
        raise ConflictError(f"waybill {carrier} {waybill} is another parcel's", field="waybill")
    ret.carrier, ret.waybill = carrier, waybill
    parcel = Shipment(
        order_id=order.id, booking_key=f"return-{ret.id}", status=ShipmentStatus.PENDING,
        carrier=carrier, waybill=waybill, direction=RETURN, return_id=ret.id,
        next_poll_at=now + timedelta(seconds=first_poll_s),
    )  # fmt: skip
    session.add(parcel)
    session.flush()
    record_return(session, ret, ret.status, actor, carrier=carrier, waybill=waybill,
                  shipment_id=parcel.id)  # fmt: skip
    return ReturnOutcome(ret.id, ret.status, [Followup(SHIPPING_SUBSCRIBE, parcel.id)])


def sweep_overdue(session: Session, *, now: datetime, limit: int) -> list[int]:
    """Close approved returns whose parcel was not shipped back by its deadline (rule 5);
    returns their ids. The candidates are read without a lock and each is then locked order
    first (:func:`lock_return`) and looked at again, so a waybill registered meanwhile wins and
    two sweeps at once close each return once."""
    due = session.scalars(
        select(Return.id)
        .where(
            Return.status == ReturnStatus.AWAITING_PARCEL,
            Return.waybill.is_(None),
            Return.parcel_due_at <= now,
        )
        .order_by(Return.parcel_due_at)
        .limit(limit)
    ).all()
    closed = []
    for return_id in due:
        _order, ret = lock_return(session, return_id)
        if ret.status == ReturnStatus.AWAITING_PARCEL and ret.waybill is None:
            move_return(session, ret, ReturnStatus.CLOSED, "sweeper",
                        note="not shipped back in time")  # fmt: skip
            closed.append(ret.id)
    return closed


# --- the parts ----------------------------------------------------------------------------------


def _numbered(
    session: Session,
    order_id: str,
    return_no: str,
    kind: ReturnKind,
    lines: Sequence[tuple[str, int]],
) -> ReturnOutcome | None:
    """The stored return of this number, if the request repeats it; ConflictError if the
    number was used for another request."""
    ret = session.scalars(
        select(Return).where(Return.order_id == order_id, Return.return_no == return_no)
    ).one_or_none()
    if ret is None:
        return None
    stored = sorted((line.sku, line.quantity) for line in ret.lines)
    if ret.kind != kind or stored != sorted(lines):
        raise ConflictError(f"return {return_no} was asked for with other lines or kind",
                            field="return_no")  # fmt: skip
    return ReturnOutcome(ret.id, ret.status, repeat=True)


def _kind(kind: str) -> ReturnKind:
    try:
        k = ReturnKind(kind)
    except ValueError:
        names = ", ".join(k.value for k in ReturnKind)
        raise ValidationError("kind", f"{kind!r} is not one of {names}") from None
    return k


def _check_open(order: Order, kind: ReturnKind, policy: ReturnPolicy, now: datetime) -> None:
    """Rule 1: the order's status admits this kind, and the window has not closed."""
    received = order.receipt_confirmed_at
    closed = order.status == OrderStatus.COMPLETED or (
        received is not None and not rules.within(now, rules.window_ends(received, policy.window_s))
    )
    if closed:
        raise ConflictError(f"order {order.id}'s after-sale window has closed", field="status")
    if order.status not in _OPENS_AFTER[kind]:
        need = "shipped" if kind == ReturnKind.REFUND_ONLY else "delivered"
        raise ConflictError(f"order {order.id} is {order.status}; a {kind} needs it {need}",
                            field="status")  # fmt: skip


def _lines_by_sku(order: Order) -> dict[str, OrderLine]:
    """The order's lines by SKU (intake keeps one line per SKU; the first wins otherwise)."""
    by_sku: dict[str, OrderLine] = {}
    for line in order.lines:
        by_sku.setdefault(line.sku, line)
    return by_sku


def _earlier_lines(session: Session, order_id: str) -> list[rules.EarlierLine[str]]:
    rows = session.execute(
        select(ReturnLine.sku, ReturnLine.quantity, Return.status, Return.received_at)
        .join(Return, Return.id == ReturnLine.return_id)
        .where(Return.order_id == order_id)
    ).all()
    return [rules.EarlierLine(sku, qty, ReturnStatus(status), received=at is not None)
            for sku, qty, status, at in rows]  # fmt: skip


def _product_terms(
    session: Session, order: Order, skus: list[str], policy: ReturnPolicy, now: datetime
) -> tuple[list[bool], bool]:
    """Each product's returnable flag, and whether every product's own window is still open."""
    rows = session.execute(
        select(Product.sku, Product.returnable, Product.return_window_s).where(
            Product.sku.in_(skus)
        )
    ).all()
    terms = {sku: (flag, window) for sku, flag, window in rows}
    flags = [terms.get(sku, (False, None))[0] for sku in skus]
    received = order.receipt_confirmed_at
    within = received is None or all(
        rules.within(
            now, rules.window_ends(received, window if window is not None else policy.window_s)
        )
        for _flag, window in terms.values()
    )
    return flags, within


def _approve(
    session: Session,
    order: Order,
    ret: Return,
    *,
    actor: str,
    note: str,
    policy: ReturnPolicy,
    now: datetime,
) -> ReturnOutcome:
    ret.decided_by, ret.decision_note, ret.approved_at = actor, note[:200], now
    move_return(session, ret, ReturnStatus.APPROVED, actor, note=note)
    if ret.kind == ReturnKind.REFUND_ONLY:
        units = {line.sku: line.quantity for line in ret.lines}
        if order.status == OrderStatus.PAID:
            _unship(session, order, ret, units, now=now)
        followups = settle_refund(session, order, ret, units, actor=actor, now=now)
        move_return(session, ret, ReturnStatus.REFUNDED, actor, amount=ret.refund_amount)
        return ReturnOutcome(ret.id, ret.status, followups)
    ret.parcel_due_at = rules.parcel_due(now, policy.ship_back_s)
    move_return(session, ret, ReturnStatus.AWAITING_PARCEL, actor,
          parcel_due_at=ret.parcel_due_at.isoformat())  # fmt: skip
    return ReturnOutcome(ret.id, ret.status)


def _unship(
    session: Session, order: Order, ret: Return, units: dict[str, int], *, now: datetime
) -> None:
    """Rule 7: the units of a refund-only return approved before shipping are not shipped."""
    parcels = live_parcels(session, order.id, lock=True)
    if any(p.booking_sent_at is not None for p in parcels):
        raise ConflictError(f"order {order.id} is being shipped; ask for a refund-only once it "
                            "has shipped, or cancel it", field="status")  # fmt: skip
    ordered = sum(line.quantity for line in order.lines)
    if sum(units.values()) + _earlier_unshipped(session, order.id) >= ordered:
        raise ConflictError(f"a refund-only of every unit of order {order.id} is a cancel: "
                            f"POST /v1/orders/{order.id}/cancel", field="status")  # fmt: skip
    taken = release_units(session, order.id, units, now=now, reason=f"return {ret.id}")
    drop_units(session, order.id, taken, now=now)


def _earlier_unshipped(session: Session, order_id: str) -> int:
    """Units earlier refund-only returns took off this order before it shipped."""
    rows = session.execute(
        select(ReturnLine.quantity)
        .join(Return, Return.id == ReturnLine.return_id)
        .where(Return.order_id == order_id, Return.kind == ReturnKind.REFUND_ONLY,
               Return.status == ReturnStatus.REFUNDED)
    ).scalars()  # fmt: skip
    return sum(rows)
