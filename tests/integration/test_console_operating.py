"""The ops console as an operator's daily tool (issue 19), on real PostgreSQL and Redis: A. the
order page (shipment facts that exist, the task behind each timeline row, money, a replay's
outcome); B. the order list (filters, keyset pages, totals, index plans); C. statuses by meaning,
rejections by reason, external ids; D. callback endpoint health; E. the 24-hour charts (their
pure geometry: tests/unit/test_console_views.py). Fixtures as in test_console.py."""

from __future__ import annotations

import functools
import re
import secrets
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select, text
from sqlalchemy.dialects import postgresql

from api.catalog import admin_api_key_setting
from api.console_pages import forget_charts
from models import DeadLetter, OrderEvent
from services import console_charts as charts
from services import timeline
from services.console_orders import Cursor, OrderFilter, page_statement
from services.unit_of_work import unit_of_work
from tests.integration.console_support import (
    add_order,
    dead_letter,
    new_order,
    plan_of,
    replay,
    row_of,
    section,
    seed_endpoints,
    seed_rare_orders,
    transition,
)

# --- fixtures (as in test_console.py; the helpers are in console_support.py) ------------------


@pytest.fixture(autouse=True)
def fresh_charts():
    """The pipeline's charts are kept a minute per process: each test draws its own."""
    forget_charts()
    yield
    forget_charts()


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


# --- A. the order page -------------------------------------------------------------------------


def test_shipment_panel_shows_only_what_exists(client):
    oid = new_order()
    with unit_of_work() as s:
        sid = s.execute(text("INSERT INTO shipments (order_id, booking_key, status) "
                             "VALUES (:o, 'bk-pending', 'PENDING') RETURNING id"),
                        {"o": oid}).scalar_one()  # fmt: skip
    panel = section(client.get(f"/console/orders/{oid}").text, f"parcel-{sid}")
    assert "Parcel 1 of 1" in panel
    assert "None" not in panel
    assert "<dt>carrier</dt><dd>—</dd><dt>waybill</dt><dd>—</dd>" in panel
    assert re.search(r'<span class="status tone-wait">PENDING</span></dd>', panel)
    with unit_of_work() as s:
        s.execute(text("UPDATE shipments SET carrier = 'yuantong', waybill = 'YT1', raw_state = "
                       "'3', status = 'DELIVERED' WHERE order_id = :o"), {"o": oid})  # fmt: skip
        s.execute(text("UPDATE orders SET status = 'NEEDS_ATTENTION', reason = 'returned' "
                       "WHERE id = :o"), {"o": oid})  # fmt: skip
    panel = section(client.get(f"/console/orders/{oid}").text, f"parcel-{sid}")
    assert "<dd>yuantong</dd><dt>waybill</dt><dd>YT1</dd>" in panel
    assert "carrier state 3" in panel and "<dt>reason</dt><dd>returned</dd>" in panel


def _parcel(s, oid: str, warehouse: str, seq: int, lines: list[tuple[str, int]], **cols) -> int:
    sid = s.execute(text(
        "INSERT INTO shipments (order_id, booking_key, warehouse, seq, status, carrier, waybill, "
        "cancelled_at, cancel_reason) VALUES (:o, :k, :w, :seq, :st, :c, :wb, :ca, :cr) "
        "RETURNING id"), {
        "o": oid, "k": f"ship-{oid}-{warehouse}-{seq}", "w": warehouse, "seq": seq,
        "st": cols.get("status", "PENDING"), "c": cols.get("carrier"), "wb": cols.get("waybill"),
        "ca": cols.get("cancelled_at"), "cr": cols.get("cancel_reason")}).scalar_one()  # fmt: skip
    for sku, qty in lines:
        s.execute(text("INSERT INTO shipment_lines (shipment_id, sku, quantity) "
                       "VALUES (:s, :k, :q)"), {"s": sid, "k": sku, "q": qty})  # fmt: skip
    return sid


