"""Secrets never reach logs or the timeline: a whole journey runs with known test secrets, then
every log file of every process and every timeline row is scanned for them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from models import OrderEvent
from services.unit_of_work import unit_of_work
from tests.conftest import order_message, wait_until

pytestmark = pytest.mark.e2e

SECRET_SETTINGS = (
    "STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET", "WECHATPAY_API_V3_KEY", "KUAIDI100_KEY",
    "KUAIDI100_CALLBACK_SALT", "WAREHOUSE_API_KEY",
)  # fmt: skip
KEY_FILES = ("ALIPAY_APP_PRIVATE_KEY_FILE", "WECHATPAY_PRIVATE_KEY_FILE")


def test_secrets_never_reach_logs_or_the_timeline(start_pipeline, catalog):
    catalog({"S": 10})
    p = start_pipeline(shipping=True)
    env = p.stack.env
    secrets = {name: env[name] for name in SECRET_SETTINGS}
    secrets["API_KEY"] = p.api_key
    for name in KEY_FILES:  # a line from the middle of each private key
        pem = Path(env[name]).read_text().splitlines()
        secrets[name] = pem[len(pem) // 2]
    ids = []
    for provider in ("alipay", "wechatpay", "stripe"):
        oid = p.post_order(order_message("S", 1, provider=provider))
        wait_until(lambda o=oid: p.get_order(o)["status"] == "AWAITING_PAYMENT", 60)
        p.stack.pay(provider, oid.replace("-", ""))
        ids.append(oid)
    requests.post(
        f"{p.base_url}/webhooks/stripe",
        data=b"{}",
        timeout=10,
        headers={"Stripe-Signature": "t=1,v1=00"},
    )  # a forgery: logged as a warning
    requests.post(f"{p.base_url}/v1/orders", json={}, headers={"X-API-Key": "wrong"}, timeout=10)
    for oid in ids:
        wait_until(lambda o=oid: p.get_order(o)["status"] == "COMPLETED", 90)

    logs = {path.name: path.read_text(errors="replace") for path in p.procs.log_dir.glob("*.log")}
    assert len(logs) >= 4 and sum(len(t) for t in logs.values()) > 1000  # really scanned
    with unit_of_work() as s:
        timeline = json.dumps([e.detail for e in s.scalars(select(OrderEvent))], default=str)
    for name, value in secrets.items():
        assert len(value) >= 8, name
        for log_name, text in logs.items():
            assert value not in text, f"{name} leaked into {log_name}"
        assert value not in timeline, f"{name} leaked into the timeline"
