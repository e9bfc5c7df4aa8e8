"""Print the last reliability run's figures as the Markdown table of docs/reliability.md.

python -m tests.reliability.report [.orderflow/reliability-results.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from settings import PROJECT_ROOT

_COLUMNS = ("scenario", "orders", "injected", "lost", "charged twice", "stock moved twice",
            "recovery", "also measured")  # fmt: skip
_SHOWN = {"scenario", "size", "injected", "accepted", "lost", "charged_twice", "charges",
          "stock_moved_twice", "statuses", "recovery_s"}  # fmt: skip


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + " --- |" * len(_COLUMNS)]
    for r in rows:
        extra = "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in r.items() if k not in _SHOWN)
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(r["statuses"].items()))
        cells = (
            r["scenario"].replace("_", " "), f"{r['accepted']} ({statuses})", r.get("injected", ""),
            r["lost"], r["charged_twice"], r["stock_moved_twice"],
            f"{r['recovery_s']} s" if "recovery_s" in r else "-", extra or "-",
        )  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    default = PROJECT_ROOT / ".orderflow" / "reliability-results.json"
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    print(table(json.loads(path.read_text())))
