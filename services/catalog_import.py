"""Catalog import and export (CSV and JSONL), through the checks and writes of
:mod:`services.catalog_admin`.

Contracts:

* **Import** (:func:`import_catalog`) upserts by SKU. By default it is all-or-nothing: every row
  is validated first; if any row is bad, *nothing* is written and every bad row is reported
  with its line number. With ``partial=True`` the good rows are written and the bad ones
  reported. Either way the writes happen in the caller's one transaction, so a failure part
  way (a concurrent insert of the same SKU, a lost connection) leaves nothing behind.
* **Files.** CSV has a header row ``sku,name,price_amount,currency[,active]`` (UTF-8, a BOM is
  accepted); JSONL has one object per line with the same keys. ``price_amount`` is an integer
  in minor units (``1250`` for 12.50 CNY) - never a decimal. ``active`` is ``true``/``false``
  (CSV also ``1``/``0``/``yes``/``no``) and defaults to true. Line numbers are physical lines
  in the file (the CSV header is line 1). A CSV row broken by an unbalanced quote is reported
  at its first line and reading resumes on the next line, so later rows are never dropped
  unreported. Export writes the same formats, sorted by SKU, so an export re-imports unchanged.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from domain.errors import ConflictError, ValidationError
from domain.money import Money
from models import Product
from services.catalog_admin import check_code, check_name, check_price, record_price

COLUMNS = ("sku", "name", "price_amount", "currency", "active")
REQUIRED = ("sku", "name", "price_amount", "currency")


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.reason}"


@dataclass(frozen=True, slots=True)
class ProductRow:
    line: int
    sku: str
    name: str
    price: Money
    active: bool


@dataclass(frozen=True, slots=True)
class Record:
    """One raw row of an import file: its first physical line and its fields."""

    line: int
    fields: dict[str, Any]
    from_csv: bool


@dataclass
class ImportReport:
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[RowError] = field(default_factory=list)
    written: bool = False  # False: nothing was written (all-or-nothing and some row was bad)


#: ``progress(phase, advance, phase_total)``; phases are ``"validate"`` then ``"write"``.
Progress = Callable[[str, int, int], None]


def read_records(path: Path) -> tuple[list[Record], list[RowError]]:
    """Parse ``path`` by its suffix (``.csv`` or ``.jsonl``) into raw records and syntax
    errors. Raises ``ValidationError("file", ...)`` for an unreadable file or unknown suffix."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise ValidationError("file", f"{path.name}: expected a .csv or .jsonl file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidationError("file", f"{path.name} is not UTF-8 ({exc.reason})") from None
    except OSError as exc:
        raise ValidationError("file", f"{path}: {exc.strerror or exc}") from None
    return parse_csv(text) if suffix == ".csv" else parse_jsonl(text)


#: Broken multi-line rows after which a CSV file is no longer read (bounds the re-reading).
MAX_RESYNCS = 1000


class _LineFeed:
    """Physical lines for ``csv.reader`` with a cursor that can be moved back, so reading can
    start again on the line after a broken row. ``csv.reader`` pulls one line at a time, so
    ``pos`` is always just past the last line of the record it returned."""

    def __init__(self, text: str) -> None:
        # newline="": the same line ends csv sees (\n, \r\n, \r), kept in the lines.
        self.lines = io.StringIO(text, newline="").readlines()
        self.pos = 0

    def __iter__(self) -> _LineFeed:
        return self

    def __next__(self) -> str:
        if self.pos >= len(self.lines):
            raise StopIteration
        self.pos += 1
        return self.lines[self.pos - 1]


