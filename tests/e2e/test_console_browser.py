"""The ops console in a real browser: Debian's Chromium (headless, driven by selenium through
chromedriver) against the API running as a uvicorn process. It logs in with the admin key, watches
the pipeline refresh itself (and its 24-hour charts drawn), lists the orders needing attention
through the order list's filter and pages, finds an order by external id, replays a dead letter
(accepting the confirm dialog) and checks the page and the database; a screenshot of each page
is written to the test's tmp_path, and with ORDERFLOW_UPDATE_SCREENSHOT=1 the pipeline's is
copied to docs/console.png for the README.

Needs ``apt-get install -y chromium chromium-driver fonts-noto-cjk`` (CI installs them).
Without them the test is skipped, unless ``ORDERFLOW_REQUIRE_BROWSER=1`` (set by CI) makes
that a failure.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select, text

from models import DeadLetter, OrderEvent
from services import dead_letters
from services.unit_of_work import unit_of_work
from settings import get_settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
README_SHOT = Path(__file__).resolve().parents[2] / "docs" / "console.png"

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


def _has_chinese_font() -> bool:
    """fontconfig knows a font covering Chinese: without one, carrier text renders as boxes."""
    try:
        found = subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return bool(found.stdout.strip())


def _require_chromium() -> None:
    """Skip (with the reason) when Chromium or chromedriver is missing; fail instead when
    ``ORDERFLOW_REQUIRE_BROWSER=1`` (CI installs both, so a missing one there is a broken CI)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if not _has_chinese_font():
        missing.append("a font for Chinese (fonts-noto-cjk)")
    if not missing:
        return
    reason = (
        f"the console browser test needs Debian's Chromium: {', '.join(missing)} not found. "
        "Install it with: apt-get install -y chromium chromium-driver fonts-noto-cjk"
    )
    if os.environ.get("ORDERFLOW_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (ORDERFLOW_REQUIRE_BROWSER=1)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def browser(tmp_path):
    _require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1360,900",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(arg)  # fmt: skip
    service = Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def console_api(procs, db, monkeypatch):
    """The API as a uvicorn process with an admin key generated for this test."""
    from workers.procs import free_port

    key = f"adm-{secrets.token_urlsafe(24)}"
    monkeypatch.setenv("ADMIN_API_KEY", key)
    get_settings.cache_clear()
    port = free_port()
    procs.api(port)
    return f"http://127.0.0.1:{port}", key


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
    shots.mkdir()

    # Not logged in: the pipeline sends the browser to the login page.
    browser.get(f"{base}/console/pipeline")
    wait.until(ec.presence_of_element_located((By.ID, "password")))
    assert "/console/login" in browser.current_url
    browser.find_element(By.ID, "password").send_keys("not-the-key")
    browser.find_element(By.ID, "login").click()
    wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "main"), "not the admin key"))
    browser.find_element(By.ID, "password").send_keys(key)
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
    assert _csp_refusals(browser) == []
    before = browser.find_element(By.ID, "updated").text
    WebDriverWait(browser, 15).until(lambda d: d.find_element(By.ID, "updated").text != before)
    browser.save_screenshot(str(shots / "pipeline.png"))
    if os.environ.get("ORDERFLOW_UPDATE_SCREENSHOT") == "1":  # a test run never dirties the tree
        shutil.copyfile(shots / "pipeline.png", README_SHOT)
    cookie = browser.get_cookie("orderflow_console")
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert key not in cookie["value"]

    # Orders: the nav link, a filter typed in lower case, statuses coloured, keyset pages.
    browser.find_element(By.ID, "nav-orders").click()
    wait.until(ec.presence_of_element_located((By.ID, "order-filter")))
    browser.find_element(By.NAME, "status").send_keys("needs_attention")
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
    browser.save_screenshot(str(shots / "orders.png"))
    browser.find_element(By.ID, "older").click()
    wait.until(ec.presence_of_element_located((By.ID, "newer")))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#orders tr")[1:]) == needing - 50

    # Order page through the search box (external id).
    search = browser.find_element(By.NAME, "q")
    search.send_keys("shop-17")
    search.submit()
    wait.until(ec.presence_of_element_located((By.ID, "timeline")))
    assert browser.find_element(By.ID, "order-id").text == order_id
    assert browser.find_element(By.ID, "order-status").text == "NEEDS_ATTENTION"
    assert "dead_letter" in browser.find_element(By.ID, "timeline").text
    browser.save_screenshot(str(shots / "order.png"))

    # Attention: dismissing the confirm dialog does nothing; accepting it replays.
    browser.get(f"{base}/console/attention")
    wait.until(ec.presence_of_element_located((By.ID, f"dl-{dl_id}")))
    assert "tracking_exception" in browser.find_element(By.ID, "needs-attention").text
    browser.save_screenshot(str(shots / "attention.png"))
    browser.find_element(By.ID, f"replay-{dl_id}").click()
    wait.until(ec.alert_is_present()).dismiss()
    assert _dead_letter_status(dl_id) == "OPEN"
    browser.find_element(By.ID, f"replay-{dl_id}").click()
    alert = wait.until(ec.alert_is_present())
    assert f"Replay dead letter {dl_id}" in alert.text
    alert.accept()
    wait.until(ec.presence_of_element_located((By.ID, "flash")))
    flash = browser.find_element(By.ID, "flash").text
    assert f"dead letter {dl_id}: replay published (task shipping.book)" in flash
    assert browser.find_element(By.ID, "replay-order").text == order_id
    assert not browser.find_elements(By.ID, f"dl-{dl_id}")
    browser.save_screenshot(str(shots / "attention-after-replay.png"))
    assert _dead_letter_status(dl_id) == "REPLAYED"
    actors = _console_actors(order_id)
    assert len(actors) == 1 and actors[0].startswith("admin-key:") and key not in actors[0]

    # The replay is on the order's timeline with who did it.
    browser.get(f"{base}/console/orders/{order_id}")
    timeline = wait.until(ec.presence_of_element_located((By.ID, "timeline"))).text
    assert "console_action" in timeline and actors[0] in timeline
    browser.save_screenshot(str(shots / "order-after-replay.png"))

    browser.get(f"{base}/console/stock")
    wait.until(ec.presence_of_element_located((By.ID, "stock")))
    browser.save_screenshot(str(shots / "stock.png"))
    assert {p.name for p in shots.iterdir()} >= {"pipeline.png", "order.png", "attention.png"}


