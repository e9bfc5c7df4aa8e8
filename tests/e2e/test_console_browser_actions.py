"""The ops console's newer pages and actions in a real browser (Chromium, headless, through
selenium; see tests/e2e/browser_support.py), against the API as a uvicorn process, logged in
with the admin key. The rows are written by the services themselves, driven with the fakes
(tests/integration/test_console_actions.py), so the orders are what the pipeline leaves.

* Actions on NEEDS_ATTENTION orders: retry of a refused booking, refund, cancel (a dismissed
  confirm first: nothing changes), a refused retry (the page says why) and resolve with a note;
  each checked on the page (flash, status) and in the database (the order, its
  ``console_action`` timeline row naming the person, the audit row).
* Dead letters by filter on the Attention page: the preview count, a dismissed and an accepted
  confirm, the statuses, the replayed tasks on the broker and the click's audit row.
* Callback endpoint health on the Attention page, and the admin pages: operators (one created
  through the form), API keys, callbacks (pause and resume through the page, a dismissed resume
  changing nothing) and the audit trail listing what was done.
* Tracking text in Chinese on the order page (a yuantong parcel found by its waybill), drawn as
  glyphs, not boxes; a screenshot ``order-tracking.png``, copied to docs/console-order.png with
  ORDERFLOW_UPDATE_SCREENSHOT=1.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from sqlalchemy import select

from adapters.logistics.base import TrackingEvent, TrackingResult
from domain.money import Money
from domain.operators import Role
from domain.tracking import ShipmentStatus
from models import CallbackDelivery, CallbackEndpoint, ConsoleAudit, OrderEvent, Refund, Shipment
from producers.intake import accept_message
from services import api_keys, operators, shipping, tracking
from services.secrets_at_rest import cipher_from_setting
from services.shipping import ShippingConfig
from services.unit_of_work import unit_of_work
from settings import get_settings
from tests.conftest import order_message
from tests.e2e.browser_support import (
    answer_confirm,
    flash_after,
    log_in,
    new_page,
    screenshot,
    waiting,
)
from tests.fakes import FakePaymentProvider
from tests.fakes.logistics import FakeBookingService
from tests.helpers import stock_of
from tests.integration.console_support import seed_endpoints
from tests.integration.test_console_actions import (
    PASSWORD,
    audit_rows,
    awaiting_payment,
    console_actions,
    dead_letter,
    now,
    order_of,
    pay,
    ports,
    queued,
    snapshot,
    statuses,
)

REJECTED = "booking_rejected:address_unreachable"
SIGNED = "已签收，签收人：本人"  # noqa: RUF001 - the carrier's full-width punctuation
# A parcel's trace as Kuaidi100 reports a yuantong waybill: (hours ago, status, code, where, what).
TRACE = [
    (30, ShipmentStatus.INFO_RECEIVED, "1", "杭州市",
     "【杭州市】圆通速递 浙江省杭州市萧山区公司 已揽收"),
    (26, ShipmentStatus.IN_TRANSIT, "0", "杭州市",
     "【杭州市】快件已由 杭州转运中心 发往 上海转运中心"),
    (14, ShipmentStatus.IN_TRANSIT, "0", "上海市", "【上海市】快件已到达 上海转运中心"),
    (3, ShipmentStatus.OUT_FOR_DELIVERY, "5", "上海市",
     "【上海市】浦东新区公司 派件员 王师傅 正在派件"),
    (1, ShipmentStatus.DELIVERED, "3", "上海市", SIGNED),
]  # fmt: skip


def _flagged(fake: FakePaymentProvider, reason: str) -> str:
    """An order the pipeline flagged, paid at ``fake`` (one per test: its notification ids count
    from 1, and a repeated id is dropped as processed): ``booking_rejected:address_unreachable``
    (the warehouse refused the parcel) or ``amount_mismatch`` (0.01 CNY paid of 20.00)."""
    order_id, trade_no = awaiting_payment(fake)
    if reason == "amount_mismatch":
        pay(fake, trade_no, Money(1, "CNY"))
    else:
        pay(fake, trade_no)
        warehouse = FakeBookingService()
        warehouse.reject_next("address_unreachable")
        assert shipping.book(order_id, warehouse, ports(), ShippingConfig()).result == "rejected"
    assert order_of(order_id)[:2] == ("NEEDS_ATTENTION", reason)
    return order_id


def _by_id(browser, element_id: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    return waiting(browser).until(ec.presence_of_element_located((By.ID, element_id)))


def _act(browser, base: str, order_id: str, action: str, *, accept: bool = True) -> str:
    """Click the order page's ``action`` button and answer its confirm; the flash shown after
    an accepted one."""
    browser.get(f"{base}/console/orders/{order_id}")
    button = _by_id(browser, f"action-{action}")
    button.click()
    question = answer_confirm(browser, accept)
    assert order_id in question, question
    return flash_after(browser, button) if accept else question


def _one_action(order_id: str, action: str, actor: str) -> dict:
    """The order's one ``console_action`` row (``action``, by ``actor``) and its one ok audit
    row: returns the timeline row's detail."""
    ((detail, who),) = console_actions(order_id)
    assert (detail["action"], who) == (action, actor)
    (row,) = audit_rows(f"order_{action}")
    assert (row.actor, row.target, row.outcome) == (actor, f"order:{order_id}", "ok")
    return detail