def parse_csv(text: str) -> tuple[list[Record], list[RowError]]:
    """Records from CSV text with a header row; unknown or missing columns fail at line 1.

    A broken row (wrong field count, or a CSV error) is reported at its first physical line.
    If it ran over several lines - an unbalanced quote swallows the lines after it into one
    field - reading starts again on the next physical line, so every later row is still read
    and imported or reported on its own (never dropped unreported)."""
    feed = _LineFeed(text)
    reader = csv.reader(feed)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return [], [RowError(1, "file", "is empty; expected a header row")]
    except csv.Error as exc:
        return [], [RowError(1, "file", f"not valid CSV ({exc})")]
    problems = _header_problems(header)
    if problems:
        return [], problems
    records: list[Record] = []
    errors: list[RowError] = []
    resyncs = 0
    while True:
        start = feed.pos  # 0-based index of the row's first physical line
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problem = f"not valid CSV ({exc})"
        else:
            if not any(v.strip() for v in values):
                continue
            if len(values) == len(header):
                records.append(Record(start + 1, dict(zip(header, values, strict=True)), True))
                continue
            problem = f"has {len(values)} fields, the header {len(header)}"
        if feed.pos <= start + 1:
            errors.append(RowError(start + 1, "row", problem))
            continue
        resyncs += 1
        if resyncs > MAX_RESYNCS:
            errors.append(RowError(start + 1, "file", "too many broken rows; stopped reading"))
            break
        errors.append(
            RowError(start + 1, "row", f"{problem}; it runs over lines {start + 1}-{feed.pos} "
                     "(an unbalanced quote?), so those lines are read again as rows")
        )  # fmt: skip
        feed.pos = start + 1
        reader = csv.reader(feed)  # a fresh reader: out of the quoted field
    return records, errors


def _header_problems(header: list[str]) -> list[RowError]:
    problems = [RowError(1, h or "header", "unknown column") for h in header if h not in COLUMNS]
    problems += [RowError(1, c, "column is missing") for c in REQUIRED if c not in header]
    dupes = sorted({h for h in header if header.count(h) > 1})
    problems += [RowError(1, h, "column appears twice") for h in dupes]
    return problems


def parse_jsonl(text: str) -> tuple[list[Record], list[RowError]]:
    """Records from JSON Lines: one object per non-blank line."""
    records: list[Record] = []
    errors: list[RowError] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            errors.append(RowError(number, "row", f"not valid JSON ({exc.msg})"))
            continue
        if not isinstance(data, dict):
            errors.append(RowError(number, "row", "must be a JSON object"))
            continue
        records.append(Record(number, data, False))
    return records, errors


_TRUE = {"true", "1", "yes", "y"}
_FALSE = {"false", "0", "no", "n"}


def _csv_int(value: str) -> int | str:
    # "12.50" stays a string so check_price refuses it; only plain integers convert.
    text = value.strip()
    return int(text) if re.fullmatch(r"-?\d{1,19}", text) else text


def _active(value: Any, from_csv: bool) -> bool:
    if value is None or (from_csv and value.strip() == ""):
        return True
    if from_csv and value.strip().lower() in _TRUE | _FALSE:
        return bool(value.strip().lower() in _TRUE)
    if isinstance(value, bool):
        return value
    raise ValidationError("active", "must be true or false")


def validate_record(record: Record) -> ProductRow:
    """One record as a product row, or ``ValidationError`` naming the first bad field."""
    data = record.fields
    unknown = sorted(set(data) - set(COLUMNS))
    if unknown:
        raise ValidationError(unknown[0], "unknown field")
    amount = data.get("price_amount")
    if record.from_csv and isinstance(amount, str):
        amount = _csv_int(amount)
    currency = data.get("currency")
    if record.from_csv and isinstance(currency, str):
        currency = currency.strip()
    sku = data.get("sku")
    return ProductRow(
        line=record.line,
        sku=check_code(sku.strip() if record.from_csv and isinstance(sku, str) else sku, "sku"),
        name=check_name(data.get("name")),
        price=check_price(amount, currency),
        active=_active(data.get("active"), record.from_csv),
    )


def validate_records(
    records: Sequence[Record], progress: Progress | None = None
) -> tuple[list[ProductRow], list[RowError]]:
    """Every record checked; a SKU repeated in the file is an error on its later lines."""
    rows: list[ProductRow] = []
    errors: list[RowError] = []
    first_line: dict[str, int] = {}
    for record in records:
        try:
            row = validate_record(record)
        except ValidationError as exc:
            errors.append(RowError(record.line, exc.field, exc.reason))
        else:
            if row.sku in first_line:
                errors.append(
                    RowError(row.line, "sku", f"{row.sku} already appears on line "
                             f"{first_line[row.sku]}")
                )  # fmt: skip
            else:
                first_line[row.sku] = row.line
                rows.append(row)
        if progress:
            progress("validate", 1, len(records))
    return rows, errors


