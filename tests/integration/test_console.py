"""The ops console against real PostgreSQL and Redis: login and the session cookie, every page's
content, the dead letter actions (through the CLI's services, with the actor on the timeline),
refusals (no session, wrong key, tampered cookie, missing CSRF token), and render times with
100,000 orders (inserted with generate_series) plus EXPLAIN of the indexed lookups.
"""

from __future__ import annotations

import re
import secrets
import time
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select, text, update

from adapters.circuit import breaker_for
from api.catalog import admin_api_key_setting
from api.console_auth import COOKIE, fingerprint
from api.console_pages import forget_charts
from models import DeadLetter, Order, OrderEvent
from services import timeline
from services.unit_of_work import unit_of_work
from tests.conftest import redis_client
from tests.console_helpers import csrf_of
from tests.integration.console_support import dead_letter, new_order, section

PAGES = ["/console/pipeline", "/console/pipeline/live", "/console/attention", "/console/stock",
         "/console/search?q=x", "/console/orders/some-id"]  # fmt: skip
ACTIONS = ["/console/actions/dead-letters/1/replay", "/console/actions/dead-letters/1/discard",
           "/console/actions/reconcile", "/console/logout"]  # fmt: skip


@pytest.fixture
def admin_key() -> str:
    return f"adm-{secrets.token_urlsafe(24)}"


@pytest.fixture
def app(admin_key):
    from api.app import create_app

    app = create_app()
    app.dependency_overrides[admin_api_key_setting] = lambda: SecretStr(admin_key)
    return app


@pytest.fixture
def anon(db, app):
    with TestClient(app, follow_redirects=False) as c:
        yield c


@pytest.fixture
def client(anon, admin_key):
    r = anon.post("/console/login", data={"password": admin_key, "next": "/console/pipeline"})
    assert r.status_code == 303 and r.headers["location"] == "/console/pipeline"
    return anon


def set_status(order_id: str, status: str, reason: str | None = None) -> None:
    with unit_of_work() as s:
        s.execute(update(Order).where(Order.id == order_id).values(status=status, reason=reason))


def events(order_id: str, kind: str) -> list[tuple[dict, str]]:
    """``(detail, actor)`` of the order's timeline rows of ``kind``, oldest first."""
    with unit_of_work() as s:
        rows = s.execute(
            select(OrderEvent.detail, OrderEvent.actor)
            .where(OrderEvent.order_id == order_id, OrderEvent.kind == kind)
            .order_by(OrderEvent.id)
        )
        return [(d or {}, a) for d, a in rows]


# --- authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", PAGES)
def test_pages_without_a_session_go_to_login(anon, path):
    r = anon.get(path)
    if path.endswith("/live"):
        assert r.status_code == 401
    else:
        assert r.status_code == 303 and r.headers["location"].startswith("/console/login?next=")


@pytest.mark.parametrize("path", ACTIONS)
def test_actions_without_a_session_are_refused(anon, path):
    dl_id = dead_letter(None)
    r = anon.post(path.replace("/1/", f"/{dl_id}/"), data={"csrf": "x"})
    assert r.status_code == 403
    with unit_of_work() as s:
        assert s.get(DeadLetter, dl_id).status == "OPEN"


def test_wrong_key_is_refused_and_sets_no_cookie(anon, admin_key):
    r = anon.post("/console/login", data={"password": admin_key + "x"})
    assert r.status_code == 401 and "not the admin key" in r.text
    assert COOKIE not in r.cookies and COOKIE not in anon.cookies
    assert anon.get("/console/pipeline").status_code == 303


def test_no_admin_key_configured_refuses_the_key_login(db, app):
    app.dependency_overrides[admin_api_key_setting] = lambda: None
    with TestClient(app, follow_redirects=False) as c:
        assert c.post("/console/login", data={"password": ""}).status_code == 401
        assert c.post("/console/login", data={"password": "None"}).status_code == 401


def test_session_cookie_flags_and_tampering(client, admin_key):
    raw = client.cookies.get(COOKIE)
    assert admin_key not in raw
    r = client.post("/console/logout", data={"csrf": "wrong"})
    assert r.status_code == 403
    client.cookies.set(COOKIE, raw[:-2] + ("AA" if not raw.endswith("AA") else "BB"),
                       path="/console")  # fmt: skip
    assert client.get("/console/pipeline").status_code == 303