def test_actions_on_orders_needing_attention(browser, console_api, catalog, tmp_path):
    from selenium.webdriver.common.by import By

    catalog({"P": 20})
    base, key = console_api
    fake = FakePaymentProvider()
    retried, refunded, cancelled = (_flagged(fake, REJECTED) for _ in range(3))
    mismatched = _flagged(fake, "amount_mismatch")
    assert stock_of("P") == (20, 8)
    actor = log_in(browser, f"{base}/console/orders/{retried}", key)
    shots = tmp_path / "screenshots"

    # The actions the page offers an order whose paid booking the warehouse refused.
    panel = _by_id(browser, "order-actions").text
    assert REJECTED in panel
    for action in ("retry", "refund", "cancel", "resolve"):
        assert browser.find_elements(By.ID, f"action-{action}"), action
    screenshot(browser, shots, "order-actions.png")

    # Retry: the booking is sent again (the order back in PAID, shipping.book on the broker).
    flash = _act(browser, base, retried, "retry")
    assert flash == f"order {retried}: shipping.book sent again"
    assert browser.find_element(By.ID, "order-status").text == "PAID"
    assert not browser.find_elements(By.ID, "order-actions")  # only for NEEDS_ATTENTION
    status, reason, deadline = order_of(retried)
    assert (status, reason) == ("PAID", None) and deadline is not None and deadline > now()
    assert queued("shipping") == [("shipping.book", retried)]
    assert _one_action(retried, "retry", actor)["step"] == "shipping.book"
    assert actor in _by_id(browser, "timeline").text

    # Refund: everything captured, the order stays where it is.
    flash = _act(browser, base, refunded, "refund")
    assert flash.startswith(f"order {refunded}: full refund requested (console-")
    assert browser.find_element(By.ID, "order-status").text == "NEEDS_ATTENTION"
    assert order_of(refunded)[0] == "NEEDS_ATTENTION" and stock_of("P") == (20, 8)
    with unit_of_work() as s:
        (refund,) = s.scalars(select(Refund).where(Refund.order_id == refunded))
    assert (refund.status, refund.actor, refund.amount) == ("REQUESTED", actor, 2000)
    assert refund.refund_no in flash
    assert refund.refund_no in browser.find_element(By.ID, "payment").text
    assert _one_action(refunded, "refund", actor)["refund_no"] == refund.refund_no

    # Cancel: a dismissed confirm sends nothing; an accepted one releases the stock and refunds.
    before = snapshot(cancelled)
    question = _act(browser, base, cancelled, "cancel", accept=False)
    assert question.startswith(f"Cancel order {cancelled}? Its stock is released")
    assert browser.find_element(By.ID, "order-status").text == "NEEDS_ATTENTION"
    assert snapshot(cancelled) == before and console_actions(cancelled) == []
    assert audit_rows("order_cancel") == []
    flash = _act(browser, base, cancelled, "cancel")
    assert flash == f"order {cancelled} cancelled (refunding what was paid)"
    assert browser.find_element(By.ID, "order-status").text == "CANCELLED"
    assert order_of(cancelled)[0] == "CANCELLED" and stock_of("P") == (20, 6)
    assert _one_action(cancelled, "cancel", actor)["reason"].startswith("booking_rejected")

    # A retry with no step to run again is refused on the page, and changes nothing.
    before = snapshot(mismatched)
    flash = _act(browser, base, mismatched, "retry")
    assert flash.startswith("cannot retry: no step failed")
    assert "err" in browser.find_element(By.ID, "flash").get_attribute("class").split()
    assert snapshot(mismatched) == before and console_actions(mismatched) == []
    assert [(r.outcome, r.target) for r in audit_rows("order_retry")] == [
        ("ok", f"order:{retried}"), ("refused", f"order:{mismatched}")]  # fmt: skip

    # Resolve, with the note typed in: the amount taken is accepted and the booking starts.
    note = "buyer paid the rest by bank transfer"
    browser.get(f"{base}/console/orders/{mismatched}")
    _by_id(browser, "resolve-note").send_keys(note)
    button = browser.find_element(By.ID, "action-resolve")
    button.click()
    assert answer_confirm(browser, True).startswith(f"Mark order {mismatched} as handled")
    assert flash_after(browser, button) == f"order {mismatched} resolved: back to PAID"
    assert browser.find_element(By.ID, "order-status").text == "PAID"
    assert order_of(mismatched)[:2] == ("PAID", None)
    detail = _one_action(mismatched, "resolve", actor)
    assert (detail["note"], detail["reason"], detail["to"]) == (note, "amount_mismatch", "PAID")
    assert audit_rows("order_resolve")[0].detail["note"] == note
    with unit_of_work() as s:
        move = s.execute(
            select(OrderEvent.from_status, OrderEvent.to_status, OrderEvent.detail)
            .where(OrderEvent.order_id == mismatched, OrderEvent.kind == "transition")
            .order_by(OrderEvent.id.desc())
            .limit(1)
        ).one()
    assert move[:2] == ("NEEDS_ATTENTION", "PAID") and move[2]["resolved"] == note
    assert note in _by_id(browser, "timeline").get_attribute("textContent")
    screenshot(browser, shots, "order-resolved.png")


