"""What every CLI command shares: servers for the run, and one-line errors instead of tracebacks."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import typer
from rich.cells import cell_len
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from domain.errors import OrderflowError

console = Console()
err_console = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: MESSAGE`` on stderr and return the exit to raise. One line however long
    (never wrapped at the console's width), and MESSAGE is plain text: an operator's input
    such as ``[x]`` is shown, not read as markup."""
    err_console.print(Text.assemble(("error:", "bold red"), f" {message}"), soft_wrap=True)
    return typer.Exit(code)


@contextlib.contextmanager
def servers() -> Iterator[None]:
    """Use the configured servers, or the embedded ones for the duration of the command."""
    from workers.embedded import embedded_services

    with embedded_services():
        yield


def command(fn: Callable[P, R]) -> Callable[P, R]:
    """Run a CLI command with servers available; expected errors become one line and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            with servers():
                return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise  # typer.Exit is a RuntimeError: let the command's own exit code through
        except OrderflowError as exc:
            raise fail(str(exc)) from None
        except (OSError, RuntimeError) as exc:
            raise fail(f"{type(exc).__name__}: {exc}") from None

    return wrapper


def print_json(data: Any) -> None:
    console.print_json(data=data, default=str)


def hide_flag_types() -> None:
    """Show no value type beside a flag in ``--help``.

    typer 0.29's help screen prints each option's type (``<str>``, ``<int range>``) and, for a
    flag, ``<bool>`` (``--help  <bool>  Show this message and exit.``), as if ``--help`` took a
    value. The column comes from ``TyperOption.display_type_rich``; a flag (``--help``,
    ``--json``, ``--active/--inactive``) now shows nothing there, every other option as before.
    Typer versions without that method (before 0.29: no type column) are left alone. Applied
    once, when this module is imported, which every ``orderflow`` command module does.
    """
    from typer import core

    option = getattr(core, "TyperOption", None)
    shown = getattr(option, "display_type_rich", None)
    if option is None or shown is None or getattr(shown, "hides_flags", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        return None if getattr(self, "is_flag", False) else shown(self, ctx)

    display_type_rich.hides_flags = True  # type: ignore[attr-defined]
    option.display_type_rich = display_type_rich


hide_flag_types()


def json_option() -> Any:
    """The ``--json`` option of every list command."""
    return typer.Option(
        False, "--json", help="Print the rows as a JSON array (full ids; money as an object)"
    )


def when(value: datetime | None) -> str | None:
    """A timestamp for JSON output: ISO 8601 to the second, or None."""
    return value.isoformat(timespec="seconds") if value else None


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a listing. ``cell`` is the JSON row's key to show (None shows as blank) or a
    function of the row; an ``ident`` column holds identifiers and is shown whole (never wrapped,
    folded or cut with "…", however narrow the terminal) so that it can be copied."""

    header: str
    cell: str | Callable[[dict[str, Any]], str | Text]
    ident: bool = False

    def render(self, row: dict[str, Any]) -> str | Text:
        if callable(self.cell):
            return self.cell(row)
        value = row[self.cell]
        return "" if value is None else str(value)


UNBOUNDED = 100_000  # a width no table reaches: measures a table's natural minimum


def print_listing(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[Column],
    *,
    as_json: bool,
    empty: str,
    **table_options: Any,
) -> None:
    """A list command's output: ``rows`` as a JSON array with ``as_json`` (``[]`` when there
    are none), else a table of ``columns``, or the one line ``empty`` when there are no rows."""
    if as_json:
        print_json(list(rows))
        return
    if not rows:
        console.print(empty, markup=False, highlight=False)
        return
    cells = [[c.render(row) for c in columns] for row in rows]
    table = Table(**table_options)
    for i, c in enumerate(columns):
        if c.ident:
            widest = max(_cell_width(r[i]) for r in cells)
            table.add_column(c.header, no_wrap=True, min_width=widest)
        else:
            table.add_column(c.header)
    for r in cells:
        table.add_row(*r)
    # Rich crops a table wider than the console (80 columns in a pipe), and the cut falls on ids.
    # Print it as wide as its narrowest unbroken layout instead (ids whole, other cells wrapped
    # at spaces), however narrow the console; a terminal then wraps the long lines.
    needed = Measurement.get(console, console.options.update_width(UNBOUNDED), table).minimum
    (console if needed <= console.width else Console(width=needed)).print(table)


def _cell_width(cell: str | Text) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(cell)
