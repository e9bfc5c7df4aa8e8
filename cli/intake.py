"""``orderflow intake FILE.jsonl``: batch import through the same idempotent path as the API."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError as PydanticValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy.exc import SQLAlchemyError

from domain.errors import ConflictError, OrderflowError, ValidationError
from producers.intake import accept
from producers.schema import field_errors, parse_message


@dataclass
class ImportReport:
    accepted: int = 0
    duplicates: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)
    created_ids: list[str] = field(default_factory=list)


class IntakeAborted(OrderflowError):
    """The database failed mid-file: the import stops with one readable line. Lines before
    ``line`` are committed; running the same file again skips them (same keys)."""

    def __init__(self, line: int, report: ImportReport, exc: SQLAlchemyError) -> None:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        super().__init__(
            f"database error at line {line} ({type(exc).__name__}: {reason}); "
            f"{report.accepted} orders were stored before it. Fix the database and run the same "
            "file again: orders already stored are not imported twice"
        )
        self.line = line


def import_jsonl(path: Path, *, show_progress: bool = True) -> ImportReport:
    """Accept every valid line; report each bad line with its number and reason.

    Each line is its own transaction: a bad line never blocks or undoes a good one, and running
    the same file twice creates nothing new (``(source, external_id)`` is the key). The file is
    read as bytes and decoded line by line, so a line that is not UTF-8 is one bad line, not a
    refused file. A database error stops the import with :class:`IntakeAborted`.
    """
    report = ImportReport()
    lines = path.read_bytes().splitlines()
    columns = (TextColumn("intake"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not show_progress) as progress:
        task = progress.add_task("intake", total=len(lines))
        for number, raw in enumerate(lines, start=1):
            progress.advance(task)
            text = _decode(report, number, raw)
            if text is None or not text.strip():
                continue
            try:
                _import_line(report, number, text)
            except SQLAlchemyError as exc:
                raise IntakeAborted(number, report, exc) from exc
    return report


def _decode(report: ImportReport, number: int, raw: bytes) -> str | None:
    """The line as text, or None after recording why it is not UTF-8 (a BOM on line 1 is
    dropped: editors on Windows write one)."""
    try:
        return raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        byte = raw[exc.start : exc.start + 1].hex()
        report.errors.append((number, f"body: not valid UTF-8 (byte 0x{byte} at column "
                                      f"{exc.start + 1})"))  # fmt: skip
        return None


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
