"""Catalog administration: products created, updated, priced, deactivated and deleted, with a
price history; catalog import and export (CSV and JSONL).

Contracts:

* **SKU** is 1-64 characters of ``A-Z a-z 0-9 _ . : -`` (what an order line may name); the name
  is 1-200 characters after stripping; prices are :class:`Money` (integer minor units and an
  ISO 4217 currency orderflow knows). Invalid input raises ``ValidationError`` naming the field.
* **Price history.** Every price a product gets (at creation and at each change of amount or
  currency) is a ``product_prices`` row with the actor and the database clock taken while the
  product row is locked, so history order is commit order. The newest row is the current price.
* **Delete** (:func:`delete_product`) removes a product only if no order line ever named it and
  it never had stock (no ledger rows, no counters): a product that orders or the append-only
  ledger refer to is deactivated instead, and the caller is told which happened. Order lines
  still uncommitted when the delete starts count too (it waits for them).
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

from sqlalchemy import delete, exists, func, insert, select
from sqlalchemy import text as sql_text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from domain.errors import ConflictError, NotFound, ValidationError
from domain.money import CURRENCY_EXPONENTS, Money, MoneyError
from models import OrderLine, Product, ProductPrice, Stock, StockMovement

# --- field checks (shared by the API, the CLI and the importer) --------------------------------

_CODE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")  # fullmatch: "$" would let a final "\n" pass
NAME_MAX = 200
#: Largest accepted price, in minor units: far above any product, far below BIGINT.
PRICE_MAX = 10**12
COLUMNS = ("sku", "name", "price_amount", "currency", "active")
REQUIRED = ("sku", "name", "price_amount", "currency")


def check_code(value: object, field_name: str) -> str:
    """A SKU or warehouse code, or ``ValidationError(field_name, ...)``."""
    if not isinstance(value, str) or not value:
        raise ValidationError(field_name, "is required")
    if not _CODE.fullmatch(value):
        raise ValidationError(
            field_name, "must be 1-64 characters of letters, digits, '_', '.', ':' or '-'"
        )
    return value


def check_name(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("name", "is required")
    name = value.strip()
    if len(name) > NAME_MAX:
        raise ValidationError("name", f"must be at most {NAME_MAX} characters")
    return name


def check_price(amount: object, currency: object) -> Money:
    """Money from an integer amount of minor units and a known currency (no float, no bool)."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise ValidationError(
            "price_amount", "must be an integer number of minor units (1250 for 12.50)"
        )
    if not 0 <= amount <= PRICE_MAX:
        raise ValidationError("price_amount", f"must be between 0 and {PRICE_MAX}")
    if not isinstance(currency, str) or currency not in CURRENCY_EXPONENTS:
        raise ValidationError(
            "currency", f"unknown currency; expected one of {', '.join(sorted(CURRENCY_EXPONENTS))}"
        )
    try:
        return Money(amount, currency)
    except MoneyError as exc:  # unreachable after the checks above; kept as the last guard
        raise ValidationError("price_amount", str(exc)) from None


# --- single products ---------------------------------------------------------------------------


def product_view(product: Product) -> dict[str, Any]:
    return {
        "sku": product.sku,
        "name": product.name,
        "price_amount": product.price_amount,
        "currency": product.currency,
        "active": product.active,
        "created_at": product.created_at.isoformat(),
        "updated_at": product.updated_at.isoformat(),
    }


def _locked(session: Session, sku: str) -> Product:
    product = session.scalars(
        select(Product).where(Product.sku == sku).with_for_update()
    ).one_or_none()
    if product is None:
        raise NotFound(f"product {sku}")
    return product


def _record_price(session: Session, sku: str, price: Money, actor: str) -> None:
    # clock_timestamp(), not now(): now() is the transaction's start, which need not follow
    # the order in which concurrent price changes obtained the product lock.
    session.execute(
        insert(ProductPrice).values(
            sku=sku,
            price_amount=price.amount,
            currency=price.currency,
            valid_from=func.clock_timestamp(),
            actor=actor,
        )
    )