def test_order_page_shows_a_panel_per_parcel_with_its_lines_and_trouble(client):
    oid = new_order()
    with unit_of_work() as s:
        north = _parcel(s, oid, "north", 1, [("A", 2)], status="IN_TRANSIT", carrier="yuantong",
                        waybill="YTNORTH1")  # fmt: skip
        gone = _parcel(s, oid, "east", 1, [("B", 1)], cancelled_at=datetime.now(UTC),
                       cancel_reason="refused:out_of_stock")  # fmt: skip
        south = _parcel(s, oid, "south", 1, [("B", 1), ("C", 3)], status="EXCEPTION",
                        carrier="zhongtong", waybill="ZTSOUTH1")  # fmt: skip
        s.execute(text("UPDATE orders SET status = 'NEEDS_ATTENTION', reason = :r WHERE id = :o"),
                  {"o": oid, "r": f"tracking_exception: parcel {south} (south): 拒收"})  # fmt: skip
    page = client.get(f"/console/orders/{oid}").text
    first, second, third = (section(page, f"parcel-{i}") for i in (north, gone, south))
    x = "\N{MULTIPLICATION SIGN}"
    assert "Parcel 1 of 3 · north" in first and f"2 {x} A" in first and "YTNORTH1" in first
    assert "IN_TRANSIT" in first and "<dt>reason</dt>" not in first
    assert "Parcel 2 of 3 · east" in second and "CANCELLED" in second
    assert "refused:out_of_stock" in second and f"1 {x} B" in second
    assert "Parcel 3 of 3 · south" in third and f"1 {x} B, 3 {x} C" in third and "ZTSOUTH1" in third
    assert "<dt>reason</dt><dd>tracking_exception: parcel" in third
    assert f"ship-{oid}-south-1" in third
    assert "YTNORTH1, ZTSOUTH1" in section(page, "order-actions")  # what a cancel leaves alone


def test_timeline_shows_the_task_that_wrote_each_row(client):
    oid = new_order()
    token = timeline.task_context.set({"name": "orders.process", "worker": "w1@host",
                                       "retries": 2})  # fmt: skip
    try:
        with unit_of_work() as s:  # as OrderflowTask.__call__ records it
            timeline.record(s, oid, "transition", from_status="RECEIVED", to_status="RESERVED")
    finally:
        timeline.task_context.reset(token)
    dead_letter(oid, task="shipping.book")  # a row that names its task as a string
    html = client.get(f"/console/orders/{oid}").text
    rows = section(html, "timeline")
    assert "<td>orders.process on w1@host (retries 2)</td>" in rows
    assert "<td>shipping.book</td>" in rows


def test_money_is_shown_by_the_shared_formatter(client):
    oid = add_order(total=6900, currency="CNY")
    yen = add_order(total=500, currency="JPY")
    with unit_of_work() as s:
        s.execute(text(
            "INSERT INTO order_lines (order_id, line_no, sku, quantity, unit_amount) "
            "VALUES (:o, 1, 'SKU-1', 3, 2300)"), {"o": oid})  # fmt: skip
        s.execute(text(
            "INSERT INTO payments (order_id, provider, out_trade_no, idempotency_key, amount, "
            "currency, refunded_amount, status) VALUES (:o, 'alipay', 'T-1', 'k-1', 6900, 'CNY', "
            "1250, 'PARTIALLY_REFUNDED')"), {"o": oid})  # fmt: skip
    html = client.get(f"/console/orders/{oid}").text
    assert "minor units" not in html
    assert 'id="order-total">69.00 CNY<' in html and "3 \u00d7 SKU-1 @ 23.00 CNY" in html
    assert "69.00 CNY (refunded 12.50 CNY)" in html
    assert 'id="order-total">500 JPY<' in client.get(f"/console/orders/{yen}").text


