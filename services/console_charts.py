"""The pipeline page's last 24 hours: transitions per hour, the time orders spend in each stage
(median and p90, per hour and over the day) and rejections by reason, drawn as inline SVG.

Two halves:

* **pure** (no database; ``tests/integration/test_console_operating.py`` tests them alone): the
  hour slots of a window (:func:`hour_window`), duration text (:func:`format_duration`), a
  1-2-5 axis top (:func:`nice_ceiling`), a bar chart's rectangles (:func:`bar_chart`) and a
  line's SVG path with gaps for empty hours (:func:`line_path`). The console's CSP allows no
  inline script or style, so the charts are plain SVG elements whose geometry is computed here
  and whose colours come from ``console.css`` classes; a bar's ``<title>`` is its tooltip.
* **reads** (:func:`activity`, :func:`rejections`): one pass over the window's transitions
  and one GROUP BY over rejected orders.

Time spent in a stage is measured on each transition *out* of it in the window: its
``created_at`` minus the order's previous transition's (the one *into* the stage), both from
``order_events``, by the database's clock. An hour's figures belong to the hour the orders left
the stage, so a stage nobody left (orders still waiting) has no figure: the "oldest waiting"
table shows those.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from domain.orders import OrderStatus
from models import Order

HOURS = 24
#: Stages in pipeline order (the latency table's rows).
STAGES: tuple[str, ...] = tuple(s.value for s in OrderStatus)

# --- pure ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HourWindow:
    """``hours`` whole hours ending with the one that holds ``now``: slot ``i`` is
    ``[start + i h, start + (i + 1) h)``; the last slot is the current, partial hour."""

    start: datetime
    hours: int

    @property
    def end(self) -> datetime:
        return self.start + timedelta(hours=self.hours)

    def label(self, slot: int) -> str:
        return (self.start + timedelta(hours=slot)).strftime("%H:00")


def hour_window(now: datetime, hours: int = HOURS) -> HourWindow:
    """The window of ``hours`` hour slots whose last slot holds ``now`` (its timezone kept)."""
    if hours < 1:
        raise ValueError("hours must be at least 1")
    this_hour = now.replace(minute=0, second=0, microsecond=0)
    return HourWindow(this_hour - timedelta(hours=hours - 1), hours)


def format_duration(seconds: float | None) -> str:
    """A duration as a person reads it, two units at most: ``"—"`` for None, ``"850 ms"``,
    ``"42 s"``, ``"4 min 10 s"``, ``"3 h 5 min"``, ``"2 d 4 h"``. Negative is shown as 0."""
    if seconds is None:
        return "—"
    s = max(0.0, seconds)
    if s < 1:
        return f"{round(s * 1000)} ms"
    if s < 60:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    whole = int(s)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "min", 60),
                                      ("min", 60, "s", 1)):  # fmt: skip
        if whole >= size:
            major, rest = divmod(whole, size)
            minor = rest // sub_size
            return f"{major} {unit} {minor} {sub}" if minor else f"{major} {unit}"
    return f"{whole} s"  # pragma: no cover - the loop always returns for s >= 60


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 5 times 10^k that is at least ``value`` (an axis top); 1 for 0 or
    less."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 5.0, 10.0):
        if step * power >= value * (1 - 1e-12):
            return step * power
    return 10.0 * power  # pragma: no cover - 10 times power always suffices


def axis_label(value: float) -> str:
    """An axis figure, short: ``"0"``, ``"0.5"``, ``"200"``, ``"5000"``, ``"20k"``, ``"1.5M"``."""
    for size, suffix in ((1e6, "M"), (1e4, "k")):
        if abs(value) >= size:
            scale = 1e3 if suffix == "k" else size
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    value: int
    title: str


@dataclass(frozen=True, slots=True)
class BarChart:
    """Rectangles in a ``width`` by ``height`` viewBox: the plot is inset by ``left`` (y labels)
    and ``bottom`` (x labels); ``ticks`` are (x, label) under the bars, ``y_max`` the axis top."""

    width: int
    height: int
    left: int
    bottom: int
    bars: tuple[Bar, ...]
    ticks: tuple[tuple[float, str], ...]
    y_max: float


def bar_chart(
    values: Sequence[int],
    labels: Sequence[str],
    *,
    unit: str = "",
    width: int = 720,
    height: int = 170,
    left: int = 44,
    bottom: int = 20,
    tick_every: int = 3,
) -> BarChart:
    """One bar per value, left to right, scaled to :func:`nice_ceiling` of the largest; a zero
    is a bar of height 0 (its tooltip still says 0). ``labels[i]`` names slot ``i`` in the
    tooltip, and every ``tick_every``-th one is printed under the axis."""
    if len(values) != len(labels):
        raise ValueError("one label per value")
    y_max = nice_ceiling(max(values, default=0))
    plot_w, plot_h = width - left, height - bottom
    slot = plot_w / max(1, len(values))
    bars, ticks = [], []
    for i, (value, label) in enumerate(zip(values, labels, strict=True)):
        h = plot_h * value / y_max
        x = left + i * slot
        suffix = f" {unit}" if unit else ""
        bars.append(Bar(round(x + slot * 0.1, 2), round(plot_h - h, 2), round(slot * 0.8, 2),
                        round(h, 2), value, f"{label}: {value}{suffix}"))  # fmt: skip
        if i % tick_every == 0:
            ticks.append((round(x + slot / 2, 2), label))
    return BarChart(width, height, left, bottom, tuple(bars), tuple(ticks), y_max)


def line_path(values: Sequence[float | None], *, width: float, height: float,
              y_max: float) -> str:  # fmt: skip
    """An SVG path through ``values`` spread evenly over ``width`` (the first at x 0, the last
    at ``width``; y 0 at the bottom), scaled to ``y_max``. None is a gap: the line stops and
    starts again at the next value; an isolated value is a dot-length segment. ``""`` when
    every value is None."""
    n = len(values)
    step = width / (n - 1) if n > 1 else 0.0
    scale = height / y_max if y_max > 0 else 0.0
    parts: list[str] = []
    drawing = False
    for i, v in enumerate(values):
        if v is None:
            drawing = False
            continue
        x, y = round(i * step, 2), round(height - min(v, y_max) * scale, 2)
        isolated = not drawing and (i + 1 >= n or values[i + 1] is None)
        parts.append(f"{'L' if drawing else 'M'}{x} {y}" + (" h0.01" if isolated else ""))
        drawing = True
    return " ".join(parts)


# --- reads -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StageLatency:
    """Time spent in ``stage`` by the orders that left it in the window: over the whole window
    (``count``, ``p50_s``, ``p90_s``) and per hour slot (``hourly_p50`` / ``hourly_p90``, None
    for an hour nobody left it), with the sparkline's paths."""

    stage: str
    count: int
    p50_s: float | None
    p90_s: float | None
    hourly_p50: tuple[float | None, ...]
    hourly_p90: tuple[float | None, ...]
    path_p50: str
    path_p90: str
    y_max: float


