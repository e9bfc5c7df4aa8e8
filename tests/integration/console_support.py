"""Helpers of the console's integration tests (test_console_operating.py): rows written as the
pipeline leaves them, a replay through the console, and pieces of a page."""

from __future__ import annotations

import uuid

from sqlalchemy import text

from producers.intake import accept_message
from services import dead_letters
from services.unit_of_work import unit_of_work
from tests.conftest import order_message
from tests.console_helpers import csrf_of


def new_order(external_id: str | None = None, sku: str = "SKU-1") -> str:
    return accept_message(order_message(sku, external_id=external_id), channel="test").order_id


def dead_letter(order_id: str | None, task: str = "payments.create") -> int:
    with unit_of_work() as s:
        return dead_letters.record(
            s, task_name=task, task_id="t-1", args=[order_id] if order_id else [], kwargs={},
            queue="payments", error=RuntimeError("provider down"), attempts=4, order_id=order_id,
        )  # fmt: skip


def plan_of(sql: str) -> str:
    with unit_of_work() as s:
        return "\n".join(s.execute(text(f"EXPLAIN {sql}")).scalars().all())


def add_order(
    *, status: str = "RECEIVED", reason: str | None = None, source: str = "web",
    provider: str = "alipay", ago_s: float = 0, total: int = 6900, currency: str = "CNY",
    external_id: str | None = None,
) -> str:  # fmt: skip
    """An order row as the pipeline leaves it, received ``ago_s`` seconds ago."""
    order_id = str(uuid.uuid4())
    with unit_of_work() as s:
        s.execute(text(
            "INSERT INTO orders (id, source, external_id, body_hash, status, reason, currency, "
            "total_amount, payment_provider, shipping_address, created_at, updated_at) "
            "VALUES (:id, :source, :ext, 'h', :status, :reason, :currency, :total, :provider, "
            "'{}'::jsonb, now() - make_interval(secs => :ago), now() - make_interval(secs => :ago))"
        ), {"id": order_id, "source": source, "ext": external_id or f"ext-{order_id[:8]}",
            "status": status, "reason": reason, "currency": currency, "total": total,
            "provider": provider, "ago": ago_s})  # fmt: skip
    return order_id


def transition(order_id: str, frm: str | None, to: str, *, ago_s: float) -> None:
    with unit_of_work() as s:
        s.execute(text(
            "INSERT INTO order_events (order_id, kind, from_status, to_status, actor, created_at) "
            "VALUES (:o, 'transition', :f, :t, 'system', now() - make_interval(secs => :ago))"
        ), {"o": order_id, "f": frm, "t": to, "ago": ago_s})  # fmt: skip


def replay(client, dl_id: int, action: str = "replay") -> str:
    """Replay (or ``action``) a dead letter through the console; returns where the redirect
    leads."""
    token = csrf_of(client.get("/console/attention").text)
    r = client.post(f"/console/actions/dead-letters/{dl_id}/{action}", data={"csrf": token})
    assert r.status_code == 303, r.text
    return r.headers["location"]


def row_of(table: str, needle: str) -> str:
    """The table row (``<tr>`` to ``</tr>``) that holds ``needle``."""
    return next(row for row in table.split("<tr>") if needle in row).split("</tr>")[0]


def section(html: str, element_id: str) -> str:
    """The markup of the element with ``element_id`` up to its section's end."""
    start = html.index(f'id="{element_id}"')
    end = html.find("</section>", start)
    return html[start : end if end != -1 else len(html)]


def seed_rare_orders(n: int) -> None:
    """``n`` orders a minute apart, analysed; rare ones: NEEDS_ATTENTION with the reason
    ``amount_mismatch`` (1 in 97), source ``erp`` (1 in 89), provider ``stripe`` (1 in 83)."""
    with unit_of_work() as s:
        s.execute(text(
            "INSERT INTO orders (id, source, external_id, body_hash, status, reason, currency, "
            "total_amount, payment_provider, shipping_address, created_at, updated_at) "
            "SELECT 'o-' || g, CASE WHEN g % 89 = 0 THEN 'erp' ELSE 'web' END, 'e-' || g, 'h', "
            "CASE WHEN g % 97 = 0 THEN 'NEEDS_ATTENTION' ELSE 'COMPLETED' END, "
            "CASE WHEN g % 97 = 0 THEN 'amount_mismatch' END, 'CNY', 100, "
            "CASE WHEN g % 83 = 0 THEN 'stripe' ELSE 'alipay' END, '{}'::jsonb, "
            "now() - g * interval '1 minute', now() FROM generate_series(1, :n) g"
        ), {"n": n})  # fmt: skip
        s.execute(text("ANALYZE orders"))


def seed_endpoints() -> None:
    """Four callback endpoints: ``shop-a`` paused an hour ago after 8 failures, with held
    deliveries 50 and 5 minutes old; ``shop-b`` failing (2), one pending delivery 12 minutes
    old and an old delivered one; ``shop-c`` healthy (one delivered); ``shop-d`` inactive."""
    with unit_of_work() as s:
        s.execute(text(
            "INSERT INTO callback_endpoints (source, url, secret, active, paused_at, "
            "consecutive_failures) VALUES "
            "('shop-a', 'https://a.example/cb', 's', true, now() - interval '1 hour', 8), "
            "('shop-b', 'https://b.example/cb', 's', true, NULL, 2), "
            "('shop-c', 'https://c.example/cb', 's', true, NULL, 0), "
            "('shop-d', 'https://d.example/cb', 's', false, NULL, 0)"))  # fmt: skip
        for source, status, minutes in (("shop-a", "PAUSED", 50), ("shop-a", "PAUSED", 5),
                                        ("shop-b", "PENDING", 12), ("shop-b", "DELIVERED", 300),
                                        ("shop-c", "DELIVERED", 1)):  # fmt: skip
            s.execute(text(
                "INSERT INTO callback_deliveries (event_id, endpoint_id, order_id, event_type, "
                "payload, status, created_at) SELECT gen_random_uuid(), id, 'o', 'order.status', "
                "'{}'::jsonb, :status, now() - make_interval(mins => :m) "
                "FROM callback_endpoints WHERE source = :source"
            ), {"source": source, "status": status, "m": minutes})  # fmt: skip
