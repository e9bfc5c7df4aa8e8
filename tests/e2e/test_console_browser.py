"""The ops console in a real browser: Debian's Chromium (headless, driven by selenium through
chromedriver) against the API running as a uvicorn process. It logs in with the admin key, watches
the pipeline refresh itself (and its 24-hour charts drawn), lists the orders needing attention
through the order list's filter and pages, finds an order by external id, replays a dead letter
(accepting the confirm dialog) and checks the page and the database, and resolves a settlement
difference with a note; a screenshot of each page is written to the test's tmp_path, and with
ORDERFLOW_UPDATE_SCREENSHOT=1 the pipeline's is copied to docs/console.png for the README.

The browser, the API process and the helpers are tests/e2e/browser_support.py's (the console's
actions, bulk dead letters, admin pages and Chinese tracking text: test_console_browser_actions.py).
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy import text

from models import DeadLetter
from services import dead_letters
from services.unit_of_work import unit_of_work
from tests.e2e import browser_support
from tests.e2e.browser_support import csp_refusals, flash_after, new_page, screenshot
from tests.integration.test_console_actions import console_actions
from tests.integration.test_console_settlement import DAY as SETTLEMENT_DAY
from tests.integration.test_console_settlement import seed as seed_settlement

# A pipeline worth looking at: 1,400 orders over the last two hours, each with its transitions.
SEED = """
INSERT INTO orders (id, source, external_id, body_hash, status, reason, currency, total_amount,
                    payment_provider, shipping_address, stage_deadline, created_at, updated_at)
SELECT 'ord-' || lpad(g::text, 7, '0'), 'web', 'shop-' || g, md5(g::text),
       (ARRAY['RECEIVED','RESERVED','AWAITING_PAYMENT','AWAITING_PAYMENT','PAID','PAID','SHIPPED',
              'IN_TRANSIT','IN_TRANSIT','DELIVERED','COMPLETED','COMPLETED','COMPLETED',
              'COMPLETED','EXPIRED','CANCELLED','REJECTED','NEEDS_ATTENTION'])[1 + g % 18],
       CASE WHEN g % 18 = 17 THEN 'tracking_exception' END, 'CNY', 12900, 'alipay', '{}'::jsonb,
       now() + ((g % 90) - 10) * interval '1 minute',
       now() - (g % 7200) * interval '1 second', now() - (g % 7200) * interval '1 second'
FROM generate_series(1, 1400) g;
INSERT INTO order_events (order_id, kind, from_status, to_status, actor, created_at)
SELECT o.id, 'transition', t.f, t.t, 'system', o.created_at + t.n * interval '20 seconds'
FROM orders o, (VALUES (0, NULL, 'RECEIVED'), (1, 'RECEIVED', 'RESERVED'),
                       (2, 'RESERVED', 'AWAITING_PAYMENT'), (3, 'AWAITING_PAYMENT', 'PAID'))
               AS t(n, f, t)
