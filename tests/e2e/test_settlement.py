"""Settlement end to end: orders paid and refunded through the running pipeline (API, workers,
beat) against the simulators; the bill fetched and matched by the ``maintenance.settlement_day``
task on a real worker, then the same task again (nothing recorded twice); then ``orderflow
settlement report`` and ``resolve`` as an operator runs them. Judged in the database and in
the CLI's output.

Workers keep the real clock, so the simulators keep their books in the past instead (Stripe's
``books_offset_s``, the Chinese providers' ``books`` action): today's payments land on the bill
of two days ago, which is complete (a UTC day for Stripe, a Beijing day for Alipay and WeChat
Pay)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import requests
from sqlalchemy import func, select

from domain.settlement import CHINA_STANDARD_TIME
from models import SettlementDifference, SettlementFile, SettlementLine
from services.task_names import MAINTENANCE_SETTLEMENT_DAY
from services.unit_of_work import unit_of_work
from tests.conftest import order_message, wait_until
from tests.e2e.test_payments import out_trade_no, wait_status

pytestmark = pytest.mark.e2e

DAYS_BACK = 2


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "250"})  # fmt: skip


def settled(provider: str, day: date) -> tuple[int, int, int]:
    """(files matched, lines, differences) of ``provider``'s bill of ``day``."""
    with unit_of_work() as s:
        files = s.scalars(
            select(SettlementFile).where(
                SettlementFile.provider == provider, SettlementFile.bill_date == day
            )
        ).all()
        lines = s.scalar(
            select(func.count()).where(SettlementLine.file_id.in_([f.id for f in files]))
        )
        diffs = s.scalar(
            select(func.count()).where(
                SettlementDifference.provider == provider, SettlementDifference.bill_date == day
            )
        )
        return sum(f.matched_at is not None for f in files), int(lines or 0), int(diffs or 0)


def matched_at(provider: str, day: date) -> datetime:
    with unit_of_work() as s:
        found = s.scalar(
            select(func.max(SettlementFile.matched_at)).where(
                SettlementFile.provider == provider, SettlementFile.bill_date == day
            )
        )
        assert found is not None
        return found


def test_a_stripe_day_settled_by_the_worker_twice_reported_and_resolved(start_pipeline, catalog):
    from workers.app import app

    catalog({"ST": 20}, price=2500, currency="USD")
    p = start_pipeline()
    stripe = p.stack.stripe
    stripe.books_offset_s = -DAYS_BACK * 86400
    day = (datetime.now(UTC) - timedelta(days=DAYS_BACK)).date()
    orders = [p.post_order(order_message("ST", n, provider="stripe", currency="USD"))
              for n in (1, 2)]  # fmt: skip
    for oid in orders:
        wait_status(p, oid, "AWAITING_PAYMENT")
        p.stack.pay("stripe", out_trade_no(oid))
        wait_status(p, oid, "PAID")
    refund = cli("payments", "refund", orders[1], "--refund-no", "st-r1", "--amount", "700")
    assert refund.returncode == 0, refund.stderr
    wait_until(lambda: p.stack.refunds().get(("stripe", out_trade_no(orders[1]))) == 700, 30)
    # A charge Stripe booked that we never saw, on the same day.
    created = int(datetime.combine(day, datetime.min.time(), UTC).timestamp()) + 3600
    stray = requests.post(
        f"{stripe.url}/_sim/settlement",
        timeout=5,
        json={"action": "charge", "amount": 1234, "created": created},
    )
    assert stray.status_code == 200, stray.text

    def send() -> None:
        app.send_task(MAINTENANCE_SETTLEMENT_DAY, args=["stripe", day.isoformat()],
                      queue="maintenance")  # fmt: skip

    send()
    wait_until(lambda: settled("stripe", day)[0] == 1, 60, show=lambda: settled("stripe", day))
    assert settled("stripe", day) == (1, 4, 1)  # two charges, a refund, the stray charge
    first = matched_at("stripe", day)
    send()  # the same task again (a redelivery, or an operator asking twice) changes nothing
    wait_until(lambda: matched_at("stripe", day) > first, 60)
    assert settled("stripe", day) == (1, 4, 1)

    report = cli("settlement", "report", "--date", day.isoformat(), "--provider", "stripe",
                 "--json")  # fmt: skip
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    (fig,) = data["figures"]
    gross = 2500 + 5000 + 1234
    assert (fig["gross"]["amount_minor"], fig["refunds"]["amount_minor"]) == (gross, 700)
    assert fig["net"]["amount_minor"] == gross - 700 - fig["fees"]["amount_minor"] > 0
    (diff,) = data["differences"]
    assert (diff["kind"], diff["theirs"]["amount_minor"], diff["resolved_at"]) == (
        "missing_here",
        1234,
        None,
    )
    done = cli("settlement", "resolve", str(diff["id"]), "--note", "test charge", "--by", "e2e")
    assert done.returncode == 0, done.stderr
    again = cli("settlement", "resolve", str(diff["id"]), "--note", "twice", "--by", "e2e")
    assert again.returncode == 1 and "was resolved by e2e" in again.stderr
    text = cli("settlement", "report", "--date", day.isoformat()).stdout
    assert "missing_here" in text and "e2e: test charge" in text


