"""The invariant checker run after every reliability scenario.

It reads PostgreSQL and, when the scenario ran the provider simulators, their ledgers (the
providers' own record of the money), and checks what must hold whatever was injected:

* **no accepted order lost** — every id the API (or producer) acknowledged is a row;
* **no order charged twice** — each trade was charged at most once at the provider, and every
  charge belongs to a payment we recorded as paid (money taken is never unaccounted for);
* **no stock reserved or released twice** (:func:`ledger_violations`) — per (order, sku,
  warehouse), walking the ledger rows in id order, ``reserve`` and its end (``release``, or
  ``ship`` when the parcel left) alternate, starting with ``reserve``, and the units reserved
  less those released and shipped equal what the ACTIVE reservations hold. Re-allocation may
  reserve an order's lines again at a warehouse it released them at before (a refused parcel,
  an operator's retry): that alternates and passes; a second ``reserve`` before the first
  ended, or a ``release`` of nothing held, is caught. A ``release_part`` (units a refund-only
  return took off before shipping) must fall inside a held reservation and ends nothing;
* **stock counters equal the ledger** — ``stock_drift`` is empty, nothing negative, and
  ``reserved`` equals the sum of ACTIVE reservations;
* **every order final or explicitly waiting** — an order not in a final status has a deadline
  (``stage_deadline`` or ``payment_deadline``, or for a delivered or received one the moment
  the receipt sweep counts from) at which the sweeper acts, or is NEEDS_ATTENTION (waiting for
  an operator, with the reason recorded);
* **after-sale adds up** (:data:`_AFTERSALE_CHECKS`) — the units every return holds on a line
  never exceed the line; no payment's refunds (all but FAILED ones) exceed what it captured;
  the restocked units of received returns equal the ``return_restock`` ledger rows of the order
  and SKU, and the damaged ones the ``write_off`` rows.

:func:`check` raises ``AssertionError`` listing every violation, and returns the counts that the
scenario records as its figures.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import text

from domain.orders import FINAL_STATUSES
from services.unit_of_work import unit_of_work
from tests.helpers import assert_stock_consistent, status_counts

_ORDER_MOVEMENTS = """
    SELECT order_id, sku, warehouse, kind, delta_reserved FROM stock_movements
    WHERE kind IN ('reserve', 'release', 'release_part', 'ship') AND order_id IS NOT NULL
    ORDER BY id
"""
_ACTIVE_HELD = """
    SELECT order_id, sku, warehouse, sum(quantity) FROM reservations
    WHERE status = 'ACTIVE' GROUP BY order_id, sku, warehouse
"""
Key = tuple[str, str, str]  # (order, sku, warehouse)
_WAITING_WITHOUT_DEADLINE = """
    SELECT id, status FROM orders
    WHERE status <> ALL(:final) AND status <> 'NEEDS_ATTENTION'
      AND stage_deadline IS NULL AND payment_deadline IS NULL
      AND NOT (status = 'DELIVERED' AND delivered_at IS NOT NULL)
      AND NOT (status = 'RECEIPT_CONFIRMED' AND receipt_confirmed_at IS NOT NULL)
"""
#: Each query returns the rows that break one after-sale rule (none when all is well).
_AFTERSALE_CHECKS = {
    "returns hold more units than the line": """
        SELECT r.order_id, rl.sku, sum(rl.quantity), min(ol.quantity)
        FROM return_lines rl JOIN returns r ON r.id = rl.return_id
        JOIN order_lines ol ON ol.order_id = r.order_id AND ol.sku = rl.sku
        WHERE r.status <> 'REJECTED' AND NOT (r.status = 'CLOSED' AND r.received_at IS NULL)
        GROUP BY r.order_id, rl.sku HAVING sum(rl.quantity) > min(ol.quantity)""",
    "refunds exceed the capture": """
        SELECT p.id, coalesce(p.captured_amount, p.amount), sum(f.amount)
        FROM payments p JOIN refunds f ON f.payment_id = p.id AND f.status <> 'FAILED'
        GROUP BY p.id HAVING sum(f.amount) > coalesce(p.captured_amount, p.amount)""",
    "returned units differ from the ledger": """
        WITH found AS (
            SELECT r.order_id, rl.sku, sum(rl.restocked) AS restocked, sum(rl.damaged) AS damaged
            FROM return_lines rl JOIN returns r ON r.id = rl.return_id
            WHERE r.received_at IS NOT NULL GROUP BY r.order_id, rl.sku),
        booked AS (
            SELECT order_id, sku, count(*) FILTER (WHERE kind = 'write_off') AS write_offs,
                coalesce(sum(delta_on_hand) FILTER (WHERE kind = 'return_restock'), 0) AS restocked
            FROM stock_movements WHERE kind IN ('return_restock', 'write_off')
            GROUP BY order_id, sku)
        SELECT coalesce(f.order_id, b.order_id), coalesce(f.sku, b.sku), f.restocked, b.restocked
        FROM found f FULL JOIN booked b ON b.order_id = f.order_id AND b.sku = f.sku
        WHERE coalesce(f.restocked, 0) <> coalesce(b.restocked, 0)
           OR (coalesce(f.damaged, 0) > 0) <> (coalesce(b.write_offs, 0) > 0)""",
}
_NEEDS_ATTENTION_WITHOUT_REASON = """
    SELECT id FROM orders WHERE status = 'NEEDS_ATTENTION' AND coalesce(reason, '') = ''