def test_bulk_dead_letters_endpoint_health_and_admin_pages(browser, console_api, catalog, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    catalog({"P": 5})
    base, key = console_api
    order_id = accept_message(order_message("P"), channel="test").order_id
    polls = [dead_letter(oid, task="tracking.poll", queue="tracking", error="carrier 502")
             for oid in (order_id, order_id, None)]  # fmt: skip
    creates = [dead_letter(order_id), dead_letter(None, age=timedelta(minutes=5))]
    seed_endpoints()  # shop-a paused, shop-b failing, shop-c healthy, shop-d inactive
    with unit_of_work() as s:
        operators.create(s, "li.wei", PASSWORD, Role.OPERATOR)
        cipher = cipher_from_setting(get_settings().key_encryption_key)
        issued = api_keys.create_key(s, source="shop-a", now=now(), cipher=cipher)
    actor = log_in(browser, f"{base}/console/attention", key)
    shots = tmp_path / "screenshots"

    # Attention: every endpoint's health, by the seeded deliveries and failures.
    rows = {s: _by_id(browser, f"endpoint-{s}").text for s in ("shop-a", "shop-b", "shop-c")}
    rows["shop-d"] = browser.find_element(By.ID, "endpoint-shop-d").text
    assert "paused since" in rows["shop-a"] and " 8 2 50 min" in rows["shop-a"], rows
    assert "failing 2 1 12 min" in rows["shop-b"], rows
    assert rows["shop-c"].endswith("active 0 0 —") and "inactive 0 0 —" in rows["shop-d"], rows
    assert _by_id(browser, "dl-count").text == "5"
    screenshot(browser, shots, "attention.png")

    # Dead letters by filter: the preview, a dismissed confirm, then the replay.
    form = _by_id(browser, "bulk-filter")
    form.find_element(By.NAME, "task").send_keys("tracking.poll")
    with new_page(browser):
        form.find_element(By.ID, "bulk-preview").click()
    assert _by_id(browser, "bulk-count").text == "3"
    assert "task tracking.poll" in browser.find_element(By.ID, "bulk-match").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#bulk-sample tr")) == 1 + 3
    before = statuses()
    browser.find_element(By.ID, "bulk-replay").click()
    assert answer_confirm(browser, False) == "Replay 3 dead letters?"
    assert statuses() == before and audit_rows("dlq_bulk_replay") == []
    button = browser.find_element(By.ID, "bulk-replay")
    button.click()
    assert answer_confirm(browser, True) == "Replay 3 dead letters?"
    assert flash_after(browser, button) == "replayed 3 dead letters; 0 still match"
    assert _by_id(browser, "bulk-count").text == "0"
    after = statuses()
    assert [after[i] for i in polls] == ["REPLAYED"] * 3
    assert [after[i] for i in creates] == ["OPEN", "OPEN"]
    replayed = Counter(queued("tracking"))
    assert replayed == {("tracking.poll", order_id): 2, ("tracking.poll", None): 1}
    (row,) = audit_rows("dlq_bulk_replay")
    assert (row.actor, row.outcome, row.target) == (actor, "ok", "dead_letters")
    assert row.detail == {"filter": {"task": "tracking.poll"}, "count": 3, "remaining": 0}
    ((detail, who),) = console_actions(order_id)
    assert (detail["action"], sorted(detail["dead_letter_ids"]), who) == (
        "dlq_bulk_replay", sorted(polls[:2]), actor)  # fmt: skip

    # Operators: the seeded account listed; one created through the form.
    browser.get(f"{base}/console/operators")
    table = _by_id(browser, "operators")
    assert "li.wei operator" in table.text and browser.find_elements(By.ID, "disable-li.wei")
    page = browser.find_element(By.CSS_SELECTOR, "form[action='/console/operators']")
    page.find_element(By.NAME, "name").send_keys("zhang.min")
    page.find_element(By.NAME, "password").send_keys(PASSWORD)
    Select(page.find_element(By.NAME, "role")).select_by_visible_text("viewer")
    button = page.find_element(By.ID, "create-operator")
    button.click()
    assert flash_after(browser, button) == "zhang.min created (viewer)"
    assert "zhang.min viewer" in _by_id(browser, "operators").text
    with unit_of_work() as s:
        assert {o.name: o.role for o in operators.list_all(s)} == {
            "li.wei": Role.OPERATOR, "zhang.min": Role.VIEWER}  # fmt: skip

    # API keys: the key listed by its public id, never its secret.
    browser.get(f"{base}/console/keys")
    keys = _by_id(browser, "keys")
    assert f"{issued.key_id} shop-a active" in keys.text and "can sign" in keys.text
    assert issued.api_key not in browser.page_source
    assert browser.find_elements(By.ID, f"revoke-{issued.key_id}")

    # Callbacks: pause shop-b, resume it; a dismissed resume of shop-a changes nothing.
    browser.get(f"{base}/console/callbacks")
    listed = _by_id(browser, "callbacks").text
    assert "shop-a https://a.example/cb paused" in listed and "shop-d" in listed
    assert "shop-b https://b.example/cb active 2 1" in listed
    browser.find_element(By.ID, "resume-shop-a").click()
    assert answer_confirm(browser, False) == "Resume shop-a? Its 2 held deliveries go out again."
    assert _endpoint("shop-a")[:2] == (True, 8)
    button = browser.find_element(By.ID, "pause-shop-b")
    button.click()
    assert answer_confirm(browser, True).startswith("Pause shop-b? Nothing is sent to it")
    assert flash_after(browser, button) == "shop-b paused: 1 pending deliveries held"
    assert _endpoint("shop-b") == (True, 2, ["DELIVERED", "PAUSED"])
    button = browser.find_element(By.ID, "resume-shop-b")
    button.click()
    assert answer_confirm(browser, True) == "Resume shop-b? Its 1 held deliveries go out again."
    assert flash_after(browser, button) == "shop-b resumed: 1 held deliveries due now"
    assert _endpoint("shop-b") == (False, 0, ["DELIVERED", "PENDING"])
    assert _endpoint("shop-a")[:2] == (True, 8)
    assert [(r.actor, r.target, r.detail) for r in audit_rows("callback_pause")] == [
        (actor, "shop-b", {"deliveries": 1})]  # fmt: skip
    assert [(r.actor, r.target, r.detail) for r in audit_rows("callback_resume")] == [
        (actor, "shop-b", {"deliveries": 1})]  # fmt: skip
    screenshot(browser, shots, "callbacks.png")

    # Audit: what was done here, newest first, each by this admin, as the database has it.
    browser.get(f"{base}/console/audit")
    trail = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
             for tr in _by_id(browser, "audit").find_elements(By.TAG_NAME, "tr")[1:]]  # fmt: skip
    with unit_of_work() as s:
        stored = s.execute(select(ConsoleAudit.actor, ConsoleAudit.action, ConsoleAudit.target)
                           .order_by(ConsoleAudit.id.desc())).all()  # fmt: skip
    assert [(t[1], t[2], t[3]) for t in trail] == [(a, b, c or "") for a, b, c in stored]
    done = ["callback_resume", "callback_pause", "operator_create", "dlq_bulk_replay"]
    assert [t[2] for t in trail if t[2] in done] == done and {t[1] for t in trail} == {actor}
    screenshot(browser, shots, "audit.png")