@dataclass(frozen=True, slots=True)
class Activity:
    window: HourWindow
    per_hour: tuple[int, ...]  # transitions per hour slot
    throughput: BarChart
    stages: tuple[StageLatency, ...]

    @property
    def total(self) -> int:
        return sum(self.per_hour)


SPARK_W, SPARK_H = 240, 36

# The window's transitions with the previous transition of the same order: from the window
# itself (lag), else (the order entered the stage before the window) one lookup on
# ix_order_events_order_id_id. Intake's transition (no from_status) counts but has no stay.
_STAYS = text(
    """
    WITH win AS (
        SELECT e.id, e.order_id, e.from_status, e.created_at,
               lag(e.created_at) OVER (PARTITION BY e.order_id ORDER BY e.id) AS prev_at
        FROM order_events e
        WHERE e.kind = 'transition' AND e.created_at >= :start AND e.created_at < :end
    ), stays AS (
        SELECT floor(date_part('epoch', w.created_at - :start) / 3600)::int AS slot,
               w.from_status AS stage,
               CASE WHEN w.from_status IS NOT NULL THEN date_part('epoch', w.created_at -
                   coalesce(w.prev_at, (SELECT max(p.created_at) FROM order_events p
                                        WHERE p.order_id = w.order_id AND p.kind = 'transition'
                                          AND p.id < w.id))) END AS spent
        FROM win w
    )
    SELECT grouping(slot) = 1 AS whole_window, slot, stage, count(*) AS n,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY spent) AS p50,
           percentile_cont(0.9) WITHIN GROUP (ORDER BY spent) AS p90
    FROM stays
    GROUP BY GROUPING SETS ((slot, stage), (stage))
    """
)