def test_replay_says_published_and_then_shows_what_the_task_did(client):
    oid = add_order(status="RESERVED", external_id="SHOP-77")
    dl_id = dead_letter(oid, task="payments.create")
    location = replay(client, dl_id)
    page = client.get(location).text
    flash = re.search(r'id="flash">([^<]*)<', page).group(1)
    assert flash == (f"dead letter {dl_id}: replay published (task payments.create); "
                     "watch the order&#39;s timeline")  # fmt: skip
    assert "replay done" not in page
    panel = page[page.index('id="replay"') :]
    assert f'<a href="/console/orders/{oid}" id="replay-order">{oid}</a>' in panel
    assert "REPLAYED" in panel and "nothing recorded since the replay yet" in panel
    assert parse_qs(urlsplit(location).query)["replayed"] == [str(dl_id)]

    # The replayed task ran and wrote a row (its context names it), without a transition.
    token = timeline.task_context.set({"name": "payments.create", "worker": "w", "retries": 0})
    try:
        with unit_of_work() as s:
            timeline.record(s, oid, "provider_call", detail={"outcome": "unavailable"})
    finally:
        timeline.task_context.reset(token)
    page = client.get(location).text
    assert "the task ran (provider_call at" in page and "the order is still" in page

    # Then the order moved on: the transition is the outcome.
    with unit_of_work() as s:
        timeline.record(s, oid, "transition", from_status="RESERVED", to_status="AWAITING_PAYMENT")
    assert re.search(r"the order moved RESERVED → <span class=\"status tone-wait\">"
                     r"AWAITING_PAYMENT</span>", client.get(location).text)  # fmt: skip

    # And failed again: a newer dead letter of the same task for the same order says so, on
    # the Attention page and in the order's dead letters.
    again = dead_letter(oid, task="payments.create")
    dead_letter(oid, task="shipping.book")  # another task's: not this replay's outcome
    assert f"failed again</span>: dead letter {again} (open)" in client.get(location).text
    order_page = client.get(f"/console/orders/{oid}").text
    row = order_page[order_page.index(f'id="odl-{dl_id}"') :]
    assert f"failed again</span>: dead letter {again} (open)" in row.split("</tr>")[0]


def test_replay_outcome_of_an_unknown_or_foreign_dead_letter(client):
    assert 'id="replay"' not in client.get("/console/attention?replayed=999999").text
    dl_id = dead_letter(None)
    page = client.get(replay(client, dl_id)).text
    assert "replay published (task payments.create); it names no order" in page
    assert "the task names no order" in page


def test_a_replay_whose_publish_fails_says_so_and_opens_the_dead_letter_again(client, monkeypatch):
    import kombu.exceptions

    def broker_down(*args, **options):
        raise kombu.exceptions.OperationalError("connection refused")

    oid = add_order(status="RESERVED")
    dl_id = dead_letter(oid)
    with monkeypatch.context() as patch:
        patch.setattr("workers.publish.enqueue", broker_down)
        page = client.get(replay(client, dl_id)).text
    assert (f"dead letter {dl_id}: its task was not published (payments.create: "
            "OperationalError); the dead letter is open again") in page  # fmt: skip
    assert "replay published" not in page and 'id="replay-order"' in page
    with unit_of_work() as s:
        dl = s.get(DeadLetter, dl_id)
        assert (dl.status, dl.resolved_at) == ("OPEN", None)
        kinds = s.scalars(select(OrderEvent.kind).where(OrderEvent.order_id == oid)).all()
    assert "dlq_replay_unpublished" in kinds
    # The broker is back: the same dead letter replays.
    assert "replay published" in client.get(replay(client, dl_id)).text


def test_discard_says_what_it_did(client):
    oid = new_order()
    dl_id = dead_letter(oid, task="shipping.book")
    page = client.get(replay(client, dl_id, "discard")).text
    assert f"dead letter {dl_id}: discarded (task shipping.book)" in page


# --- B. the order list -------------------------------------------------------------------------


