"""``orderflow intake FILE.jsonl``: batch import through the same idempotent path as the API."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError as PydanticValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from domain.errors import ConflictError, ValidationError
from producers.intake import accept
from producers.schema import field_errors, parse_message


@dataclass
class ImportReport:
    accepted: int = 0
    duplicates: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)
    created_ids: list[str] = field(default_factory=list)


def import_jsonl(path: Path, *, show_progress: bool = True) -> ImportReport:
    """Accept every valid line; report each bad line with its number and reason.

    Each line is its own transaction: a bad line never blocks or undoes a good one, and running
    the same file twice creates nothing new (``(source, external_id)`` is the key).
    """
    report = ImportReport()
    lines = path.read_text(encoding="utf-8").splitlines()
    columns = (TextColumn("intake"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not show_progress) as progress:
        task = progress.add_task("intake", total=len(lines))
        for number, raw in enumerate(lines, start=1):
            progress.advance(task)
            if not raw.strip():
                continue
            _import_line(report, number, raw)
    return report


def _import_line(report: ImportReport, number: int, raw: str) -> None:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # also: too deeply nested, a 4300+ digit number
        reason = getattr(exc, "msg", str(exc))
        reason = "nested too deeply" if isinstance(exc, RecursionError) else reason
        report.errors.append((number, f"body: not valid JSON ({reason})"))
        return
    try:
        msg = parse_message(data)
        result = accept(msg, channel="file")
    except PydanticValidationError as exc:
        reasons = "; ".join(f"{e['field']}: {e['reason']}" for e in field_errors(exc))
        report.errors.append((number, reasons))
    except ConflictError as exc:
        report.errors.append((number, f"external_id: {exc}"))
    except ValidationError as exc:
        report.errors.append((number, str(exc)))
    else:
        if result.created:
            report.accepted += 1
            report.created_ids.append(result.order_id)
        else:
            report.duplicates += 1
