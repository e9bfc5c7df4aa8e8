"""``orderflow apikeys``: intake API keys stored hashed (see :mod:`services.api_keys`).

* ``create --source S [--expires-in-days N] [--require-signature]`` prints the key, and the
  signing secret when ``KEY_ENCRYPTION_KEY`` is set, once on stdout. Neither is stored in clear
  nor logged: keep them now or rotate later.
* ``list [--source S] [--json]`` shows ids, sources, states and dates (never a secret or a hash).
* ``revoke KEY_ID``: refused from then on (within ``API_KEY_CACHE_TTL_S`` in running APIs).
* ``rotate KEY_ID [--grace-hours H] [--expires-in-days N]``: a new key for the same source;
  the old one keeps working for the grace period (default 24 h), then expires.
* ``hash``: reads a key from stdin and prints its ``sha256:<hex>`` form for ``API_KEYS``.

Run standalone as ``python -m cli.apikeys ...``.
"""

from __future__ import annotations

import hashlib
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import typer

from cli.common import Column, command, console, fail, json_option, print_listing, when

if TYPE_CHECKING:
    from services.api_keys import IssuedKey, SecretCipher

apikeys_app = typer.Typer(no_args_is_help=True, help="Intake API keys (stored hashed)")


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else ""


def _cipher() -> SecretCipher | None:
    from services.api_keys import SecretCipher
    from settings import get_settings

    try:
        return SecretCipher.from_setting(get_settings().key_encryption_key)
    except ValueError as exc:
        raise fail(str(exc)) from None


def _print_issued(issued: IssuedKey) -> None:
    expiry = f"expires {_when(issued.expires_at)}" if issued.expires_at else "no expiry"
    signing = "; signature required" if issued.signing_required else ""
    console.print(f"api key {issued.key_id} for source {issued.source} ({expiry}{signing})",
                  markup=False, highlight=False)  # fmt: skip
    # Printed this once only, plainly (no wrapping, no markup), so it can be copied or piped.
    console.print(f"api key (shown once): {issued.api_key}",
                  soft_wrap=True, markup=False, highlight=False)  # fmt: skip
    if issued.signing_secret:
        console.print(f"signing secret (shown once): {issued.signing_secret}",
                      soft_wrap=True, markup=False, highlight=False)  # fmt: skip


def _days(value: int | None) -> timedelta | None:
    return timedelta(days=value) if value is not None else None


@apikeys_app.command("create")
@command
def create(
    source: str = typer.Option(..., help="The orders' source this key may submit for"),
    expires_in_days: int | None = typer.Option(None, min=1, help="Expire after N days"),
    require_signature: bool = typer.Option(
        False, "--require-signature", help="Every request with this key must be signed"
    ),
) -> None:
    """Create a key for SOURCE; the key (and signing secret) is shown once."""
    from services import api_keys
    from services.unit_of_work import unit_of_work

    cipher = _cipher()
    with unit_of_work() as session:
        issued = api_keys.create_key(
            session,
            source=source,
            now=datetime.now(UTC),
            expires_in=_days(expires_in_days),
            require_signature=require_signature,
            cipher=cipher,
        )
    _print_issued(issued)


KEY_COLUMNS = (
    Column("key id", "key_id", ident=True), Column("source", "source"), Column("state", "state"),
    Column("created", "created_at"), Column("expires", "expires_at"),
    Column("revoked", "revoked_at"), Column("replaced by", "replaced_by", ident=True),
    Column("signing", lambda k: "required" if k["signing_required"] else (
        "can sign" if k["can_sign"] else "")),
)  # fmt: skip


@apikeys_app.command("list")
@command
def list_keys(
    source: str | None = typer.Option(None, help="Only this source's keys"),
    as_json: bool = json_option(),
) -> None:
    """Keys with their state (never a secret)."""
    from services import api_keys
    from services.unit_of_work import unit_of_work

    now = datetime.now(UTC)
    with unit_of_work() as session:
        keys = api_keys.list_keys(session, source=source)
    rows = [
        {"key_id": k.key_id, "source": k.source, "state": k.state(now),
         "created_at": when(k.created_at), "expires_at": when(k.expires_at),
         "revoked_at": when(k.revoked_at), "replaced_by": k.replaced_by,
         "signing_required": k.signing_required, "can_sign": k.can_sign}
        for k in keys
    ]  # fmt: skip
    print_listing(rows, KEY_COLUMNS, as_json=as_json, empty="no API keys")


@apikeys_app.command("revoke")
@command
def revoke(key_id: str = typer.Argument(..., help="The key id (see `apikeys list`)")) -> None:
    """Revoke a key now."""
    from services import api_keys
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        info, changed = api_keys.revoke_key(session, key_id, now=datetime.now(UTC))
    if changed:
        console.print(f"revoked {info.key_id} ({info.source})", markup=False, highlight=False)
    else:
        console.print(f"{info.key_id} was already revoked at {_when(info.revoked_at)}",
                      markup=False, highlight=False)  # fmt: skip


@apikeys_app.command("rotate")
@command
def rotate(
    key_id: str = typer.Argument(..., help="The key to replace"),
    grace_hours: float = typer.Option(
        24.0, min=0, help="Hours the old key stays valid beside the new one"
    ),
    expires_in_days: int | None = typer.Option(
        None, min=1, help="The new key expires after N days"
    ),
) -> None:
    """Create a new key for the same source; the old one expires after the grace period."""
    from services import api_keys
    from services.unit_of_work import unit_of_work

    cipher = _cipher()
    with unit_of_work() as session:
        issued, old = api_keys.rotate_key(
            session,
            key_id,
            now=datetime.now(UTC),
            grace=timedelta(hours=grace_hours),
            expires_in=_days(expires_in_days),
            cipher=cipher,
        )
    _print_issued(issued)
    console.print(f"old key {old.key_id} stays valid until {_when(old.expires_at)}, then expires",
                  markup=False, highlight=False)  # fmt: skip


@apikeys_app.command("hash")
def hash_key() -> None:
    """Read a key from stdin and print its `sha256:<hex>` form for the API_KEYS setting."""
    key = sys.stdin.readline().strip()
    if not key:
        raise fail("key: nothing on stdin (pipe the key in: `... | orderflow apikeys hash`)")
    typer.echo(f"sha256:{hashlib.sha256(key.encode()).hexdigest()}")


if __name__ == "__main__":
    apikeys_app()