def test_order_list_rows_newest_first_with_everything_an_operator_needs(client):
    old = add_order(status="COMPLETED", ago_s=7200, external_id="SHOP-OLD", total=12345)
    new = add_order(status="NEEDS_ATTENTION", reason="amount_mismatch", source="erp",
                    provider="stripe", ago_s=60, external_id="SHOP-NEW",
                    currency="USD")  # fmt: skip
    html = client.get("/console/orders").text
    assert 'id="nav-orders"' in html and 'id="orders-total">2 orders · newest first' in html
    table = section(html, "orders")
    assert table.index(new) < table.index(old)
    row = row_of(table, new)
    assert f'<a href="/console/orders/{new}"><code class="id">{new}</code></a>' in row
    assert f'data-copy="{new}"' in row and '<td class="ext">SHOP-NEW</td><td>erp</td>' in row
    assert '<span class="status tone-bad">NEEDS_ATTENTION</span>' in row
    assert "<td>amount_mismatch</td>" in row and ">69.00 USD<" in row and ">1 min<" in row
    old_row = row_of(table, old)
    assert "tone-good" in old_row and ">123.45 CNY<" in old_row and ">2 h<" in old_row


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"status": "needs_attention"}, {"na-1", "na-2"}),  # any case
        ({"status": "Rejected"}, {"rej"}),
        ({"reason": "MISMATCH"}, {"na-1"}),  # a piece, any case
        ({"reason": "out_of"}, {"rej"}),  # a prefix
        ({"reason": "100%"}, set()),  # LIKE wildcards are literal
        ({"provider": "stripe"}, {"na-2"}),
        ({"source": "erp"}, {"na-2", "paid"}),
        ({"older_than": "90m"}, {"rej", "paid"}),
        ({"older_than": "3h"}, {"paid"}),
        ({"older_than": "1d"}, set()),
        ({"status": "NEEDS_ATTENTION", "source": "erp"}, {"na-2"}),
    ],
)
def test_order_list_filters(client, query, expected):
    add_order(status="NEEDS_ATTENTION", reason="amount_mismatch", external_id="na-1", ago_s=60)
    add_order(status="NEEDS_ATTENTION", reason="tracking_exception", external_id="na-2",
              source="erp", provider="stripe", ago_s=120)  # fmt: skip
    add_order(status="REJECTED", reason="out_of_stock", external_id="rej", ago_s=2 * 3600)
    add_order(status="PAID", external_id="paid", source="erp", ago_s=5 * 3600)
    r = client.get("/console/orders", params=query)
    assert r.status_code == 200
    shown = set(re.findall(r'<td class="ext">([^<]+)</td>', r.text))
    assert shown == expected
    assert f'id="orders-total">{len(expected)} order' in r.text and "matching the filter" in r.text


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"status": "SHIPPING"}, "status: unknown status &#39;SHIPPING&#39;"),
        ({"older_than": "yesterday"}, "older_than: &#39;yesterday&#39; is not an age"),
        ({"before": "not-a-cursor"}, "page: not a page of this list"),
    ],
)
def test_order_list_refuses_what_it_cannot_read(client, query, message):
    r = client.get("/console/orders", params=query)
    assert r.status_code == 400 and message in r.text and 'id="orders"' not in r.text


def test_order_list_pages_by_keyset_with_a_total(client, monkeypatch):
    import api.console_pages as pages
    import services.console_orders as module

    small = functools.partial(module.order_list, limit=4)  # PER_PAGE is a bound default
    monkeypatch.setattr(pages, "order_list", small)
    for i in range(10):  # o-09 newest
        add_order(external_id=f"o-{i:02d}", ago_s=1000 - i)
    seen, url, pages = [], "/console/orders?source=web", 0
    while url:
        html = client.get(url).text
        assert 'id="orders-total">10 orders matching the filter' in html
        seen += re.findall(r'<td class="ext">([^<]+)</td>', html)
        older = re.search(r'href="([^"]+)" id="older"', html)
        url = older.group(1).replace("&amp;", "&") if older else None
        pages += 1
    assert pages == 3 and seen == [f"o-{i:02d}" for i in reversed(range(10))]
    assert "source=web" in html  # the filter stays on the page links
    newer = re.search(r'href="([^"]+)" id="newer"', html).group(1).replace("&amp;", "&")
    back = client.get(newer).text
    assert re.findall(r'<td class="ext">([^<]+)</td>', back) == ["o-05", "o-04", "o-03", "o-02"]


def test_order_list_total_is_capped(client, monkeypatch):
    import services.console_orders as module

    monkeypatch.setattr(module, "TOTAL_CAP", 3)
    for i in range(5):
        add_order(external_id=f"c-{i}")
    assert (
        'id="orders-total">more than 3 orders · newest first' in client.get("/console/orders").text
    )


def test_order_list_queries_walk_an_index(db):
    """A page's query for a rare value of each filter, on 30,000 orders, walks that filter's
    index newest first (migration 0011) and stops after the page: no scan of the table, no
    sort of the matches (an incremental sort of equal timestamps by id is fine)."""
    seed_rare_orders(30_000)
    cursor = Cursor(datetime.now(UTC) - timedelta(hours=30), "o-1800")
    expected = {
        OrderFilter(status="NEEDS_ATTENTION"): "ix_orders_status_created_at",
        OrderFilter(source="erp"): "ix_orders_source_created_at",
        OrderFilter(provider="stripe"): "ix_orders_payment_provider_created_at",
        OrderFilter(reason="mismatch"): "ix_orders_reason_created_at",
        OrderFilter(): "ix_orders_created_at",
        OrderFilter(older_than_s=3600): "ix_orders_created_at",
    }
    for f, index in expected.items():
        for where in ({}, {"before": cursor}, {"after": cursor}):
            stmt = page_statement(f, **where)
            sql = stmt.compile(dialect=postgresql.dialect(paramstyle="named"),
                               compile_kwargs={"literal_binds": True})  # fmt: skip
            plan = plan_of(str(sql).replace(":", "\\:"))
            assert index in plan and "Seq Scan" not in plan, (f, where, plan)
            if not where:  # unbounded: a sort would read every match (a bounded one may sort)
                assert not re.search(r"(^|->  )Sort ", plan, re.M), (f, plan)