def test_login_cookie_attributes(anon, admin_key):
    r = anon.post("/console/login", data={"password": admin_key, "next": "https://evil/"})
    assert r.headers["location"] == "/console/pipeline"  # no open redirect
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
    assert "max-age=" in cookie


def test_rotating_the_admin_key_ends_sessions(client, app):
    app.dependency_overrides[admin_api_key_setting] = lambda: SecretStr("another-key-entirely")
    assert client.get("/console/pipeline").status_code == 303


def test_post_without_csrf_token_is_refused(client):
    dl_id = dead_letter(None)
    assert client.post(f"/console/actions/dead-letters/{dl_id}/replay").status_code == 403
    assert client.post(f"/console/actions/dead-letters/{dl_id}/discard", data={}).status_code == 403
    with unit_of_work() as s:
        assert s.get(DeadLetter, dl_id).status == "OPEN"


def test_logout(client):
    token = csrf_of(client.get("/console/pipeline").text)
    r = client.post("/console/logout", data={"csrf": token})
    assert r.status_code == 303
    assert client.get("/console/pipeline").status_code == 303


# --- pages -----------------------------------------------------------------------------------


def test_pipeline_shows_funnel_throughput_and_oldest(client):
    ids = [new_order() for _ in range(3)]
    set_status(ids[0], "PAID")
    with unit_of_work() as s:
        timeline.record(s, ids[0], "transition", from_status="RECEIVED", to_status="RESERVED")
        s.execute(update(Order).where(Order.id == ids[1])
                  .values(stage_deadline=datetime.now(UTC) - timedelta(minutes=5)))  # fmt: skip
    r = client.get("/console/pipeline")
    assert r.status_code == 200
    html = r.text
    assert re.search(r"tone-wait\">RECEIVED</span></th><td class=\"num\">2</td>", html)
    assert re.search(r"tone-wait\">PAID</span></th><td class=\"num\">1</td>", html)
    assert "3 orders" in html
    assert re.search(r"<td>RECEIVED</td><td><span class=\"status tone-wait\">RESERVED</span></td>"
                     r"<td class=\"num\">1</td>", html)  # fmt: skip
    assert f'/console/orders/{ids[1]}">{ids[1]}</a>' in html and "overdue" in html
    assert "Content-Security-Policy" in r.headers and r.headers["cache-control"] == "no-store"
    live = client.get("/console/pipeline/live")
    assert live.status_code == 200 and "<html" not in live.text and "3 orders" in live.text


def test_order_page_shows_the_whole_timeline(client):
    oid = new_order(external_id="EXT-42")
    # The task context as OrderflowTask.__call__ sets it while a task runs.
    token = timeline.task_context.set({"name": "orders.process", "worker": "w1@host",
                                       "retries": 2})  # fmt: skip
    try:
        with unit_of_work() as s:
            timeline.record(s, oid, "transition", from_status="RECEIVED", to_status="RESERVED")
    finally:
        timeline.task_context.reset(token)
    with unit_of_work() as s:
        timeline.record(s, oid, "provider_call", detail={
            "provider": "alipay", "operation": "create", "outcome": "ok",
            "request": {"out_trade_no": "T1", "buyer_phone": "***"}})  # fmt: skip
    dl_id = dead_letter(oid)
    r = client.get(f"/console/orders/{oid}")
    assert r.status_code == 200
    html = r.text
    assert f'id="order-id" class="id">{oid}</code>' in html and "EXT-42" in html
    assert "orders.process on w1@host (retries 2)" in html
    assert "provider_call" in html and '"buyer_phone": "***"' in html
    assert "dead_letter" in html and f'id="replay-{dl_id}"' in html


def test_search_by_order_id_external_id_and_waybill(client):
    oid = new_order(external_id="EXT-SEARCH-1")
    with unit_of_work() as s:
        s.execute(text(
            "INSERT INTO shipments (order_id, booking_key, carrier, waybill, status) "
            "VALUES (:o, 'bk-1', 'yuantong', 'YT123456789', 'PENDING')"), {"o": oid})  # fmt: skip
    for q in (oid, "EXT-SEARCH-1", "YT123456789", f"  {oid} "):
        r = client.get("/console/search", params={"q": q})
        assert r.status_code == 303 and r.headers["location"] == f"/console/orders/{oid}", q
    r = client.get("/console/search", params={"q": "nothing-like-this"})
    assert r.status_code == 404 and "No order matches" in r.text
    assert "YT123456789" in client.get(f"/console/orders/{oid}").text


