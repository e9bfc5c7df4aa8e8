"""The orderflow CLI against real PostgreSQL: output and exit codes."""

from __future__ import annotations

import os
import subprocess
import sys

from sqlalchemy import select, text

from models import DeadLetter
from services import dead_letters
from services.unit_of_work import unit_of_work
from settings import get_settings
from workers.broker import queue_depths


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_db_upgrade_reports_head(db):
    from models.migrate import head_revision

    run = cli("db", "upgrade")
    assert run.returncode == 0, run.stderr
    assert f"database at revision {head_revision()}" in run.stdout


def test_stock_report_and_drift(catalog):
    catalog({"A": 7})
    run = cli("stock", "report")
    assert run.returncode == 0
    assert "A" in run.stdout and "7" in run.stdout and "counters match the ledger" in run.stdout
    with unit_of_work() as s:  # corrupt a counter behind the ledger's back
        s.execute(text("UPDATE stock SET on_hand = 9 WHERE sku = 'A'"))
    run = cli("stock", "report")
    assert run.returncode == 1
    assert "counters differ from the ledger" in run.stdout and '"ledger_on_hand": 7' in run.stdout


def test_unknown_order_is_one_line_error(db):
    run = cli("orders", "show", "no-such-order")
    assert run.returncode == 1
    assert run.stderr.strip().startswith("error:") and "no-such-order" in run.stderr
    assert "Traceback" not in run.stderr


def test_orders_list_rejects_unknown_status(db):
    run = cli("orders", "list", "--status", "NOPE")
    assert run.returncode == 1 and "status: unknown status" in run.stderr


def test_intake_missing_file(db, tmp_path):
    run = cli("intake", str(tmp_path / "missing.jsonl"))
    assert run.returncode == 1 and "does not exist" in run.stderr


def test_dlq_list_replay_discard(db):
    with unit_of_work() as s:
        ids = [
            dead_letters.record(
                s,
                task_name="orders.process",
                task_id=f"t{i}",
                args=[f"order-{i}"],
                kwargs={},
                queue="orders",
                error=RuntimeError("boom"),
                attempts=4,
                order_id=None,
            )
            for i in range(2)
        ]
    shown = cli("dlq", "show", str(ids[0]))
    assert shown.returncode == 0 and '"error": "boom"' in shown.stdout and "order-0" in shown.stdout
    assert cli("dlq", "show", "999999").returncode == 1
    listed = cli("dlq", "list")
    assert listed.returncode == 0 and "orders.process" in listed.stdout and "boom" in listed.stdout
    replay = cli("dlq", "replay", str(ids[0]))
    assert replay.returncode == 0, replay.stderr
    # the task is back on its queue (a Redis list or a RabbitMQ queue)
    assert queue_depths(get_settings().effective_broker_url, ["orders"]) == {"orders": 1}
    assert cli("dlq", "discard", str(ids[1])).returncode == 0
    again = cli("dlq", "replay", str(ids[0]))
    assert again.returncode == 1 and "already replayed" in again.stderr
    with unit_of_work() as s:
        assert sorted(s.scalars(select(DeadLetter.status))) == ["DISCARDED", "REPLAYED"]


def test_orders_list_filters_by_provider_status_and_age(catalog):
    from producers.intake import accept_message
    from tests.conftest import order_message

    catalog({"A": 5})
    for provider in ("alipay", "stripe", "stripe"):
        accept_message(order_message("A", provider=provider), channel="test")
    run = cli("orders", "list", "--provider", "stripe", "--status", "RECEIVED")
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("stripe") == 2 and "alipay" not in run.stdout
    old = cli("orders", "list", "--older-than", "1h")
    assert old.returncode == 0 and "RECEIVED" not in old.stdout  # all were made just now
    with unit_of_work() as s:  # one alipay order was placed two hours ago
        s.execute(text("UPDATE orders SET created_at = now() - interval '2 hours' "
                       "WHERE payment_provider = 'alipay'"))  # fmt: skip
    old = cli("orders", "list", "--older-than", "1h")
    assert old.returncode == 0 and old.stdout.count("RECEIVED") == 1 and "alipay" in old.stdout
    assert "stripe" not in old.stdout
    bad = cli("orders", "list", "--older-than", "soon")
    assert bad.returncode == 1 and "older-than: 'soon' is not an age" in bad.stderr
    unknown = cli("orders", "list", "--provider", "paypal")
    assert unknown.returncode == 1 and "provider: unknown provider" in unknown.stderr
