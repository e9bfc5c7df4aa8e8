"""Providers that hang or sit behind a bad network.

* A provider that holds every call longer than Redis' visibility timeout: Redis hands the
  unacknowledged ``payments.create`` to another worker while the first still waits, so two
  workers create the same payment at once. The idempotency key (and the out_trade_no) make the
  second one harmless.
* A fault proxy in front of every payment provider: answers held 1-3 s (2 s on average) with a
  2.5 s read timeout (the short form halves the holds and the timeout: the same quarter of the
  answers times out), and 10 % of requests reset. Timeouts fire, retries reuse the idempotency
  key, nothing is charged twice.
"""

from __future__ import annotations

import random
from urllib.parse import urlsplit, urlunsplit

import pytest
from sqlalchemy import text

from services.unit_of_work import unit_of_work
from tests.conftest import order_message, wait_until
from tests.helpers import pipeline_state, status_counts
from tests.reliability.conftest import FULL, size
from tests.reliability.fault_proxy import FaultProxy
from tests.reliability.invariants import check

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]
PROVIDERS = ("alipay", "wechatpay", "stripe")
_CREATE_CALLS = """
    SELECT order_id, count(*) FROM order_events
    WHERE kind = 'provider_call' AND detail->>'operation' = 'create' GROUP BY order_id
"""
_OUTCOMES = """
    SELECT count(*) FILTER (WHERE detail->>'outcome' ILIKE 'unavailable%timeout%'),
           count(*) FILTER (WHERE detail->>'outcome' ILIKE 'unavailable%connection%')
    FROM order_events WHERE kind = 'provider_call'
"""


def _create_calls() -> dict[str, int]:
    with unit_of_work() as s:
        return {o: n for o, n in s.execute(text(_CREATE_CALLS)).all()}


def _intents_per_trade(stack) -> dict[str, int]:
    """Stripe PaymentIntents per out_trade_no: 1 if every retry reused the idempotency key."""
    counts: dict[str, int] = {}
    for pi in stack.stripe.ledger()["payment_intents"]:
        trade = pi["metadata"].get("out_trade_no")
        counts[trade] = counts.get(trade, 0) + 1
    return counts


def test_provider_hangs_longer_than_the_visibility_timeout(
    start_pipeline, catalog, monkeypatch, figures
):
    # Fewer orders than payment threads in the short form: a redelivered create finds a free
    # thread at once, beside the first call's hang.
    n = size(12, 50)
    # The hang outlasts the visibility timeout plus one restore interval (1 s): Redis hands the
    # create out again while the first call still waits (the short form shortens both).
    visibility_s, hang_s = (4, 7) if FULL else (2, 4)
    monkeypatch.setenv("VISIBILITY_TIMEOUT_S", str(visibility_s))
    monkeypatch.setenv("PROVIDER_READ_TIMEOUT_S", "20")  # the client waits out the hang
    monkeypatch.setenv("CREATE_REDRIVE_S", "120")  # so only Redis' redelivery duplicates work
    # payments.create messages, which Redis hands out again while their call hangs. (In-line, a
    # redelivered orders.reserve_batch finds its orders RESERVED and creates nothing.)
    monkeypatch.setenv("PAYMENT_CREATE_INLINE", "false")
    catalog({"H": n})
    p = start_pipeline(payments_concurrency=16)
    p.stack.auto_pay(100)
    fig = figures()
    p.stack.set_faults(timeout_rate=1.0, hang_seconds=hang_s)
    fig.injected(f"every provider call held {hang_s} s; Redis visibility timeout {visibility_s} s")
    rng = random.Random(11)
    ids = [p.post_order(order_message("H", 1, provider=rng.choice(PROVIDERS))) for _ in range(n)]
    # Hold the hang until Redis has handed at least one create to a second worker.
    wait_until(lambda: max(_create_calls().values(), default=0) >= 2, 180, 0.5,
               show=pipeline_state)  # fmt: skip
    p.stack.set_faults(timeout_rate=0.0)
    wait_until(lambda: status_counts() == {"PAID": n}, 240, 0.5, show=pipeline_state)
    verdict = check(ids, p.stack)
    doubled = sum(1 for c in _create_calls().values() if c >= 2)
    assert verdict["charges"] == n
    assert set(_intents_per_trade(p.stack).values()) <= {1}
    fig.recovered(verdict, orders_created_twice_concurrently=doubled)


def _through(proxy_for: dict[str, FaultProxy], url: str) -> str:
    parts = urlsplit(url)
    proxy = proxy_for[parts.netloc]
    return urlunsplit(parts._replace(netloc=f"127.0.0.1:{proxy.port}"))


def test_latency_and_connection_resets_through_a_fault_proxy(
    pipeline_env, start_pipeline, catalog, monkeypatch, figures
):
    n = size(60, 200)
    hold = 1.0 if FULL else 0.5  # scales the holds and the read timeout alike
    _port, stack = pipeline_env
    rng = random.Random(13)
    urls = {k: stack.env[k] for k in ("ALIPAY_GATEWAY_URL", "WECHATPAY_BASE_URL",
                                      "STRIPE_API_BASE")}  # fmt: skip
    proxies: dict[str, FaultProxy] = {}
    try:
        for url in urls.values():
            host, _, port = urlsplit(url).netloc.partition(":")
            proxies[urlsplit(url).netloc] = FaultProxy(
                (host, int(port)), latency=lambda: rng.uniform(1.0, 3.0) * hold, reset_rate=0.10,
                seed=len(proxies),
            ).start()  # fmt: skip
        for key, url in urls.items():
            monkeypatch.setenv(key, _through(proxies, url))
        monkeypatch.setenv("PROVIDER_READ_TIMEOUT_S", str(2.5 * hold))
        monkeypatch.setenv("TASK_MAX_RETRIES", "10")
        catalog({"L": n})
        p = start_pipeline(payments_concurrency=16)
        p.stack.auto_pay(200)
        fig = figures()
        fig.injected(f"answers held {hold:g}-{3 * hold:g} s (mean {2 * hold:g} s) with a "
                     f"{2.5 * hold:g} s read timeout; 10 % resets")  # fmt: skip
        ids = [p.post_order(order_message("L", 1, provider=rng.choice(PROVIDERS)))
               for _ in range(n)]  # fmt: skip
        wait_until(lambda: status_counts() == {"PAID": n}, 480, 0.5, show=pipeline_state)
        verdict = check(ids, p.stack)
        with unit_of_work() as s:
            timeouts, resets = s.execute(text(_OUTCOMES)).one()
        assert timeouts > 0 and resets > 0  # the faults did reach the adapters
        assert verdict["charges"] == n
        assert set(_intents_per_trade(p.stack).values()) == {1}  # retries reused the key
        fig.recovered(verdict, timeouts=timeouts, resets=resets,
                      connections=sum(x.connections for x in proxies.values()))  # fmt: skip
    finally:
        for proxy in proxies.values():
            proxy.stop()