def test_search_escapes_what_it_shows(client):
    r = client.get("/console/search", params={"q": "<script>alert(1)</script>"})
    assert "<script>alert(1)" not in r.text and "&lt;script&gt;" in r.text


def test_attention_lists_orders_dead_letters_circuits_and_stale(client):
    oid = new_order()
    set_status(oid, "NEEDS_ATTENTION", "amount_mismatch")
    dl_id = dead_letter(oid)
    with unit_of_work() as s:
        s.execute(text(
            "INSERT INTO shipments (order_id, booking_key, carrier, waybill, status, created_at) "
            "VALUES (:o, 'bk-2', 'yuantong', 'YT-STALE', 'IN_TRANSIT', now() - interval '10 days')"
        ), {"o": oid})  # fmt: skip
    breaker = breaker_for(redis_client(), "stripe")
    redis_client().set("circuit:stripe:open", "1", px=30_000)
    assert not breaker.allow()
    html = client.get("/console/attention").text
    assert 'id="na-count">1<' in html and "amount_mismatch" in html
    assert f'id="dl-{dl_id}"' in html and "RuntimeError: provider down" in html
    assert 'id="circuits"' in html and "<td>stripe</td>" in html
    assert 'id="stale"' in html and oid in html
    assert 'data-confirm="Replay dead letter' in html and 'id="reconcile"' in html


def test_attention_lists_a_flagged_payment_and_the_order_shows_what_was_captured(client):
    oid = new_order()
    set_status(oid, "CANCELLED", "cancelled")
    flag = "0.01 CNY paid after the order was cancelled (it asked 20.00 CNY); refunded in full"
    with unit_of_work() as s:
        s.execute(text(
            "INSERT INTO payments (order_id, provider, out_trade_no, idempotency_key, amount, "
            "currency, status, captured_amount, captured_currency, attention) VALUES (:o, "
            "'alipay', 'T-1', 'k-1', 2000, 'CNY', 'REFUNDED', 1, 'CNY', :flag)"
        ), {"o": oid, "flag": flag})  # fmt: skip
    html = client.get("/console/attention").text
    row = section(html, "flagged-payments")
    assert oid in row and flag in row and "CANCELLED" in row
    page = client.get(f"/console/orders/{oid}").text
    assert 'id="captured" class="tone-bad">0.01 CNY<' in page and flag in page
    with unit_of_work() as s:
        s.execute(text("UPDATE payments SET attention = NULL"))
    assert 'id="no-flagged-payments"' in client.get("/console/attention").text


def test_replay_and_discard_go_through_the_dead_letter_service(client, admin_key):
    oid = new_order()
    replay_id, discard_id = dead_letter(oid), dead_letter(oid, task="shipping.book")
    token = csrf_of(client.get("/console/attention").text)
    r = client.post(f"/console/actions/dead-letters/{replay_id}/replay", data={"csrf": token})
    assert r.status_code == 303 and "done=" in r.headers["location"]
    page = client.get(r.headers["location"]).text
    assert f"dead letter {replay_id}: replay published (task payments.create)" in page
    assert f'id="dl-{replay_id}"' not in page and f'id="dl-{discard_id}"' in page
    r = client.post(f"/console/actions/dead-letters/{discard_id}/discard", data={"csrf": token})
    assert r.status_code == 303
    with unit_of_work() as s:
        assert s.get(DeadLetter, replay_id).status == "REPLAYED"
        assert s.get(DeadLetter, discard_id).status == "DISCARDED"
    actor = f"admin-key:{fingerprint(SecretStr(admin_key))}"
    actions = events(oid, "console_action")
    assert [(d["action"], a) for d, a in actions] == [("dlq_replay", actor), ("dlq_discard", actor)]
    assert all(admin_key not in str(d) for d, _ in actions)
    assert [a for _, a in events(oid, "dlq_replayed")] == [actor]
    # The replayed task was published to the broker (the CLI's enqueue).
    queued = [k for k in redis_client().keys("*") if b"payments" in k]
    assert queued, "replay published nothing"
    page = client.get(f"/console/orders/{oid}").text
    assert "console_action" in page and actor in page
    # A second replay is refused by the service and shown, not a 500.
    r = client.post(f"/console/actions/dead-letters/{replay_id}/replay", data={"csrf": token})
    assert "error=" in r.headers["location"]
    assert "already replayed" in client.get(r.headers["location"]).text


