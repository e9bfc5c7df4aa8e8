"""A return arrives, and what it is worth (issue 22): receiving the parcel with a disposition per
line, the stock it puts back, and the line refund.

1. **Receiving** (:func:`receive`): the warehouse names, for every line of a return awaiting
   its parcel (or arrived: RECEIVED by its tracking, not inspected yet), how many units it
   restocks, found DAMAGED and never got (LOST); they must add up to the line's quantity
   (422 naming ``lines.<i>.<field>``). Restocked units go back on hand in ``warehouse``
   (default: the one the line shipped from) as ``return_restock`` ledger rows, damaged ones
   are ``write_off`` rows that change no counter, lost ones write nothing
   (:func:`domain.aftersale.ledger_kind`). The same receipt again answers where the return
   stands; a return not awaiting its parcel is a 409 naming ``status``.
2. **Settling** (:func:`domain.aftersale.after_receipt`): the units not LOST are settled; a
   return-and-refund with any is refunded for them (REFUNDED), an exchange gets them shipped
   again (:func:`services.exchange.reship`: RESHIPPED), or, when no warehouse has them now,
   refunded instead (REFUNDED); a return with none settled is CLOSED.
3. **The refund** (:func:`settle_refund`): each line refunds the settled units' part of its
   charged share (:func:`line_shares_of`, :func:`domain.aftersale.refund_for` over the units
   earlier returns refunded), the total cut down to what is left to refund of the capture
   (:func:`services.payments.refunds.refundable`: earlier refunds and cancellations count), and
   is requested through the same idempotent refund machinery as every refund, with the number
   ``return-<id>`` stored in this transaction: a crash after the commit sends it once, by the
   same number, whatever retries follow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from domain import aftersale as rules
from domain.aftersale import Disposition, ReturnKind, ReturnStatus
from domain.allocation import DEFAULT_POLICY, Policy
from domain.errors import ConflictError, ReservationRefused, ValidationError
from models import Order, OrderLine, Return, ReturnLine, Shipment, ShipmentLine
from models.logistics import OUTBOUND_ONLY
from services.exchange import reship
from services.followup import Followup
from services.payments.common import lock_payment
from services.payments.refunds import refundable, request_refund
from services.return_state import lock_return, move_return, record_return
from services.stock import Returned, receive_returned

#: What the warehouse found of one line: (restock, damaged, lost) units.
Found = tuple[int, int, int]


def line_shares_of(order: Order) -> dict[str, int]:
    """Each SKU's share of what the order was charged (first line of a SKU only, as returns
    name lines by SKU): the share stored on the line at reservation when the order had a
    discount, else worked out the same way (:func:`domain.aftersale.line_shares` of the total:
    the lines' list amounts unless the total is below them)."""
    first: dict[str, OrderLine] = {}
    for line in order.lines:  # line order: it breaks the shares' ties
        first.setdefault(line.sku, line)
    if all(line.charged_amount is not None for line in first.values()):
        return {sku: int(line.charged_amount or 0) for sku, line in first.items()}
    lines = [(line.sku, line.quantity, line.unit_amount or 0) for line in first.values()]
    return rules.line_shares(lines, order.total_amount)


def refunded_units(session: Session, order_id: str) -> dict[str, int]:
    """Units of each SKU that earlier REFUNDED returns paid back: a received line's restocked
    and damaged units, a refund-only line's whole quantity."""
    settled = case(
        (ReturnLine.restocked + ReturnLine.damaged + ReturnLine.lost == 0, ReturnLine.quantity),
        else_=ReturnLine.restocked + ReturnLine.damaged,
    )
    rows = session.execute(
        select(ReturnLine.sku, func.sum(settled))
        .join(Return, Return.id == ReturnLine.return_id)
        .where(Return.order_id == order_id, Return.status == ReturnStatus.REFUNDED)
        .group_by(ReturnLine.sku)
    ).all()
    return {sku: int(units) for sku, units in rows}


def settle_refund(
    session: Session,
    order: Order,
    ret: Return,
    units: Mapping[str, int],
    *,
    actor: str,
    now: datetime,
) -> list[Followup]:
    """Rule 3: request the refund of ``units`` (by SKU) of the locked return ``ret``; stores
    each line's amount and the return's total. Returns the refund task (none when nothing is
    left to refund)."""
    shares, before = line_shares_of(order), refunded_units(session, order.id)
    quantity = {line.sku: line.quantity for line in reversed(order.lines)}
    total = 0
    for line in ret.lines:
        n = units.get(line.sku, 0)
        line.refund_amount = rules.refund_for(shares[line.sku], quantity[line.sku],
                                              before.get(line.sku, 0), n)  # fmt: skip
        total += line.refund_amount
    payment = lock_payment(session, order.id)
    left = refundable(session, payment) if payment is not None else 0
    ret.refund_amount = rules.cap_refund(total, left, 0, clamp=True)
    if payment is None or ret.refund_amount == 0:
        return []
    ret.refund_no = f"return-{ret.id}"
    followup = request_refund(
        session, order, payment, amount=ret.refund_amount, refund_no=ret.refund_no,
        reason=f"return {ret.id}: {ret.reason}", actor=actor, now=now,
    )  # fmt: skip
    return [followup] if followup is not None else []


def receive(
    session: Session,
    return_id: int,
    found: Sequence[tuple[str, Found]],
    *,
    warehouse: str | None,
    default_warehouse: str,
    actor: str,
    now: datetime,
    allocation: Policy = DEFAULT_POLICY,
    redrive_s: int = 30,
) -> tuple[str, list[Followup]]:
    """Rules 1-3: the warehouse's receipt of a return; returns its status after it and the
    refund or booking task to publish after the commit. ``allocation`` and ``redrive_s`` are
    an exchange's (:func:`services.exchange.reship`)."""
    order, ret = lock_return(session, return_id)
    if any(line.restocked + line.damaged + line.lost for line in ret.lines):
        return ret.status, []  # inspected already: the same receipt again
    if ret.status not in (ReturnStatus.AWAITING_PARCEL, ReturnStatus.RECEIVED):
        raise ConflictError(f"return {return_id} is {ret.status}; it is not awaiting a parcel",
                            field="status")  # fmt: skip
    by_sku = _check_found(ret, found)
    ret.warehouse = warehouse
    rows = []
    for line in ret.lines:
        line.restocked, line.damaged, line.lost = by_sku[line.sku]
        where = warehouse or _shipped_from(session, order.id, line.sku) or default_warehouse
        rows += _ledger_rows(line, where)
    receive_returned(session, order.id, rows, actor=actor, reason=f"return {ret.id}")
    found_detail = {sku: list(f) for sku, f in by_sku.items()}
    if ret.status == ReturnStatus.AWAITING_PARCEL:  # not seen arriving by tracking
        ret.received_at = now
        move_return(session, ret, ReturnStatus.RECEIVED, actor, found=found_detail)
    else:
        record_return(session, ret, ret.status, actor, found=found_detail)
    settled = rules.settled_units(
        (line.sku, d, n) for line in ret.lines
        for d, n in ((Disposition.RESTOCK, line.restocked), (Disposition.DAMAGED, line.damaged))
    )  # fmt: skip
    target = rules.after_receipt(ReturnKind(ret.kind), sum(settled.values()))
    if target == ReturnStatus.CLOSED:
        move_return(session, ret, target, actor, note="nothing arrived to settle")
        return ret.status, []
    if target == ReturnStatus.RESHIPPED:
        try:
            with session.begin_nested():  # a refused reservation leaves nothing behind
                followups = reship(session, order, ret, settled, now=now, policy=allocation,
                                   redrive_s=redrive_s, actor=actor)  # fmt: skip
        except ReservationRefused as exc:
            note = f"no replacement in stock ({exc.detail}): refunded instead"
            followups = settle_refund(session, order, ret, settled, actor=actor, now=now)
            move_return(session, ret, ReturnStatus.REFUNDED, actor, amount=ret.refund_amount,
                        note=note)  # fmt: skip
            return ret.status, followups
        move_return(session, ret, target, actor, lines=settled)
        return ret.status, followups
    followups = settle_refund(session, order, ret, settled, actor=actor, now=now)
    move_return(session, ret, target, actor, amount=ret.refund_amount)
    return ret.status, followups


def _check_found(ret: Return, found: Sequence[tuple[str, Found]]) -> dict[str, Found]:
    """Every line of the return named once, its three counts adding up to its quantity."""
    quantity = {line.sku: line.quantity for line in ret.lines}
    by_sku: dict[str, Found] = {}
    for i, (sku, counts) in enumerate(found):
        if sku not in quantity:
            raise ValidationError(f"lines.{i}.sku", f"{sku!r} is not a line of this return")
        if sku in by_sku:
            raise ValidationError(f"lines.{i}.sku", f"{sku!r} is named twice")
        if any(n < 0 for n in counts) or sum(counts) != quantity[sku]:
            raise ValidationError(
                f"lines.{i}.restock",
                f"restock + damaged + lost must be the {quantity[sku]} unit(s) returned",
            )
        by_sku[sku] = counts
    missing = [sku for sku in quantity if sku not in by_sku]
    if missing:
        raise ValidationError("lines", f"every line of the return must be named; missing {missing}")
    return by_sku


def _ledger_rows(line: ReturnLine, warehouse: str) -> list[Returned]:
    rows = []
    for disposition, units in ((Disposition.RESTOCK, line.restocked),
                               (Disposition.DAMAGED, line.damaged)):  # fmt: skip
        kind = rules.ledger_kind(disposition)
        if units and kind is not None:
            delta = rules.on_hand_delta(disposition, units)
            rows.append(Returned(line.sku, warehouse, kind, delta, units))
    return rows


def _shipped_from(session: Session, order_id: str, sku: str) -> str | None:
    """The warehouse whose parcel carried ``sku`` to the buyer (the first, if several did)."""
    return session.scalar(
        select(Shipment.warehouse)
        .join(ShipmentLine, ShipmentLine.shipment_id == Shipment.id)
        .where(
            Shipment.order_id == order_id,
            ShipmentLine.sku == sku,
            Shipment.waybill.is_not(None),
            OUTBOUND_ONLY,
        )
        .order_by(Shipment.seq)
        .limit(1)
    )