# --- C. statuses by meaning, rejections, external ids ------------------------------------------


def test_statuses_are_coloured_on_every_page(client):
    oid = add_order(status="NEEDS_ATTENTION", reason="amount_mismatch")
    add_order(status="CANCELLED")
    pipeline = client.get("/console/pipeline").text
    assert '<span class="status tone-bad">NEEDS_ATTENTION</span></th><td class="num">1</td>' in (
        pipeline)  # fmt: skip
    assert '<span class="status tone-off">CANCELLED</span></th>' in pipeline
    assert '<span class="status tone-good">COMPLETED</span></th>' in pipeline
    order = client.get(f"/console/orders/{oid}").text
    assert 'class="status tone-bad" id="order-status">NEEDS_ATTENTION<' in order
    css = client.get("/console/static/console.css").text
    assert all(f".tone-{t} " in css for t in ("good", "wait", "bad", "off"))


def test_rejections_by_reason_over_the_last_day(client):
    for reason, n in (("out_of_stock", 3), ("unknown_sku", 1)):
        for _ in range(n):
            add_order(status="REJECTED", reason=reason, ago_s=3600)
    add_order(status="REJECTED", reason="unknown_sku", ago_s=25 * 3600)  # older than a day
    add_order(status="CANCELLED", reason="out_of_stock")  # not a rejection
    table = section(client.get("/console/pipeline").text, "rejections")
    rows = re.findall(r'reason=([a-z_]+)">\1</a></td><td class="num">(\d+)</td>', table)
    assert rows == [("out_of_stock", "3"), ("unknown_sku", "1")]
    assert 'href="/console/orders?status=REJECTED&amp;reason=out_of_stock"' in table


def test_external_ids_beside_ids_on_attention_and_order_pages(client):
    na = add_order(status="NEEDS_ATTENTION", reason="returned", external_id="SHOP-NA")
    dl_order = add_order(status="PAID", external_id="SHOP-DL")
    dead_letter(dl_order)
    stale = add_order(status="IN_TRANSIT", external_id="SHOP-STALE")
    with unit_of_work() as s:
        s.execute(text(
            "INSERT INTO shipments (order_id, booking_key, carrier, waybill, status, created_at) "
            "VALUES (:o, 'bk-s', 'yuantong', 'YT-S', 'IN_TRANSIT', now() - interval '10 days')"
        ), {"o": stale})  # fmt: skip
    html = client.get("/console/attention").text
    assert f'{na}</a></td><td class="ext">SHOP-NA</td>' in section(html, "needs-attention")
    assert f'{dl_order}</a></td>\n<td class="ext">SHOP-DL</td>' in section(html, "dead-letters")
    assert f'{stale}</a></td><td class="ext">SHOP-STALE</td>' in section(html, "stale")
    order = client.get(f"/console/orders/{na}").text
    assert 'id="order-external-id">SHOP-NA</span>' in order


# --- D. callback endpoint health ---------------------------------------------------------------


def test_callback_endpoint_health_on_the_attention_page(client):
    seed_endpoints()  # a: paused, b: failing, c: ok, d: inactive (console_support.py)
    table = section(client.get("/console/attention").text, "endpoints")
    rows = {m[0]: m[1] for m in re.findall(r'id="endpoint-([a-z-]+)">(.*?)</tr>', table, re.S)}
    assert 'tone-bad">paused since' in rows["shop-a"]
    assert re.search(r'<td class="num">8</td><td class="num">2</td>\s*<td>50 min</td>',
                     rows["shop-a"])  # fmt: skip
    assert 'tone-bad">failing<' in rows["shop-b"]
    assert re.search(r'<td class="num">2</td><td class="num">1</td>\s*<td>12 min</td>',
                     rows["shop-b"])  # fmt: skip
    assert 'tone-good">active<' in rows["shop-c"] and "<td>—</td>" in rows["shop-c"]
    assert 'tone-off">inactive<' in rows["shop-d"]