def _endpoint(source: str) -> tuple[bool, int, list[str]]:
    """(paused, consecutive failures, its deliveries' statuses) of the source's endpoint."""
    with unit_of_work() as s:
        e = s.scalars(select(CallbackEndpoint).where(CallbackEndpoint.source == source)).one()
        kinds = s.scalars(select(CallbackDelivery.status)
                          .where(CallbackDelivery.endpoint_id == e.id)
                          .order_by(CallbackDelivery.status))  # fmt: skip
        return e.paused_at is not None, e.consecutive_failures, list(kinds)


def _delivered_in_shanghai() -> tuple[str, str]:
    """An order paid, booked with yuantong and tracked to the door: (order id, waybill)."""
    fake = FakePaymentProvider()
    order_id, trade_no = awaiting_payment(fake)
    pay(fake, trade_no)
    shipping.book(order_id, FakeBookingService(), ports(), ShippingConfig(first_poll_s=3600))
    at = now()
    events = [TrackingEvent(at - timedelta(hours=h), what, where, status, code)
              for h, status, code, where, what in TRACE]  # fmt: skip
    with unit_of_work() as s:
        shipment = s.scalars(select(Shipment).where(Shipment.order_id == order_id)).one()
        result = TrackingResult(shipment.carrier, shipment.waybill, ShipmentStatus.DELIVERED,
                                "3", events, signed=True)  # fmt: skip
        tracking.apply_result(s, shipment.id, result, now=at, source="poll")
        assert shipment.carrier == "yuantong" and shipment.waybill
        return order_id, shipment.waybill


