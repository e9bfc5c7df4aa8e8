"""The console's pure parts, without a database: the charts' hour slots, durations, axes, bar
geometry and line paths (services/console_charts.py), the order list's filter, age and cursor
(services/console_orders.py), and the table of statuses by meaning (api/console_pages.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from api.console_pages import TONES, tone
from domain.aftersale import ReturnStatus
from domain.orders import OrderStatus
from domain.payments import PaymentStatus, RefundStatus
from domain.tracking import ShipmentStatus
from services import console_charts as charts
from services.console_orders import Cursor, OrderFilter, parse_age


def test_order_list_pure_parts():
    assert parse_age("") is None and parse_age("90") == 5400 and parse_age("45m") == 2700
    assert parse_age("2H") == 7200 and parse_age("1d") == 86400 and parse_age(" 30 s ") == 30
    parsed = OrderFilter.parse(status=" paid ", provider="Stripe")
    assert parsed == OrderFilter("PAID", provider="stripe")
    at = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert Cursor.parse(Cursor(at, "abc-1").token()) == Cursor(at, "abc-1")


def test_every_status_has_a_meaning():
    assert {tone(s) for s in OrderStatus} == {"tone-good", "tone-wait", "tone-bad", "tone-off"}
    assert (tone("COMPLETED"), tone("DELIVERED")) == ("tone-good", "tone-good")
    assert (tone("NEEDS_ATTENTION"), tone("REJECTED")) == ("tone-bad", "tone-bad")
    assert (tone("CANCELLED"), tone("EXPIRED")) == ("tone-off", "tone-off")
    assert tone("AWAITING_PAYMENT") == tone("PAID") == "tone-wait"
    assert tone("PAID", "payment") == "tone-good" and tone("CLOSED", "payment") == "tone-off"
    assert tone("EXCEPTION", "shipment") == "tone-bad" and tone("OPEN", "dead_letter") == "tone-bad"
    known = {*OrderStatus, *PaymentStatus, *RefundStatus, *ShipmentStatus, *ReturnStatus, "OPEN",
             "DISCARDED", "ok", "paused", "failing", "inactive"}  # fmt: skip
    assert tone("REQUESTED", "return") == "tone-bad"  # waits for a person
    assert all(s in known for kind in TONES.values() for group in kind.values() for s in group)


def test_hour_window_and_durations():
    now = datetime(2026, 3, 1, 14, 25, 7, tzinfo=UTC)
    w = charts.hour_window(now)
    assert w.start == datetime(2026, 2, 28, 15, tzinfo=UTC)
    assert w.end == datetime(2026, 3, 1, 15, tzinfo=UTC)
    assert w.label(0) == "15:00" and w.label(23) == "14:00"
    seconds = (None, 0.25, 4.25, 42, 250, 3600, 11100, 190000)
    assert [charts.format_duration(s) for s in seconds] == [
        "—", "250 ms", "4.2 s", "42 s", "4 min 10 s", "1 h", "3 h 5 min", "2 d 4 h"]  # fmt: skip
    assert [charts.nice_ceiling(v) for v in (0, 0.3, 1, 3, 7, 10, 11, 180, 2001)] == [
        1, 0.5, 1, 5, 10, 10, 20, 200, 5000]  # fmt: skip


def test_axis_labels_are_short():
    figures = (0, 0.5, 200, 5000, 10000, 20000, 150000, 1_500_000, 2e6)
    assert [charts.axis_label(v) for v in figures] == [
        "0", "0.5", "200", "5000", "10k", "20k", "150k", "1.5M", "2M"]  # fmt: skip


def test_bar_chart_geometry():
    c = charts.bar_chart([0, 5, 10], ["a", "b", "c"], unit="transitions", width=130, height=120,
                         left=10, bottom=20, tick_every=2)  # fmt: skip
    assert c.y_max == 10
    assert [(b.x, b.y, b.width, b.height) for b in c.bars] == [
        (14.0, 100.0, 32.0, 0.0),
        (54.0, 50.0, 32.0, 50.0),
        (94.0, 0.0, 32.0, 100.0),
    ]
    assert c.bars[1].title == "b: 5 transitions" and c.ticks == ((30.0, "a"), (110.0, "c"))
    with pytest.raises(ValueError):
        charts.bar_chart([1], [])


def test_line_path_gaps_and_scale():
    assert charts.line_path([None, None], width=10, height=10, y_max=1) == ""
    assert (
        charts.line_path([0, 5, 10], width=100, height=10, y_max=10)
        == "M0.0 10.0 L50.0 5.0 L100.0 0.0"
    )
    # A gap breaks the line; a lone value is a dot; values over the top are clipped.
    assert charts.line_path([2, None, 4, 20, None], width=40, height=10, y_max=10) == (
        "M0.0 8.0 h0.01 M20.0 6.0 L30.0 0.0")  # fmt: skip