def test_reconcile_action_runs_the_cli_reconcile(client):
    token = csrf_of(client.get("/console/attention").text)
    r = client.post("/console/actions/reconcile", data={"csrf": token})
    assert r.status_code == 303
    assert (
        "payments reconcile: checked 0, fixed 0, unresolved 0"
        in client.get(r.headers["location"]).text
    )


def test_stock_page_with_drift_and_pages(client, catalog):
    catalog({f"SKU-{i:03d}": 10 for i in range(150)})
    with unit_of_work() as s:
        s.execute(text("UPDATE stock SET on_hand = 7 WHERE sku = 'SKU-001'"))
    html = client.get("/console/stock").text
    assert "150 rows · page 1 of 2" in html and 'id="next-page"' in html
    assert '<td>SKU-000</td><td>main</td><td class="num">10</td>' in html
    assert "<b>drift</b>: ledger 10/0" in html and "Drift on this page" in html
    page2 = client.get("/console/stock", params={"page": 2}).text
    assert "SKU-149" in page2 and "SKU-001" not in page2
    filtered = client.get("/console/stock", params={"sku": "SKU-14"}).text
    assert "10 rows" in filtered  # SKU-140..149
    full = client.get("/console/stock", params={"check": "all", "page": 2}).text
    assert "Drift check, every row" in full and "SKU-001" in full


def test_static_files(anon):
    assert "confirm(" in anon.get("/console/static/console.js").text
    assert anon.get("/console/static/../app.py").status_code == 404


# --- 100,000 orders --------------------------------------------------------------------------

SEED = """
INSERT INTO products (sku, name, price_amount, currency, active)
SELECT 'BULK-' || lpad(g::text, 5, '0'), 'Bulk ' || g, 1000, 'CNY', true
FROM generate_series(1, 5000) g;
INSERT INTO stock (sku, warehouse, on_hand, reserved)
SELECT 'BULK-' || lpad(g::text, 5, '0'), w, 100, 0
FROM generate_series(1, 5000) g, unnest(ARRAY['main', 'east']) w;
INSERT INTO stock_movements (sku, warehouse, kind, delta_on_hand, delta_reserved, actor)
SELECT sku, warehouse, 'receive', 100, 0, 'seed' FROM stock;
INSERT INTO orders (id, source, external_id, body_hash, status, reason, currency, total_amount,
                    payment_provider, shipping_address, stage_deadline, created_at, updated_at)
SELECT 'ord-' || lpad(g::text, 7, '0'), 'bulk', 'ext-' || g, md5(g::text),
       (ARRAY['RECEIVED','RESERVED','AWAITING_PAYMENT','PAID','SHIPPED','IN_TRANSIT','DELIVERED',
              'COMPLETED','COMPLETED','COMPLETED','EXPIRED','CANCELLED','REJECTED',
              'NEEDS_ATTENTION'])[1 + g % 14],
       CASE WHEN g % 14 = 13 THEN 'tracking_exception' END,
       'CNY', 1000, 'alipay', '{}'::jsonb,
       now() + ((g % 600) - 300) * interval '1 minute',
       now() - (g % 345600) * interval '1 second', now() - (g % 345600) * interval '1 second'
FROM generate_series(1, 100000) g;
INSERT INTO order_events (order_id, kind, from_status, to_status, actor, created_at)
SELECT o.id, 'transition', t.f, t.t, 'system', o.created_at + t.n * interval '1 second'
FROM orders o, (VALUES (1, NULL, 'RECEIVED'), (2, 'RECEIVED', 'RESERVED'),
                       (3, 'RESERVED', 'AWAITING_PAYMENT')) AS t(n, f, t);
INSERT INTO order_events (order_id, kind, detail, actor)
SELECT id, 'provider_call', '{"provider": "alipay", "outcome": "ok"}'::jsonb, 'system'
FROM orders;
INSERT INTO shipments (order_id, booking_key, carrier, waybill, status, created_at)
SELECT id, 'bk-' || id, 'yuantong', 'YT' || substr(id, 5),
       CASE WHEN status IN ('DELIVERED', 'COMPLETED') THEN 'DELIVERED' ELSE 'IN_TRANSIT' END,
       created_at
FROM orders WHERE status IN ('SHIPPED', 'IN_TRANSIT', 'DELIVERED', 'COMPLETED');
ANALYZE;
"""


