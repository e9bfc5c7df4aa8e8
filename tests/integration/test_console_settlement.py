"""The console's Settlement page (issue 20) against real PostgreSQL and Redis: a day's bills
seeded as ``orderflow settlement fetch`` and ``match`` leave them (a stored Stripe file with a
charge, a refund and an adjustment, a stored Alipay file in another currency, a refused WeChat
Pay file, three differences of which one is resolved), then the page's figures, files and
differences, resolving a difference as an operator (the row, the audit trail, the order's
timeline), and every refusal by what did not change: a viewer, an empty note, a second resolve,
an unknown difference, a bad date. Fixtures: :mod:`tests.console_helpers`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from domain.operators import Role
from models import (
    ConsoleAudit,
    OrderEvent,
    Payment,
    SettlementDifference,
    SettlementFile,
    SettlementLine,
)
from services.unit_of_work import unit_of_work
from tests.console_helpers import (  # noqa: F401 (admin_key, app, clock: fixtures)
    admin_key,
    app,
    client_for,
    clock,
    csrf_of,
    log_in,
    make_operator,
)
from tests.integration.console_support import add_order, section

DAY = date(2030, 3, 14)
AT = datetime(2030, 3, 15, 2, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Seeded:
    order_id: str
    missing_there: int  # open, names our payment (so its order)
    missing_here: int  # open, nothing of ours
    resolved: int  # resolved before the test


def _file(
    provider: str, bill_type: str, day: date, status: str = "stored", **kw: Any
) -> SettlementFile:
    stored = status == "stored"
    return SettlementFile(
        provider=provider, account="default", bill_date=day, bill_type=bill_type,
        status=status, sha256=uuid.uuid4().hex * 2 if stored else None,
        content=b"{}" if stored else None, size=2 if stored else None, fetched_at=AT, **kw,
    )  # fmt: skip


def _line(f: SettlementFile, n: int, kind: str, amount: int, fee: int, currency: str) -> Any:
    return SettlementLine(
        file_id=f.id, line_no=n, line_id=f"txn_{n}", kind=kind, raw_type=kind,
        amount=amount, fee=fee, net=amount - fee, currency=currency, occurred_at=AT,
    )  # fmt: skip


def seed(day: date = DAY) -> Seeded:
    """The day as fetch and match leave it (see the module docstring)."""
    order_id = add_order(status="COMPLETED", provider="stripe", currency="USD", total=10000)
    with unit_of_work() as s:
        payment = Payment(
            order_id=order_id, provider="stripe", out_trade_no=f"T-{order_id[:8]}",
            idempotency_key=f"k-{order_id}", amount=10000, currency="USD", status="PAID",
            provider_ref="pi_seeded", paid_at=AT - timedelta(hours=20),
        )  # fmt: skip
        stripe = _file("stripe", "balance", day, line_count=3, matched_at=AT)
        alipay = _file("alipay", "trade", day, line_count=1)
        refused = _file("wechatpay", "ALL", day, status="refused",
                        error="hash mismatch: SHA1 of the file is not hash_value")  # fmt: skip
        s.add_all([payment, stripe, alipay, refused])
        s.flush()
        s.add_all([
            _line(stripe, 1, "charge", 10000, 320, "USD"),
            _line(stripe, 2, "refund", -2500, 0, "USD"),
            _line(stripe, 3, "adjustment", -100, 0, "USD"),
            _line(alipay, 1, "charge", 6900, 41, "CNY"),
        ])  # fmt: skip
        diffs = [
            SettlementDifference(  # the oldest, resolved: listed after the open ones
                provider="stripe", account="default", bill_date=day, kind="unexpected_fee",
                ref="txn_fee", currency="USD", ours=0, theirs=-15, detail="a fee line",
                resolved_at=AT, resolved_by="operator:earlier", resolution_note="known fee",
            ),
            SettlementDifference(
                provider="stripe", account="default", bill_date=day, kind="missing_there",
                ref="pi_seeded", currency="USD", ours=10000, theirs=None,
                detail="captured here, not in the bill", payment_id=payment.id,
            ),
            SettlementDifference(
                provider="stripe", account="default", bill_date=day, kind="missing_here",
                ref="ch_stranger", currency="USD", ours=None, theirs=500,
                detail="charge in the bill, no payment here",
            ),
        ]  # fmt: skip
        s.add_all(diffs)
        s.flush()
        resolved, missing_there, missing_here = (d.id for d in diffs)
    return Seeded(order_id, missing_there, missing_here, resolved)


def row(html: str, row_id: str) -> str:
    """The table row whose ``id`` is ``row_id``, up to its ``</tr>``."""
    start = html.index(f'<tr id="{row_id}"')
    return html[start : html.index("</tr>", start)]


def difference(diff_id: int) -> tuple[str | None, str | None]:
    with unit_of_work() as s:
        d = s.get_one(SettlementDifference, diff_id)
        return d.resolved_by, d.resolution_note


def audit(action: str) -> list[tuple[str, str, str | None, dict[str, Any] | None]]:
    with unit_of_work() as s:
        rows = s.execute(
            select(ConsoleAudit.actor, ConsoleAudit.outcome, ConsoleAudit.target,
                   ConsoleAudit.detail)
            .where(ConsoleAudit.action == action).order_by(ConsoleAudit.id)
        )  # fmt: skip
        return [tuple(r) for r in rows]  # type: ignore[misc]


def person(app_: Any, name: str, role: Role) -> tuple[TestClient, str]:
    make_operator(name, role)
    c = client_for(app_)
    return c, log_in(c, name)


@pytest.fixture
def ops(app):  # noqa: F811
    return person(app, "ops", Role.OPERATOR)


@pytest.fixture
def viewer(app):  # noqa: F811
    return person(app, "watcher", Role.VIEWER)


def resolve(client: TestClient, csrf: str, diff_id: int, note: str) -> Any:
    data = {"csrf": csrf, "note": note, "date": DAY.isoformat()}
    return client.post(f"/console/settlement/differences/{diff_id}/resolve", data=data)


# --- the page ------------------------------------------------------------------------------------


def test_the_day_shows_each_providers_files_figures_and_differences(viewer):
    client, _ = viewer
    seeded = seed()
    html = client.get(f"/console/settlement?date={DAY}").text

    figures = section(html, "settlement-figures")
    usd = row(figures, "fig-stripe-balance-USD")
    for shown in ("100.00 USD", "25.00 USD", "3.20 USD", "-1.00 USD", "70.80 USD", ">3<"):
        assert shown in usd, shown
    assert "69.00 CNY" in row(figures, "fig-alipay-trade-CNY")
    assert "68.59 CNY" in row(figures, "fig-alipay-trade-CNY")

    files = section(html, "settlement-files")
    refused = row(files, "file-wechatpay-ALL")
    assert "refused" in refused and "hash mismatch" in refused
    stripe_file = row(files, "file-stripe-balance")
    with unit_of_work() as s:
        sha = s.scalar(select(SettlementFile.sha256).where(SettlementFile.provider == "stripe"))
    assert f">{sha[:12]}<" in stripe_file and "2030-03-15 02:00:00" in stripe_file
    assert "not matched" in row(files, "file-alipay-trade")

    diffs = section(html, "settlement-differences")
    order = [diffs.index(f'id="diff-{i}"') for i in (seeded.missing_there, seeded.missing_here,
                                                      seeded.resolved)]  # fmt: skip
    assert order == sorted(order), "open differences first"
    linked = row(diffs, f"diff-{seeded.missing_there}")
    assert f'href="/console/orders/{seeded.order_id}"' in linked and "100.00 USD" in linked
    assert "/console/orders/" not in row(diffs, f"diff-{seeded.missing_here}")
    assert "operator:earlier" in row(diffs, f"diff-{seeded.resolved}")
    assert 'id="open-count">2<' in html
    assert "/resolve" not in html, "a viewer gets no form"
    days = html[html.index('id="recent-days"') :].split("</p>")[0]
    assert f'href="/console/settlement?date={DAY}"' in days and ">2</span>" in days


def test_without_a_date_it_shows_yesterday_utc_and_the_recent_days(viewer):
    client, _ = viewer
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    with unit_of_work() as s:
        s.add(_file("stripe", "balance", yesterday, line_count=0))
        s.add_all(_file("stripe", "balance", yesterday - timedelta(days=n), line_count=0)
                  for n in range(2, 20))  # fmt: skip
    html = client.get("/console/settlement").text
    assert f'id="settlement-day">{yesterday}<' in html
    days = html[html.index('id="recent-days"') :].split("</p>")[0]
    assert days.count("/console/settlement?date=") == 14
    assert str(yesterday - timedelta(days=14)) in days
    assert str(yesterday - timedelta(days=15)) not in days
    assert 'id="no-differences"' in html


@pytest.mark.parametrize("bad", ["2030-02-30", "yesterday", "20300314", "2030-03-14T00:00"])
def test_a_bad_date_is_a_clear_400_naming_date(viewer, bad):
    client, _ = viewer
    r = client.get("/console/settlement", params={"date": bad})
    assert r.status_code == 400 and "date: " in r.text and "YYYY-MM-DD" in r.text


def test_the_attention_page_counts_the_open_differences_and_links_here(viewer):
    client, _ = viewer
    assert 'id="settlement-open-count">0<' in client.get("/console/attention").text
    seed()
    html = client.get("/console/attention").text
    assert 'id="settlement-open-count">2<' in html
    assert f'href="/console/settlement?date={DAY}" id="settlement-open-link"' in html


# --- resolving -----------------------------------------------------------------------------------


def test_an_operator_resolves_a_difference_with_a_note(ops):
    client, csrf = ops
    seeded = seed()
    r = resolve(client, csrf, seeded.missing_there, "  charge booked on the 15th  ")
    assert r.status_code == 303
    assert r.headers["location"].startswith(f"/console/settlement?date={DAY}&done=")

    assert difference(seeded.missing_there) == ("operator:ops", "charge booked on the 15th")
    assert difference(seeded.missing_here) == (None, None)
    [(actor, outcome, target, detail)] = audit("settlement_resolve")
    assert (actor, outcome, target) == (
        "operator:ops", "ok", f"settlement_difference:{seeded.missing_there}",
    )  # fmt: skip
    assert detail is not None and detail["note"] == "charge booked on the 15th"
    assert detail["order_id"] == seeded.order_id
    with unit_of_work() as s:
        [event] = s.scalars(
            select(OrderEvent).where(
                OrderEvent.order_id == seeded.order_id, OrderEvent.kind == "console_action"
            )
        )
        assert event.actor == "operator:ops" and event.detail is not None
        assert event.detail["action"] == "settlement_resolve"

    page = client.get(r.headers["location"]).text
    assert "resolved" in page and 'id="open-count">1<' in page
    done = row(section(page, "settlement-differences"), f"diff-{seeded.missing_there}")
    assert "operator:ops" in done and "charge booked on the 15th" in done and "<form" not in done


def test_resolving_twice_shows_the_conflict(ops):
    client, csrf = ops
    seeded = seed()
    assert resolve(client, csrf, seeded.missing_here, "refund of a test charge").status_code == 303
    r = resolve(client, csrf, seeded.missing_here, "again")
    assert r.status_code == 409
    assert f"difference {seeded.missing_here} was resolved by operator:ops" in r.text
    assert 'id="settlement-differences"' in r.text  # the page, not an error page
    assert difference(seeded.missing_here) == ("operator:ops", "refund of a test charge")
    assert [o for _, o, _, _ in audit("settlement_resolve")] == ["ok", "refused"]


def test_an_empty_note_is_refused_naming_note(ops):
    client, csrf = ops
    seeded = seed()
    r = resolve(client, csrf, seeded.missing_there, "   ")
    assert r.status_code == 422 and "note: " in r.text
    assert difference(seeded.missing_there) == (None, None)
    [(_, outcome, _, detail)] = audit("settlement_resolve")
    assert outcome == "refused" and detail is not None and detail["error"] == "ValidationError"


def test_an_unknown_difference_is_a_404(ops):
    client, csrf = ops
    r = resolve(client, csrf, 987654, "whatever")
    assert r.status_code == 404 and "no settlement difference 987654" in r.text


def test_a_viewer_cannot_resolve(viewer, app):  # noqa: F811
    client, csrf = viewer
    seeded = seed()
    r = resolve(client, csrf, seeded.missing_there, "I am only watching")
    assert r.status_code == 403 and "viewer role" in r.text
    assert difference(seeded.missing_there) == (None, None)
    assert audit("settlement_resolve") == []
    [(actor, outcome, target, _)] = audit("denied")
    assert (actor, outcome) == ("operator:watcher", "denied")
    assert target == f"/console/settlement/differences/{seeded.missing_there}/resolve"


def test_a_post_without_the_sessions_csrf_token_changes_nothing(ops):
    client, _ = ops
    seeded = seed()
    r = resolve(client, "forged", seeded.missing_there, "note")
    assert r.status_code == 403
    assert difference(seeded.missing_there) == (None, None)


def test_the_form_is_there_for_an_operator(ops):
    client, csrf = ops
    seeded = seed()
    html = client.get(f"/console/settlement?date={DAY}").text
    form = row(section(html, "settlement-differences"), f"diff-{seeded.missing_here}")
    assert f'action="/console/settlement/differences/{seeded.missing_here}/resolve"' in form
    assert csrf_of(form) == csrf and 'name="note"' in form and "required" in form


def test_without_a_session_the_page_asks_for_a_login_and_a_post_is_refused(app):  # noqa: F811
    seeded = seed()
    anon = client_for(app)
    r = anon.get(f"/console/settlement?date={DAY}")
    assert r.status_code == 303 and r.headers["location"].startswith("/console/login?next=")
    assert resolve(anon, "x", seeded.missing_here, "note").status_code == 403
    assert difference(seeded.missing_here) == (None, None)
