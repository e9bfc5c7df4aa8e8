"""Receipt on real workers and beat: a delivered order waits for its buyer, who confirms through
the API; the after-sale window then completes it in beat's sweep."""

from __future__ import annotations

from datetime import datetime

from services.sweeper import HEARTBEAT_KEY
from tests.conftest import redis_client, wait_until
from tests.e2e.test_shipping import paid_order, transitions


def _swept_after(moment: str, seconds: float) -> bool:
    """Whether beat's sweep has run ``seconds`` after ``moment`` (its heartbeat, by Redis's
    clock, which on this one machine is the database's)."""
    stamped = redis_client().get(HEARTBEAT_KEY)
    return (
        stamped is not None
        and float(stamped) >= datetime.fromisoformat(moment).timestamp() + seconds
    )


def test_a_delivered_order_waits_for_the_buyer_then_completes_after_the_window(
    start_pipeline, catalog, monkeypatch
):
    monkeypatch.setenv("AUTO_RECEIVE_S", "3600")  # the clock would take an hour: the buyer won't
    monkeypatch.setenv("AFTERSALE_WINDOW_S", "1")
    catalog({"R": 5})
    p = start_pipeline(shipping=True)
    oid = paid_order(p, "R", 1, provider="alipay")
    wait_until(lambda: p.get_order(oid)["status"] == "DELIVERED", 90)
    # Beat sweeps every 0.5 s in tests; the order still waits for its buyer after several.
    delivered_at = p.get_order(oid)["delivered_at"]
    wait_until(lambda: _swept_after(delivered_at, 2.0), 30)
    assert p.get_order(oid)["status"] == "DELIVERED"

    confirmed = p.post(f"/v1/orders/{oid}/receipt", {})
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] in ("RECEIPT_CONFIRMED", "COMPLETED")
    wait_until(lambda: p.get_order(oid)["status"] == "COMPLETED", 60)
    view = p.get_order(oid)
    assert transitions(view)[-3:] == ["DELIVERED", "RECEIPT_CONFIRMED", "COMPLETED"]
    by = {e["to"]: e["actor"] for e in view["timeline"] if e["kind"] == "transition"}
    assert by["RECEIPT_CONFIRMED"].startswith("api:") and by["COMPLETED"] == "sweeper"
