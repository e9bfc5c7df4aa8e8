"""``orderflow keys``: the ``KEY_ENCRYPTION_KEY`` that encrypts stored secrets (see
:mod:`services.secrets_at_rest`).

* ``reencrypt [--batch-size N]`` moves every stored secret (callback endpoint secrets, legacy
  clear ones included, and API-key signing secrets) to the first key of ``KEY_ENCRYPTION_KEY``,
  in batches of N rows (500) per transaction, beside live traffic. It prints, per table, the
  secrets moved, those already under the first key, and those no key decrypts (by id: left as
  they are, and the exit code is 1). Running it again moves nothing.

Rotation: put the new key first (``KEY_ENCRYPTION_KEY=new,old``) on every process, run
``reencrypt``, then drop the old key. Run standalone as ``python -m cli.keys ...``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from cli.common import command, console, fail

if TYPE_CHECKING:
    from services.secrets_at_rest import TableReport

keys_app = typer.Typer(no_args_is_help=True, help="The key that encrypts stored secrets")


def _line(t: TableReport) -> str:
    line = (
        f"{t.table}: moved {t.moved}, already current {t.current}, "
        f"undecryptable {len(t.undecryptable)}"
    )
    return line + (f" (ids: {', '.join(t.undecryptable)})" if t.undecryptable else "")


@keys_app.command("reencrypt")
@command
def reencrypt(
    batch_size: int = typer.Option(
        500, min=1, max=100_000, help="Rows per transaction (each batch is locked briefly)"
    ),
) -> None:
    """Move every stored secret to the first key of KEY_ENCRYPTION_KEY; exit 1 when some
    secret cannot be decrypted by any key."""
    from services import secrets_at_rest
    from services.unit_of_work import unit_of_work
    from settings import get_settings

    cipher = secrets_at_rest.cipher_from_setting(get_settings().key_encryption_key)
    if cipher is None:
        raise fail("KEY_ENCRYPTION_KEY: must be set (new key first, then the old ones)")
    report = secrets_at_rest.reencrypt(unit_of_work, cipher, batch_size=batch_size)
    for table in report.tables:
        console.print(_line(table), markup=False, highlight=False)
    if report.undecryptable:
        raise fail(
            f"{report.undecryptable} secret(s) cannot be decrypted by any key of "
            "KEY_ENCRYPTION_KEY and were left unchanged: add back the key they were encrypted "
            "with and run again"
        )


if __name__ == "__main__":
    keys_app()