# --- E. charts ---------------------------------------------------------------------------------


def test_activity_counts_transitions_per_hour_and_time_per_stage(db):
    a, b, c = add_order(ago_s=3 * 3600), add_order(ago_s=3 * 3600), add_order(ago_s=30 * 3600)
    # a: 60 s reserving, 600 s awaiting payment; b: 120 s reserving, 1800 s awaiting payment.
    transition(a, None, "RECEIVED", ago_s=3 * 3600)
    transition(a, "RECEIVED", "RESERVED", ago_s=3 * 3600 - 60)
    transition(a, "RESERVED", "AWAITING_PAYMENT", ago_s=3 * 3600 - 70)
    transition(a, "AWAITING_PAYMENT", "PAID", ago_s=3 * 3600 - 670)
    transition(b, None, "RECEIVED", ago_s=3 * 3600)
    transition(b, "RECEIVED", "RESERVED", ago_s=3 * 3600 - 120)
    transition(b, "RESERVED", "AWAITING_PAYMENT", ago_s=3 * 3600 - 130)
    transition(b, "AWAITING_PAYMENT", "PAID", ago_s=3 * 3600 - 1930)
    # c entered AWAITING_PAYMENT 30 h ago (before the window) and left it 1 h ago.
    transition(c, "RESERVED", "AWAITING_PAYMENT", ago_s=30 * 3600)
    transition(c, "AWAITING_PAYMENT", "EXPIRED", ago_s=3600)
    with unit_of_work() as s:
        act = charts.activity(s)
    assert act.total == 9 and len(act.per_hour) == 24 and len(act.throughput.bars) == 24
    stages = {st.stage: st for st in act.stages}
    assert list(stages) == ["RECEIVED", "RESERVED", "AWAITING_PAYMENT"]  # pipeline order
    # (each row's now() is its own transaction's: a few milliseconds apart)
    assert stages["RECEIVED"].count == 2 and stages["RECEIVED"].p50_s == pytest.approx(90, abs=1)
    assert stages["RECEIVED"].p90_s == pytest.approx(114, abs=1)
    assert stages["RESERVED"].p50_s == pytest.approx(10, abs=1)
    waited = stages["AWAITING_PAYMENT"]  # 600, 1800 and 29 h (found before the window)
    assert waited.count == 3 and waited.p50_s == pytest.approx(1800, abs=1)
    assert waited.p90_s == pytest.approx(1800 + 0.8 * (29 * 3600 - 1800), abs=1)  # interpolated
    assert sum(v is not None for v in waited.hourly_p50) in (2, 3)  # the exits' hours
    assert waited.path_p50.startswith("M")


def test_pipeline_page_draws_the_charts_within_the_csp(client):
    oid = add_order(ago_s=2 * 3600)
    transition(oid, None, "RECEIVED", ago_s=2 * 3600)
    transition(oid, "RECEIVED", "RESERVED", ago_s=2 * 3600 - 42)
    r = client.get("/console/pipeline")
    html = r.text
    svg = html[html.index('<svg id="chart-throughput"') : html.index("</svg>")]
    assert svg.count("<rect ") == 24 and svg.count("<title>") == 24
    assert "2 in all" in svg and sum(svg.count(f": {n} transitions</title>") for n in (1, 2)) >= 1
    stage = section(html, "stage-RECEIVED").split("</tr>")[0]
    assert '<td class="num">1</td>' in stage and stage.count("42 s") == 2
    assert '<path class="p50" d="M' in stage
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp
    assert " style=" not in html and "<style" not in html
    assert re.findall(r"<script[^>]*>", html) == ['<script src="/console/static/console.js" defer>']
    live = client.get("/console/pipeline/live").text
    assert "chart-throughput" not in live  # drawn once per page, not every 5 s


def test_pages_answer_with_an_empty_database(client):
    html = client.get("/console/pipeline").text
    assert 'id="no-stage-latency"' in html and 'id="no-rejections"' in html
    assert 'id="orders-total">0 orders' in client.get("/console/orders").text
    assert 'id="no-endpoints"' in client.get("/console/attention").text
    js = client.get("/console/static/console.js").text  # the Copy buttons' handler
    assert "data-copy" in js and "clipboard" in js