"""
_PAID_TRADES = """
    SELECT provider, out_trade_no FROM payments WHERE paid_at IS NOT NULL
"""


def ledger_violations(
    rows: Iterable[tuple[str, str, str, str, int]], active: Mapping[Key, int]
) -> list[str]:
    """What is wrong in an order's ledger: ``rows`` are (order, sku, warehouse, kind,
    delta_reserved) in id order (kinds ``reserve``, ``release``, ``ship``), ``active`` the
    units the ACTIVE reservations hold per key. See the module docstring."""
    holding: dict[Key, bool] = {}
    net: dict[Key, int] = {}
    problems: list[str] = []
    for order_id, sku, warehouse, kind, delta in rows:
        key = (order_id, sku, warehouse)
        net[key] = net.get(key, 0) + delta
        held = holding.get(key, False)
        if kind == "release_part":  # part of a reservation given back: the rest is still held
            if not held:
                problems.append(f"{key}: release_part with nothing reserved")
            continue
        if kind == "reserve" and held:
            problems.append(f"{key}: reserved twice (a second reserve before a release or ship)")
        elif kind != "reserve" and not held:
            problems.append(f"{key}: {kind} with nothing reserved (released or shipped twice)")
        holding[key] = kind == "reserve"
    for key in sorted(set(net) | set(active)):
        if net.get(key, 0) != active.get(key, 0):
            problems.append(
                f"{key}: ledger holds {net.get(key, 0)}, ACTIVE reservations {active.get(key, 0)}"
            )
    return problems


def check(accepted: Iterable[str], stack: Any = None) -> dict[str, Any]:
    """Check every invariant; raise AssertionError naming each violation, else return counts.

    ``accepted`` is every order id the system acknowledged during the scenario; ``stack`` is the
    :class:`simulators.stack.ProviderStack` if providers took part.
    """
    accepted = set(accepted)
    problems: list[str] = []
    with unit_of_work() as s:
        rows = s.execute(text("SELECT id FROM orders")).scalars().all()
        lost = accepted - set(rows)
        if lost:
            problems.append(f"{len(lost)} accepted orders lost, e.g. {sorted(lost)[:3]}")
        moves = [(o, k, w, kind, int(d)) for o, k, w, kind, d in s.execute(text(_ORDER_MOVEMENTS))]
        active = {(o, k, w): int(q) for o, k, w, q in s.execute(text(_ACTIVE_HELD))}
        doubled = ledger_violations(moves, active)
        if doubled:
            problems.append(f"stock moved twice for one order: {doubled[:3]}")
        final = [str(x) for x in FINAL_STATUSES]
        stuck = s.execute(text(_WAITING_WITHOUT_DEADLINE), {"final": final}).all()
        if stuck:
            problems.append(f"{len(stuck)} orders waiting with no deadline: {stuck[:3]}")
        silent = s.execute(text(_NEEDS_ATTENTION_WITHOUT_REASON)).scalars().all()
        if silent:
            problems.append(f"{len(silent)} orders need attention with no reason: {silent[:3]}")
        paid_trades = {(p, t) for p, t in s.execute(text(_PAID_TRADES)).all()}
        for rule, query in _AFTERSALE_CHECKS.items():
            broken = s.execute(text(query)).all()
            if broken:
                problems.append(f"{rule}: {[tuple(r) for r in broken[:3]]}")
    charges_total = charged_twice = 0
    if stack is not None:
        charges = stack.charges()
        charges_total = sum(charges.values())
        twice = {k: n for k, n in charges.items() if n > 1}
        charged_twice = len(twice)
        if twice:
            problems.append(f"{len(twice)} trades charged more than once: {list(twice)[:3]}")
        unrecorded = set(charges) - paid_trades
        if unrecorded:
            example = sorted(unrecorded)[:3]
            problems.append(f"{len(unrecorded)} charges with no paid payment: {example}")
    try:
        assert_stock_consistent()
    except AssertionError as exc:
        problems.append(f"stock counters differ from the ledger: {exc}")
    assert not problems, "invariants violated:\n  " + "\n  ".join(problems)
    return {
        "accepted": len(accepted),
        "lost": len(lost),
        "charged_twice": charged_twice,
        "charges": charges_total,
        "stock_moved_twice": len(doubled),
        "statuses": status_counts(),
    }