WHERE o.status NOT IN ('RECEIVED', 'REJECTED') OR t.n = 0;
"""


def _seed() -> tuple[str, int]:
    with unit_of_work() as s:
        s.execute(text(SEED))
        order_id = "ord-0000017"  # NEEDS_ATTENTION (17 % 18 == 17)
        dl_id = dead_letters.record(
            s, task_name="shipping.book", task_id="t-17", args=[order_id], kwargs={},
            queue="shipping", error=TimeoutError("warehouse API timed out"), attempts=4,
            order_id=order_id,
        )  # fmt: skip
    return order_id, dl_id


def test_console_in_chromium(browser, console_api, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    base, key = console_api
    order_id, dl_id = _seed()
    wait = WebDriverWait(browser, 20)
    shots = tmp_path / "screenshots"

    # Not logged in: the pipeline sends the browser to the login page.
    browser.get(f"{base}/console/pipeline")
    wait.until(ec.presence_of_element_located((By.ID, "password")))
    assert "/console/login" in browser.current_url
    browser.find_element(By.ID, "password").send_keys("not-the-key")
    with new_page(browser):
        browser.find_element(By.ID, "login").click()
    wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "main"), "not the admin key"))
    browser.find_element(By.ID, "password").send_keys(key)
    with new_page(browser):
        browser.find_element(By.ID, "login").click()

    # Pipeline: funnel, throughput, oldest waiting; the live part refreshes itself.
    wait.until(ec.presence_of_element_located((By.ID, "funnel")))
    assert browser.current_url.endswith("/console/pipeline")
    funnel = browser.find_element(By.ID, "funnel").text
    assert "COMPLETED" in funnel and "1400 orders" in browser.find_element(By.ID, "live").text
    assert "AWAITING_PAYMENT" in browser.find_element(By.ID, "throughput").text
    assert "ord-" in browser.find_element(By.ID, "oldest").text
    # The last 24 hours as inline SVG (drawn under the CSP: no inline script or style).
    chart = browser.find_element(By.ID, "chart-throughput")
    assert len(chart.find_elements(By.TAG_NAME, "rect")) == 24
    assert chart.size["width"] > 600 and chart.size["height"] > 100
    latency = browser.find_element(By.ID, "stage-latency").text
    assert "AWAITING_PAYMENT" in latency and "20 s" in latency  # the seed's 20 s per stage
    assert csp_refusals(browser) == []
    before = browser.find_element(By.ID, "updated").text
    WebDriverWait(browser, 15).until(lambda d: d.find_element(By.ID, "updated").text != before)
    screenshot(browser, shots, "pipeline.png", docs_name="console.png")
    cookie = browser.get_cookie("orderflow_console")
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert key not in cookie["value"]

    # Orders: the nav link, a filter typed in lower case, statuses coloured, keyset pages.
    with new_page(browser):
        browser.find_element(By.ID, "nav-orders").click()
    wait.until(ec.presence_of_element_located((By.ID, "order-filter")))
    browser.find_element(By.NAME, "status").send_keys("needs_attention")
    with new_page(browser):
        browser.find_element(By.ID, "filter-orders").click()
    wait.until(ec.presence_of_element_located((By.ID, "orders")))
    needing = sum(1 for g in range(1, 1401) if g % 18 == 17)
    total = browser.find_element(By.ID, "orders-total").text
    assert total.startswith(f"{needing} orders matching the filter"), total
    rows = browser.find_elements(By.CSS_SELECTOR, "#orders tr")[1:]
    assert len(rows) == 50 and all("NEEDS_ATTENTION" in r.text for r in rows)
    assert rows[0].find_element(By.CSS_SELECTOR, ".status").get_attribute("class") == (
        "status tone-bad")  # fmt: skip
    assert "tracking_exception" in rows[0].text and "129.00 CNY" in rows[0].text
    copy = rows[0].find_element(By.CSS_SELECTOR, "button.copy")
    copy.click()
    WebDriverWait(browser, 5).until(lambda d: copy.text in ("copied", "selected"))
    screenshot(browser, shots, "orders.png")
    with new_page(browser):
        browser.find_element(By.ID, "older").click()
    wait.until(ec.presence_of_element_located((By.ID, "newer")))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#orders tr")[1:]) == needing - 50

    # Order page through the search box (external id).
    search = browser.find_element(By.NAME, "q")
    search.send_keys("shop-17")
    with new_page(browser):
        search.submit()
    wait.until(ec.presence_of_element_located((By.ID, "timeline")))
    assert browser.find_element(By.ID, "order-id").text == order_id
    assert browser.find_element(By.ID, "order-status").text == "NEEDS_ATTENTION"
    assert "dead_letter" in browser.find_element(By.ID, "timeline").text
    screenshot(browser, shots, "order.png")

    # Attention: dismissing the confirm dialog does nothing; accepting it replays.
    browser.get(f"{base}/console/attention")
    wait.until(ec.presence_of_element_located((By.ID, f"dl-{dl_id}")))
    assert "tracking_exception" in browser.find_element(By.ID, "needs-attention").text
    screenshot(browser, shots, "attention.png")
    browser.find_element(By.ID, f"replay-{dl_id}").click()
    wait.until(ec.alert_is_present()).dismiss()
    assert _dead_letter_status(dl_id) == "OPEN"
    button = browser.find_element(By.ID, f"replay-{dl_id}")
    button.click()
    alert = wait.until(ec.alert_is_present())
    assert f"Replay dead letter {dl_id}" in alert.text
    alert.accept()
    flash = flash_after(browser, button)
    assert f"dead letter {dl_id}: replay published (task shipping.book)" in flash
    assert browser.find_element(By.ID, "replay-order").text == order_id
    assert not browser.find_elements(By.ID, f"dl-{dl_id}")
    screenshot(browser, shots, "attention-after-replay.png")
    assert _dead_letter_status(dl_id) == "REPLAYED"
    actors = [actor for _, actor in console_actions(order_id)]
    assert len(actors) == 1 and actors[0].startswith("admin-key:") and key not in actors[0]

    # The replay is on the order's timeline with who did it.
    browser.get(f"{base}/console/orders/{order_id}")
    timeline = wait.until(ec.presence_of_element_located((By.ID, "timeline"))).text
    assert "console_action" in timeline and actors[0] in timeline
    screenshot(browser, shots, "order-after-replay.png")

    # Settlement: a day as fetch and match leave it; an admin resolves a difference with a note.
    missing_here = seed_settlement().missing_here
    browser.get(f"{base}/console/settlement?date={SETTLEMENT_DAY}")
    assert "70.80 USD" in wait.until(
        ec.presence_of_element_located((By.ID, "fig-stripe-balance-USD"))).text  # fmt: skip
    browser.find_element(By.ID, f"note-{missing_here}").send_keys("a test charge, refunded")
    button = browser.find_element(By.ID, f"resolve-{missing_here}")
    button.click()
    assert f"difference {missing_here} (stripe missing_here" in flash_after(browser, button)
    assert "a test charge, refunded" in browser.find_element(By.ID, f"diff-{missing_here}").text
    assert csp_refusals(browser) == []
    screenshot(browser, shots, "settlement.png")

    browser.get(f"{base}/console/stock")
    wait.until(ec.presence_of_element_located((By.ID, "stock")))
    screenshot(browser, shots, "stock.png")
    assert {p.name for p in shots.iterdir()} >= {"pipeline.png", "order.png", "attention.png"}


def _dead_letter_status(dl_id: int) -> str:
    with unit_of_work() as s:
        return s.get(DeadLetter, dl_id).status


@pytest.mark.parametrize(("required", "outcome"), [(None, pytest.skip.Exception),
                                                   ("1", pytest.fail.Exception)])  # fmt: skip
@pytest.mark.parametrize("driver_installed", [True, False])
def test_missing_browser_skips_unless_required(
    monkeypatch, tmp_path, required, outcome, driver_installed
):
    # Whatever this machine has installed: the paths are the test's own.
    driver = tmp_path / "chromedriver"
    if driver_installed:
        driver.touch()
    monkeypatch.setattr(browser_support, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setattr(browser_support, "CHROMEDRIVER", driver)
    monkeypatch.setattr(browser_support, "has_chinese_font", lambda: True)
    if required is None:
        monkeypatch.delenv("ORDERFLOW_REQUIRE_BROWSER", raising=False)
    else:
        monkeypatch.setenv("ORDERFLOW_REQUIRE_BROWSER", required)
    missing = "no-chromium" if driver_installed else f"no-chromium, {driver}"
    with pytest.raises(outcome, match=re.escape(f"/{missing} not found")) as raised:
        browser_support.require_chromium()
    assert "apt-get install -y chromium chromium-driver" in str(raised.value)
