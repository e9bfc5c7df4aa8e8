"""ops/alerts.yml is well formed and only uses series that observability exposes (metrics.py:
the event series; collector.py: the state series)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "ops" / "alerts.yml"
METRICS_SOURCES = [ROOT / "observability" / f for f in ("metrics.py", "collector.py")]

NAME = re.compile(r"\borderflow_[a-z0-9_]+\b")
DURATION = re.compile(r"^\d+[smhdw]$")
SEVERITIES = {"critical", "warning", "info"}
# Issue 7: stuck orders, dead letters, provider down, tracking stale, queue backlog.
REQUIRED_SERIES = {
    "orderflow_orders_overdue_oldest_seconds",
    "orderflow_dead_letters_open",
    "orderflow_circuit_open",
    "orderflow_provider_calls_total",
    "orderflow_shipments_stale",
    "orderflow_queue_depth",
}


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    assert doc["groups"], "no rule groups"
    return [rule for group in doc["groups"] for rule in group["rules"]]


def exposed_names() -> set[str]:
    """Sample names observability can expose, parsed from the sources that define them.

    Counters expose ``<name>_total``, histograms ``_bucket``/``_sum``/``_count``; every other
    ``"orderflow_..."`` literal is a scrape-time gauge.
    """
    source = "\n".join(path.read_text() for path in METRICS_SOURCES)
    typed = dict(
        (name, kind)
        for kind, name in re.findall(
            r"\b(Counter|Histogram)\(\s*\"(orderflow_[a-z0-9_]+)\"", source
        )
    )
    names: set[str] = set()
    for literal in re.findall(r"\"(orderflow_[a-z0-9_]+)\"", source):
        kind = typed.get(literal)
        if kind == "Counter":
            names.add(literal + "_total")
        elif kind == "Histogram":
            names.update(literal + s for s in ("_bucket", "_sum", "_count"))
        else:
            names.add(literal)
    return names


def test_every_rule_is_complete() -> None:
    seen = set()
    for rule in rules():
        name = rule.get("alert")
        assert name and name not in seen, f"missing or duplicate alert name: {name!r}"
        seen.add(name)
        assert isinstance(rule.get("expr"), str) and rule["expr"].strip(), name
        assert DURATION.match(str(rule.get("for", ""))), f"{name}: bad 'for'"
        assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{name}: severity"
        assert str(rule.get("annotations", {}).get("summary", "")).strip(), f"{name}: summary"


def test_rules_only_reference_exposed_series() -> None:
    exposed = exposed_names()
    assert "orderflow_orders" in exposed and "orderflow_task_retries_total" in exposed
    referenced = {n for rule in rules() for n in NAME.findall(rule["expr"])}
    assert referenced - exposed == set(), "series not defined in observability/metrics.py"
    assert referenced >= REQUIRED_SERIES, "an alert required by issue 7 is missing"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_rules() -> None:
    promtool = shutil.which("promtool")
    assert promtool
    done = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_tracking_stale_fires_per_warehouse(tmp_path: Path) -> None:
    # Two exporters (instances) report the same state series: one alert per warehouse with
    # stale parcels, none for a warehouse whose parcels are tracked.
    rule = next(r for r in rules() if r["alert"] == "OrderflowTrackingStale")
    summary = rule["annotations"]["summary"].replace("{{ $value }}", "2")
    summary = summary.replace("{{ $labels.warehouse }}", "east")
    series = [
        {"series": f'orderflow_shipments_stale{{instance="{i}",warehouse="{w}"}}', "values": v}
        for i in ("api-1", "api-2")
        for w, v in (("main", "0x40"), ("east", "2x40"))
    ]
    case = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {
                        "eval_time": "31m",
                        "alertname": "OrderflowTrackingStale",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "warning", "warehouse": "east"},
                                "exp_annotations": {
                                    "summary": summary,
                                    "description": rule["annotations"]["description"],
                                },
                            }
                        ],
                    }
                ],
            }
        ],
    }
    test_file = tmp_path / "stale_test.yml"
    test_file.write_text(yaml.safe_dump(case))
    promtool = shutil.which("promtool")
    assert promtool
    done = subprocess.run(
        [promtool, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
