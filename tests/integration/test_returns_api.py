"""The after-sale routes and the ``orderflow returns`` commands on real PostgreSQL: every
answer names its field, a key bound to a source reaches only its orders' returns, nothing
changes on a refusal."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from models import Return, StockMovement
from settings import get_settings
from tests.console_helpers import (  # noqa: F401 - admin_key, app, clock: fixtures
    admin_key,
    app,
    client_for,
    clock,
    csrf_of,
    log_in,
)
from tests.integration.returns_support import THREE, delivered_order, refunds_of
from tests.integration.test_cli import cli


@pytest.fixture
def client(db):
    from api.app import create_app

    with TestClient(create_app()) as c:
        yield c


def rows(model) -> int:
    from services.unit_of_work import unit_of_work

    with unit_of_work() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_a_return_through_the_api_from_request_to_refund(shop, client, api_key):
    oid = delivered_order(shop, THREE)
    h = {"X-API-Key": api_key}
    asked = client.post(f"/v1/orders/{oid}/returns", headers=h, json={
        "kind": "RETURN_AND_REFUND", "lines": [{"sku": "B", "quantity": 1}], "reason": "too big",
    })  # fmt: skip
    assert asked.status_code == 201, asked.text
    rid = asked.json()["id"]
    assert asked.json()["status"] == "REQUESTED" and asked.json()["lines"][0]["sku"] == "B"
    approved = client.post(f"/v1/returns/{rid}/approve", headers=h, json={"note": "fine"})
    assert approved.json()["status"] == "AWAITING_PARCEL" and approved.json()["parcel_due_at"]
    parcel = {"carrier": "yuantong", "waybill": "YT99887766"}
    assert client.post(f"/v1/returns/{rid}/parcel", headers=h, json=parcel).status_code == 200
    got = client.post(f"/v1/returns/{rid}/receive", headers=h,
                      json={"lines": [{"sku": "B", "restock": 1}]})  # fmt: skip
    assert got.status_code == 200, got.text
    body = got.json()
    assert (body["status"], body["refund_amount"], body["refund_no"]) == (
        "REFUNDED", 3000, f"return-{rid}",
    )  # fmt: skip
    assert body["parcel"] == parcel and body["lines"][0]["restocked"] == 1
    listed = client.get(f"/v1/orders/{oid}/returns", headers=h).json()["returns"]
    assert [r["id"] for r in listed] == [rid]
    assert refunds_of(oid) == [(f"return-{rid}", 3000, "REQUESTED")]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"kind": "RETURN_AND_REFUND", "lines": [{"sku": "A", "quantity": 3}], "reason": "x"},
         422, "lines.0.quantity"),
        ({"kind": "RETURN_AND_REFUND", "lines": [{"sku": "A", "quantity": 0}], "reason": "x"},
         422, "lines.0.quantity"),
        ({"kind": "RETURN_AND_REFUND", "lines": [], "reason": "x"}, 422, "lines"),
        ({"kind": "SWAP", "lines": [{"sku": "A", "quantity": 1}], "reason": "x"}, 422, "kind"),
        ({"kind": "RETURN_AND_REFUND", "lines": [{"sku": "A", "quantity": 1}]}, 422, "reason"),
    ],
)  # fmt: skip
def test_bad_requests_are_refused_naming_the_field(shop, client, api_key, body, status, field):
    oid = delivered_order(shop, THREE)
    r = client.post(f"/v1/orders/{oid}/returns", headers={"X-API-Key": api_key}, json=body)
    assert r.status_code == status, r.text
    assert field in [d["field"] for d in r.json()["details"]], r.json()
    assert rows(Return) == 0


def test_another_sources_order_and_its_returns_are_not_found(shop, client, api_key):
    oid = delivered_order(shop, THREE)  # source "web"
    mine = {"X-API-Key": api_key}
    rid = client.post(f"/v1/orders/{oid}/returns", headers=mine, json={
        "kind": "REFUND_ONLY", "lines": [{"sku": "A", "quantity": 1}], "reason": "late",
    }).json()["id"]  # fmt: skip
    shop_a = next(k for k, s in get_settings().api_key_map().items() if s == "shop-a")
    theirs = {"X-API-Key": shop_a}
    refused = [
        client.post(f"/v1/orders/{oid}/returns", headers=theirs, json={
            "kind": "REFUND_ONLY", "lines": [{"sku": "A", "quantity": 1}], "reason": "x"}),
        client.get(f"/v1/orders/{oid}/returns", headers=theirs),
        client.get(f"/v1/returns/{rid}", headers=theirs),
        client.post(f"/v1/returns/{rid}/approve", headers=theirs, json={}),
        client.post(f"/v1/returns/{rid}/receive", headers=theirs,
                    json={"lines": [{"sku": "A", "restock": 1}]}),
    ]  # fmt: skip
    for r in refused:
        assert r.status_code == 404, r.text
        assert r.json()["details"][0]["field"] in ("order_id", "return_id")
    assert client.get(f"/v1/returns/{rid}", headers=mine).json()["status"] == "REQUESTED"
    unknown = client.get("/v1/orders/no-such-order/returns", headers=mine)  # the wildcard key
    assert unknown.status_code == 404 and unknown.json()["details"][0]["field"] == "order_id"


def test_a_receipt_that_does_not_add_up_changes_nothing(shop, client, api_key):
    oid = delivered_order(shop, THREE)
    h = {"X-API-Key": api_key}
    rid = client.post(f"/v1/orders/{oid}/returns", headers=h, json={
        "kind": "RETURN_AND_REFUND", "lines": [{"sku": "C", "quantity": 2}], "reason": "x",
    }).json()["id"]  # fmt: skip
    client.post(f"/v1/returns/{rid}/approve", headers=h, json={})
    ledger = rows(StockMovement)
    r = client.post(f"/v1/returns/{rid}/receive", headers=h,
                    json={"lines": [{"sku": "C", "restock": 1}]})  # fmt: skip
    assert r.status_code == 422 and r.json()["details"][0]["field"] == "lines.0.restock"
    assert rows(StockMovement) == ledger
    assert client.get(f"/v1/returns/{rid}", headers=h).json()["status"] == "AWAITING_PARCEL"


def test_the_cli_lists_the_queue_decides_and_receives(shop, client, api_key):
    oid = delivered_order(shop, THREE)
    h = {"X-API-Key": api_key}
    rid = client.post(f"/v1/orders/{oid}/returns", headers=h, json={
        "kind": "RETURN_AND_REFUND", "lines": [{"sku": "A", "quantity": 2}], "reason": "torn",
    }).json()["id"]  # fmt: skip
    queue = cli("returns", "list", "--status", "requested")
    assert queue.returncode == 0 and str(rid) in queue.stdout and "A x2" in queue.stdout
    bad = cli("returns", "list", "--status", "maybe")
    assert bad.returncode != 0 and "--status" in bad.stderr + bad.stdout
    assert "Traceback" not in bad.stderr + bad.stdout
    assert f"return {rid} is AWAITING_PARCEL" in cli("returns", "approve", str(rid)).stdout
    wrong = cli("returns", "receive", str(rid), "--line", "A=2,0")
    assert wrong.returncode != 0 and "--line 1" in wrong.stderr + wrong.stdout
    done = cli("returns", "receive", str(rid), "--line", "A=1,1,0")
    assert done.returncode == 0, done.stderr
    assert f"return {rid} is REFUNDED" in done.stdout
    shown = cli("returns", "show", str(rid), "--json")
    assert '"refund_amount": 2000' in shown.stdout
    assert refunds_of(oid) == [(f"return-{rid}", 2000, "REQUESTED")]


def test_the_console_order_page_shows_each_return_and_what_came_back(
    shop, client, api_key, app, admin_key  # noqa: F811 - the console fixtures
):  # fmt: skip
    oid = delivered_order(shop, THREE)
    h = {"X-API-Key": api_key}
    ask = {"kind": "RETURN_AND_REFUND", "reason": "scratched"}
    url = f"/v1/orders/{oid}/returns"
    kept = client.post(url, headers=h, json={**ask, "lines": [{"sku": "C", "quantity": 3}]})
    done = client.post(url, headers=h, json={**ask, "lines": [{"sku": "B", "quantity": 1}]})
    kept, done = kept.json()["id"], done.json()["id"]
    client.post(f"/v1/returns/{done}/approve", headers=h, json={"note": "ok"})
    client.post(f"/v1/returns/{done}/receive", headers=h,
                json={"lines": [{"sku": "B", "damaged": 1}]})  # fmt: skip
    with client_for(app) as console:
        log_in(console, "", admin_key)  # no name: the admin key
        html = console.get(f"/console/orders/{oid}").text
    assert 'id="order-returns"' in html
    row = html.split(f'id="return-{kept}"', 1)[1].split("</tr>", 1)[0]
    assert "REQUESTED" in row and "3 \u00d7 C" in row and "tone-bad" in row  # waits for a person
    row = html.split(f'id="return-{done}"', 1)[1].split("</tr>", 1)[0]
    assert "REFUNDED" in row and "1 \u00d7 B (0 / 1 / 0)" in row and "30.00 CNY" in row
    assert f"return-{done}" in row and "api:" in row


def test_an_operator_approves_or_rejects_a_return_in_the_console(
    shop, client, api_key, app, admin_key  # noqa: F811 - the console fixtures
):  # fmt: skip
    oid = delivered_order(shop, THREE)
    h = {"X-API-Key": api_key}
    url = f"/v1/orders/{oid}/returns"
    ask = {"kind": "RETURN_AND_REFUND", "reason": "late"}
    first = client.post(url, headers=h, json={**ask, "lines": [{"sku": "A", "quantity": 1}]})
    second = client.post(url, headers=h, json={**ask, "lines": [{"sku": "C", "quantity": 1}]})
    yes, no = first.json()["id"], second.json()["id"]
    with client_for(app) as console:
        log_in(console, "", admin_key)  # no name: the admin key
        page = console.get(f"/console/orders/{oid}").text
        assert f'id="return-approve-{yes}"' in page and f'id="return-reject-{no}"' in page
        csrf = csrf_of(page)
        ok = console.post(f"/console/returns/{yes}/approve", data={"csrf": csrf})
        assert ok.status_code == 303 and "AWAITING_PARCEL" in ok.headers["location"]
        unsaid = console.post(f"/console/returns/{no}/reject", data={"csrf": csrf})
        assert unsaid.status_code == 422 and "say why" in unsaid.text  # a reject needs a note
        said = console.post(f"/console/returns/{no}/reject", data={"csrf": csrf, "note": "worn"})
        assert said.status_code == 303
        again = console.post(f"/console/returns/{no}/approve", data={"csrf": csrf})
        assert again.status_code == 409  # decided already: refused, nothing changed
        forged = console.post(f"/console/returns/{yes}/reject", data={"csrf": "x", "note": "n"})
        assert forged.status_code == 403
    assert client.get(f"/v1/returns/{yes}", headers=h).json()["status"] == "AWAITING_PARCEL"
    rejected = client.get(f"/v1/returns/{no}", headers=h).json()
    assert (rejected["status"], rejected["decision_note"]) == ("REJECTED", "worn")
    assert rejected["decided_by"].startswith("console:")


def test_the_same_return_no_is_the_same_return(shop, client, api_key):
    oid = delivered_order(shop, THREE)
    h = {"X-API-Key": api_key}
    body = {"kind": "RETURN_AND_REFUND", "lines": [{"sku": "A", "quantity": 1}],
            "reason": "torn", "return_no": "app-7f3a"}  # fmt: skip
    first = client.post(f"/v1/orders/{oid}/returns", headers=h, json=body)
    again = client.post(f"/v1/orders/{oid}/returns", headers=h, json=body)  # a retry
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"] and again.json()["return_no"] == "app-7f3a"
    other = client.post(f"/v1/orders/{oid}/returns", headers=h,
                        json={**body, "lines": [{"sku": "A", "quantity": 2}]})  # fmt: skip
    assert other.status_code == 409 and other.json()["details"][0]["field"] == "return_no"
    assert rows(Return) == 1