#: What each Chinese provider's simulator books as a payment we never saw (``/_sim/bills``).
STRAYS: dict[str, dict[str, Any]] = {
    "alipay": {"action": "trade", "amount": "12.34"},
    "wechatpay": {"action": "charge", "amount": 1234},
}


@pytest.mark.parametrize("provider", ["alipay", "wechatpay"])
def test_a_beijing_day_settled_by_the_worker_reported_with_its_difference(
    provider, start_pipeline, catalog
):
    """The same journey for Alipay's zip of GBK files and WeChat Pay's hashed CSV: the
    worker fetches both bill types of the day, matches them, and a repeat changes nothing."""
    from workers.app import app

    catalog({"SC": 20}, price=2500)
    p = start_pipeline()
    sim = p.stack.simulator(provider)

    def bills(**body: Any) -> None:
        answer = requests.post(f"{sim.url}/_sim/bills", json=body, timeout=5)
        assert answer.status_code == 200, answer.text

    bills(action="books", offset_s=-DAYS_BACK * 86400)
    day = (datetime.now(CHINA_STANDARD_TIME) - timedelta(days=DAYS_BACK)).date()
    orders = [p.post_order(order_message("SC", n, provider=provider)) for n in (1, 2)]
    for oid in orders:
        wait_status(p, oid, "AWAITING_PAYMENT")
        p.stack.pay(provider, out_trade_no(oid))
        wait_status(p, oid, "PAID")
    refund = cli("payments", "refund", orders[1], "--refund-no", f"{provider}-r1", "--amount",
                 "700")  # fmt: skip
    assert refund.returncode == 0, refund.stderr
    wait_until(lambda: p.stack.refunds().get((provider, out_trade_no(orders[1]))) == 700, 30)
    bills(**STRAYS[provider])

    def send() -> None:
        app.send_task(MAINTENANCE_SETTLEMENT_DAY, args=[provider, day.isoformat()],
                      queue="maintenance")  # fmt: skip

    send()
    wait_until(lambda: settled(provider, day)[0] == 2, 60, show=lambda: settled(provider, day))
    first = settled(provider, day)
    assert first[2] == 1, first  # the stray payment, and nothing else
    at = matched_at(provider, day)
    send()
    wait_until(lambda: matched_at(provider, day) > at, 60)
    assert settled(provider, day) == first

    report = cli("settlement", "report", "--date", day.isoformat(), "--provider", provider,
                 "--json")  # fmt: skip
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert {f["status"] for f in data["files"]} == {"stored"} and len(data["files"]) == 2
    (fig,) = data["figures"]  # the trade bill's: the fund flow is stored, not counted twice
    gross = 2500 + 5000 + 1234
    assert (fig["currency"], fig["gross"]["amount_minor"], fig["refunds"]["amount_minor"]) == (
        "CNY",
        gross,
        700,
    )
    assert 0 < fig["fees"]["amount_minor"] < gross // 100
    assert fig["net"]["amount_minor"] == gross - 700 - fig["fees"]["amount_minor"]
    (diff,) = data["differences"]
    assert (diff["kind"], diff["theirs"]["amount_minor"]) == ("missing_here", 1234)
