"""Shared by the console's browser tests (test_console_browser.py, test_console_browser_actions.py):
Debian's Chromium (headless, driven by selenium through chromedriver) and the API as a uvicorn
process with an admin key made for the test, logging in, confirm dialogs and screenshots.

The fixtures ``browser`` and ``console_api`` reach the test modules through tests/e2e/conftest.py.

Needs ``apt-get install -y chromium chromium-driver fonts-noto-cjk`` (CI installs them). Without
them a browser test is skipped, unless ``ORDERFLOW_REQUIRE_BROWSER=1`` (set by CI) makes that a
failure.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from settings import get_settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DOCS = Path(__file__).resolve().parents[2] / "docs"
WAIT_S = 20


def has_chinese_font() -> bool:
    """fontconfig knows a font covering Chinese: without one, carrier text renders as boxes."""
    try:
        found = subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return bool(found.stdout.strip())


def require_chromium() -> None:
    """Skip (with the reason) when Chromium or chromedriver is missing; fail instead when
    ``ORDERFLOW_REQUIRE_BROWSER=1`` (CI installs both, so a missing one there is a broken CI)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if not has_chinese_font():
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
    require_chromium()
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


def waiting(browser, timeout_s: float = WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout_s)


@contextmanager
def new_page(browser) -> Iterator[None]:
    """Wrap a click or submit that loads another page: waits until the page it leaves is gone.
    Without it an element looked up right after the click may be the old page's (the new one
    has not replaced it yet) and go stale a moment later."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    page = browser.find_element(By.TAG_NAME, "html")
    yield
    waiting(browser).until(ec.staleness_of(page))


def log_in(browser, url: str, key: str) -> str:
    """Open ``url`` (the console sends the browser to its login page), log in with the admin
    key and return the session's actor (``admin-key:<fingerprint>``) as the header shows it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    browser.get(url)
    wait = waiting(browser)
    wait.until(ec.presence_of_element_located((By.ID, "password"))).send_keys(key)
    with new_page(browser):
        browser.find_element(By.ID, "login").click()
    who = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "header .who"))).text
    actor, _, role = who.partition(" ")
    assert actor.startswith("admin-key:") and key not in actor and role == "(admin)", who
    return actor


def answer_confirm(browser, accept: bool) -> str:
    """Wait for the page's confirm() dialog, accept or dismiss it; returns its question."""
    from selenium.webdriver.support import expected_conditions as ec

    alert = waiting(browser).until(ec.alert_is_present())
    question = str(alert.text)
    if accept:
        alert.accept()
    else:
        alert.dismiss()
    return question


def flash_after(browser, element) -> str:
    """The flash message of the page that replaces the one holding ``element`` (a button just
    clicked): waits for the old page to go, then for the new one's flash."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    wait = waiting(browser)
    wait.until(ec.staleness_of(element))
    return str(wait.until(ec.presence_of_element_located((By.ID, "flash"))).text)


def screenshot(browser, shots: Path, name: str, *, docs_name: str | None = None) -> Path:
    """Save the window to ``shots/name``; with ORDERFLOW_UPDATE_SCREENSHOT=1 also copy it to
    ``docs/<docs_name>`` (for the README: a test run never dirties the tree otherwise)."""
    shots.mkdir(exist_ok=True)
    path = shots / name
    assert browser.save_screenshot(str(path)), path
    if docs_name and os.environ.get("ORDERFLOW_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(path, DOCS / docs_name)
    return path


def csp_refusals(browser) -> list[str]:
    """The browser console's Content-Security-Policy refusals (none: the charts are plain SVG
    elements, styled from console.css)."""
    try:
        logs = browser.get_log("browser")
    except Exception:  # a driver without the log endpoint
        return []
    return [e["message"] for e in logs if "Content Security Policy" in e.get("message", "")]