@pytest.fixture
def bulk(db):
    with unit_of_work() as s:
        s.execute(text(SEED))
    for i in range(50):
        dead_letter(f"ord-{i * 14 + 13:07d}")


def _plan(sql: str, **params: object) -> str:
    with unit_of_work() as s:
        rows = s.execute(text(f"EXPLAIN {sql}"), params).scalars().all()
    return "\n".join(rows)


@pytest.mark.slow
def test_pages_render_fast_with_100k_orders(client, bulk):
    with unit_of_work() as s:
        assert s.scalar(text("SELECT count(*) FROM orders")) == 100_000
    pages = ["/console/pipeline", "/console/pipeline/live", "/console/attention",
             "/console/stock", "/console/stock?page=50", "/console/stock?sku=BULK-042",
             "/console/orders/ord-0050000", "/console/search?q=ext-77777",
             "/console/search?q=YT0000007", "/console/orders",
             "/console/orders?status=needs_attention", "/console/orders?reason=tracking",
             "/console/orders?source=bulk&older_than=20h",
             "/console/orders?provider=alipay&before=2026-01-01T00:00:00%2B00:00~o-1"]  # fmt: skip
    timings = {}
    for path in pages:
        client.get(path)  # warm (templates compiled, plans cached)
        start = time.perf_counter()
        r = client.get(path)
        timings[path] = time.perf_counter() - start
        assert r.status_code in (200, 303), (path, r.status_code)
    print("\nconsole render times at 100k orders (s):",
          {p: round(t, 3) for p, t in timings.items()})  # fmt: skip
    slow = {p: t for p, t in timings.items() if t >= 1.0}
    assert not slow, f"pages over 1 s with 100k orders: {slow}"
    forget_charts()  # the charts are kept a minute: once computed afresh
    start = time.perf_counter()
    html = client.get("/console/pipeline").text
    cold = time.perf_counter() - start
    print(f"pipeline with the charts computed afresh: {cold:.3f} s")
    # The charts read the day's ~257,000 transitions: about half a second (docs in
    # api/console_pages.py); the bound catches a scan gone quadratic, not a busy machine.
    assert cold < 2.0, f"pipeline with fresh charts took {cold:.2f} s at 100k orders"
    assert 'id="chart-throughput"' in html and 'id="stage-RECEIVED"' in html
    completed = sum(1 for g in range(1, 100_001) if g % 14 in (7, 8, 9))
    assert f'COMPLETED</span></th><td class="num">{completed}</td>' in html
    assert "ord-" in client.get("/console/attention").text


@pytest.mark.slow
def test_console_queries_use_indexes(bulk):
    plans = {
        "external id": _plan("SELECT id FROM orders WHERE external_id = 'ext-5' LIMIT 1"),
        "waybill": _plan("SELECT order_id FROM shipments WHERE waybill = 'YT0000007' LIMIT 1"),
        "throughput": _plan(
            "SELECT from_status, to_status, count(*) FROM order_events "
            "WHERE kind = 'transition' AND created_at >= now() - interval '1 hour' "
            "GROUP BY 1, 2"
        ),
        "oldest": _plan(
            "SELECT id FROM orders WHERE status = 'PAID' ORDER BY stage_deadline NULLS LAST LIMIT 1"
        ),
    }
    for name, plan in plans.items():
        print(f"\n{name}:\n{plan}")
    assert "ix_orders_external_id" in plans["external id"]
    assert "ix_shipments_waybill" in plans["waybill"]
    assert "ix_order_events_transition_created_at" in plans["throughput"]
    assert "ix_orders_status_deadline" in plans["oldest"]
    for name, plan in plans.items():
        assert "Seq Scan on orders" not in plan and "Seq Scan on order_events" not in plan, name