def create_product(
    session: Session, sku: str, name: str, price: Money, *, active: bool = True, actor: str
) -> Product:
    """Create a product and the first row of its price history; ``ConflictError`` if the SKU
    exists (use :func:`update_product` to change it)."""
    sku = check_code(sku, "sku")
    name = check_name(name)
    created = session.execute(
        pg_insert(Product)
        .values(
            sku=sku, name=name, price_amount=price.amount, currency=price.currency, active=active
        )
        .on_conflict_do_nothing(index_elements=[Product.sku])  # the unique index decides
        .returning(Product.id)
    ).scalar_one_or_none()
    if created is None:
        raise ConflictError(f"sku: product {sku} already exists")
    _record_price(session, sku, price, actor)
    product = session.get(Product, created)
    assert product is not None
    return product


def update_product(
    session: Session,
    sku: str,
    *,
    name: str | None = None,
    price_amount: int | None = None,
    currency: str | None = None,
    active: bool | None = None,
    actor: str,
) -> Product:
    """Change any of name, price (amount and/or currency) and active. A price change writes a
    price history row; an unchanged price writes none."""
    product = _locked(session, sku)
    if name is not None:
        product.name = check_name(name)
    if price_amount is not None or currency is not None:
        price = check_price(
            product.price_amount if price_amount is None else price_amount,
            product.currency if currency is None else currency,
        )
        if (price.amount, price.currency) != (product.price_amount, product.currency):
            product.price_amount, product.currency = price.amount, price.currency
            _record_price(session, sku, price, actor)
    if active is not None:
        product.active = active
    session.flush()
    session.refresh(product)
    return product


def deactivate_product(session: Session, sku: str, *, actor: str) -> Product:
    """Stop selling: new orders naming the SKU are rejected (``inactive_product``); existing
    reservations are untouched. Idempotent."""
    return update_product(session, sku, active=False, actor=actor)


def delete_product(session: Session, sku: str, *, actor: str) -> str:
    """Delete a product that was never ordered and never stocked, with its price history, and
    return ``"deleted"``; otherwise deactivate it and return ``"deactivated"``.

    Intake inserts order lines without locking the product, so an order line inserted but not
    yet committed would be invisible to the check. ``LOCK TABLE order_lines IN SHARE MODE``
    closes that gap: it waits for every transaction that has inserted order lines to finish
    (SHARE conflicts with their ROW EXCLUSIVE), so the check then sees them, and it holds new
    inserts back until this transaction ends; an order line arriving after the delete commits
    is rejected by the reservation as ``unknown_sku``. Deletion is a rare admin act, so stalling
    intake for one short transaction is the cheap side of the trade. The table lock is taken
    before the product row lock: an intake transaction that locks the product after inserting
    its lines then cannot deadlock with us. Stock rows need no lock: their foreign key to the
    product row serializes them with the delete.
    """
    session.execute(sql_text("LOCK TABLE order_lines IN SHARE MODE"))
    product = _locked(session, sku)
    referenced = session.scalar(
        select(
            exists().where(OrderLine.sku == sku)
            | exists().where(StockMovement.sku == sku)
            | exists().where(Stock.sku == sku)
        )
    )
    if referenced:
        product.active = False
        session.flush()
        return "deactivated"
    session.execute(delete(Product).where(Product.id == product.id))
    return "deleted"


def price_history(session: Session, sku: str) -> list[dict[str, Any]]:
    """Every price the product has had, oldest first (the last one is current)."""
    if not session.scalar(select(exists().where(Product.sku == sku))):
        raise NotFound(f"product {sku}")
    rows = session.scalars(
        select(ProductPrice)
        .where(ProductPrice.sku == sku)
        .order_by(ProductPrice.valid_from, ProductPrice.id)
    )
    return [
        {
            "price_amount": r.price_amount,
            "currency": r.currency,
            "valid_from": r.valid_from.isoformat(),
            "actor": r.actor,
        }
        for r in rows
    ]


def list_products(
    session: Session, *, active: bool | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    stmt = select(Product).order_by(Product.sku).limit(limit)
    if active is not None:
        stmt = stmt.where(Product.active.is_(active))
    return [product_view(p) for p in session.scalars(stmt)]


# --- import ------------------------------------------------------------------------------------


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
        _record_price(session, row.sku, row.price, actor)  # autoflush inserts the product first
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
        _record_price(session, product.sku, row.price, actor)
        changed = True
    return changed


# --- export ------------------------------------------------------------------------------------


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