def activity(session: Session, *, hours: int = HOURS) -> Activity:
    """Transitions per hour and time per stage over the last ``hours`` hour slots (the window
    ends with the database's current hour). One statement: the window's transitions are read
    from the partial index ``ix_order_events_transition_created_at``."""
    now = session.scalar(select(func.now()))
    assert now is not None
    window = hour_window(now.astimezone(UTC), hours)
    rows = session.execute(_STAYS, {"start": window.start, "end": window.end}).all()
    per_hour = [0] * hours
    hourly: dict[str, tuple[list[float | None], list[float | None]]] = {}
    whole: dict[str, tuple[int, float | None, float | None]] = {}
    for whole_window, slot, stage, n, p50, p90 in rows:
        if whole_window:
            if stage is not None:
                whole[stage] = (int(n), _f(p50), _f(p90))
            continue
        per_hour[slot] += int(n)
        if stage is not None:
            p50s, p90s = hourly.setdefault(stage, ([None] * hours, [None] * hours))
            p50s[slot], p90s[slot] = _f(p50), _f(p90)
    labels = [window.label(i) for i in range(hours)]
    chart = bar_chart(per_hour, labels, unit="transitions", tick_every=max(1, hours // 8))
    order = {s: i for i, s in enumerate(STAGES)}
    stages = tuple(
        _stage(stage, whole[stage], hourly.get(stage, ([None] * hours, [None] * hours)))
        for stage in sorted(whole, key=lambda s: order.get(s, len(order)))
    )
    return Activity(window, tuple(per_hour), chart, stages)


def _f(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _stage(
    stage: str,
    whole: tuple[int, float | None, float | None],
    hourly: tuple[list[float | None], list[float | None]],
) -> StageLatency:
    p50s, p90s = hourly
    y_max = nice_ceiling(max((v for v in p90s if v is not None), default=0.0))
    size = {"width": SPARK_W, "height": SPARK_H, "y_max": y_max}
    return StageLatency(
        stage, whole[0], whole[1], whole[2], tuple(p50s), tuple(p90s),
        line_path(p50s, **size), line_path(p90s, **size), y_max,
    )  # fmt: skip


def rejections(session: Session, *, hours: int = HOURS) -> list[tuple[str, int]]:
    """Orders received in the last ``hours`` hours and rejected, per reason, most first
    (``ix_orders_status_created_at``; an order is rejected at its first step, so its creation
    time stands for the rejection's). A rejection with no reason is listed as ``""``."""
    n = func.count().label("n")
    rows = session.execute(
        select(func.coalesce(Order.reason, ""), n)
        .where(
            Order.status == OrderStatus.REJECTED.value,
            Order.created_at >= func.now() - timedelta(hours=hours),
        )
        .group_by(func.coalesce(Order.reason, ""))
        .order_by(n.desc(), func.coalesce(Order.reason, ""))
    )
    return [(str(reason), int(count)) for reason, count in rows]