def _csp_refusals(browser) -> list[str]:
    """The browser console's Content-Security-Policy refusals (none: the charts are plain SVG
    elements, styled from console.css)."""
    try:
        logs = browser.get_log("browser")
    except Exception:  # a driver without the log endpoint
        return []
    return [e["message"] for e in logs if "Content Security Policy" in e.get("message", "")]


def _dead_letter_status(dl_id: int) -> str:
    with unit_of_work() as s:
        return s.get(DeadLetter, dl_id).status


def _console_actors(order_id: str) -> list[str]:
    with unit_of_work() as s:
        return list(
            s.scalars(
                select(OrderEvent.actor).where(
                    OrderEvent.order_id == order_id, OrderEvent.kind == "console_action"
                )
            )
        )


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
    monkeypatch.setattr(f"{__name__}.CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setattr(f"{__name__}.CHROMEDRIVER", driver)
    if required is None:
        monkeypatch.delenv("ORDERFLOW_REQUIRE_BROWSER", raising=False)
    else:
        monkeypatch.setenv("ORDERFLOW_REQUIRE_BROWSER", required)
    missing = "no-chromium" if driver_installed else f"no-chromium, {driver}"
    with pytest.raises(outcome, match=re.escape(f"/{missing} not found")) as raised:
        _require_chromium()
    assert "apt-get install -y chromium chromium-driver" in str(raised.value)
