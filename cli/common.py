"""What every CLI command shares: servers for the run, and one-line errors instead of tracebacks."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console

from domain.errors import OrderflowError

console = Console()
err_console = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}")
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