def import_catalog(
    session: Session,
    records: Sequence[Record],
    *,
    syntax_errors: Sequence[RowError] = (),
    partial: bool = False,
    actor: str,
    progress: Progress | None = None,
) -> ImportReport:
    """Validate every record, then upsert the good rows - or, unless ``partial``, write nothing
    at all when any row (or ``syntax_errors``) is bad. See the module docstring."""
    rows, errors = validate_records(records, progress)
    report = ImportReport(rows=len(records) + len({e.line for e in syntax_errors}))
    report.errors = sorted([*syntax_errors, *errors], key=lambda e: (e.line, e.field))
    if report.errors and not partial:
        return report
    _write_rows(session, rows, report, actor, progress)
    report.written = True
    return report


def _write_rows(
    session: Session,
    rows: Sequence[ProductRow],
    report: ImportReport,
    actor: str,
    progress: Progress | None,
) -> None:
    by_sku = {row.sku: row for row in rows}
    try:
        existing = _lock_products(session, sorted(by_sku))
        for sku in sorted(by_sku):
            _write_row(session, by_sku[sku], existing.get(sku), report, actor)
            if progress:
                progress("write", 1, len(by_sku))
        session.flush()
    except IntegrityError:
        # Another transaction created one of these SKUs after we looked. The caller's unit of
        # work rolls everything back, so the import is all-or-nothing here too.
        raise ConflictError(
            "sku: a product in the file was created concurrently; nothing was imported, "
            "run the import again"
        ) from None


def _write_row(
    session: Session, row: ProductRow, product: Product | None, report: ImportReport, actor: str
) -> None:
    if product is None:
        session.add(
            Product(sku=row.sku, name=row.name, price_amount=row.price.amount,
                    currency=row.price.currency, active=row.active)
        )  # fmt: skip
        record_price(session, row.sku, row.price, actor)  # autoflush inserts the product first
        report.created += 1
    elif _apply_row(session, product, row, actor):
        report.updated += 1
    else:
        report.unchanged += 1


def _lock_products(session: Session, skus: Sequence[str]) -> dict[str, Product]:
    found: dict[str, Product] = {}
    for start in range(0, len(skus), 1000):  # bounded IN lists; locks still taken in SKU order
        chunk = skus[start : start + 1000]
        stmt = select(Product).where(Product.sku.in_(chunk)).order_by(Product.sku)
        found.update({p.sku: p for p in session.scalars(stmt.with_for_update())})
    return found


def _apply_row(session: Session, product: Product, row: ProductRow, actor: str) -> bool:
    changed = (product.name, product.active) != (row.name, row.active)
    product.name, product.active = row.name, row.active
    if (product.price_amount, product.currency) != (row.price.amount, row.price.currency):
        product.price_amount, product.currency = row.price.amount, row.price.currency
        record_price(session, product.sku, row.price, actor)
        changed = True
    return changed


# --- export ------------------------------------------------------------------------------------


def count_products(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Product)) or 0


def export_rows(session: Session) -> Iterator[dict[str, Any]]:
    """Every product as an import row, sorted by SKU (streamed)."""
    stmt = select(Product).order_by(Product.sku).execution_options(yield_per=1000)
    for p in session.scalars(stmt):
        yield {
            "sku": p.sku,
            "name": p.name,
            "price_amount": p.price_amount,
            "currency": p.currency,
            "active": p.active,
        }


def write_rows(
    rows: Iterable[dict[str, Any]],
    out: TextIO,
    fmt: str,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write rows to ``out`` as ``csv`` or ``jsonl``; returns how many. Names are written
    verbatim: the file is data for the importer, not a spreadsheet."""
    if fmt not in ("csv", "jsonl"):
        raise ValidationError("file", f"unknown format {fmt!r}; expected csv or jsonl")
    writer = csv.writer(out, lineterminator="\n")
    if fmt == "csv":
        writer.writerow(COLUMNS)
    count = 0
    for row in rows:
        if fmt == "csv":
            writer.writerow([*(row[c] for c in COLUMNS[:-1]), "true" if row["active"] else "false"])
        else:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        count += 1
        if progress:
            progress(1)
    return count