# Whether the page's font draws two Chinese characters as two glyphs: a missing font draws the
# same empty box (.notdef) for both.
DRAWN_APART = """
const family = getComputedStyle(arguments[0]).fontFamily;
const canvas = document.createElement("canvas");
canvas.width = canvas.height = 48;
const g = canvas.getContext("2d");
g.font = "32px " + family;
g.textBaseline = "top";
function draw(ch) {
  g.clearRect(0, 0, 48, 48);
  g.fillText(ch, 4, 4);
  const alpha = g.getImageData(0, 0, 48, 48).data.filter((_, i) => i % 4 === 3);
  return [alpha.join(","), alpha.filter((a) => a > 0).length];
}
const [a, inkA] = draw(arguments[1]);
const [b, inkB] = draw(arguments[2]);
return {family: family, differ: a !== b, ink: Math.min(inkA, inkB)};
"""


def test_order_tracking_in_chinese(browser, console_api, catalog, tmp_path):
    from selenium.webdriver.common.by import By

    catalog({"P": 5})
    base, key = console_api
    order_id, waybill = _delivered_in_shanghai()
    assert order_of(order_id)[0] == "DELIVERED"
    log_in(browser, f"{base}/console/attention", key)

    # Found by its waybill through the search box.
    search = browser.find_element(By.CSS_SELECTOR, "header form.search input[name=q]")
    search.send_keys(waybill)
    with new_page(browser):
        search.submit()
    assert _by_id(browser, "order-id").text == order_id
    assert browser.find_element(By.ID, "order-status").text == "DELIVERED"
    (shipment,) = browser.find_elements(By.CSS_SELECTOR, "section.parcel")
    assert "Parcel 1 of 1" in shipment.text
    assert "yuantong" in shipment.text and waybill in shipment.text and "DELIVERED" in shipment.text
    rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "table.tracking tr")[1:]]
    assert len(rows) == len(TRACE), rows
    for row, (_, status, _, where, what) in zip(rows, TRACE, strict=True):
        assert status in row and where in row and what in row, (row, what)
    assert rows[-1].endswith(f"上海市 {SIGNED}")
    assert "【上海市】快件已到达 上海转运中心" in shipment.text

    cell = browser.find_element(By.CSS_SELECTOR, "table.tracking tr:last-child td:last-child")
    drawn = browser.execute_script(DRAWN_APART, cell, "签", "收")
    assert drawn["differ"] and drawn["ink"] > 50, drawn
    assert "Noto Sans CJK" in drawn["family"], drawn
    shot = screenshot(browser, tmp_path / "screenshots", "order-tracking.png",
                      docs_name="console-order.png")  # fmt: skip
    assert shot.stat().st_size > 10_000
