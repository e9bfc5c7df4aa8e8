"""Generate the Docker secrets docker-compose.yml reads from ./secrets/ (git-ignored).

Run once before the first ``docker compose up``, from the checkout, with any Python 3::

    python3 ops/compose_secrets.py            # or: --dir /path/to/secrets

Contract:

1. Every secret of :data:`SECRETS` is written to ``<dir>/<name>``, one value and a
   newline (settings.py strips it). A file that exists is kept, never overwritten: PostgreSQL
   sets its password once, when its volume is created, so a new ``postgres_password`` would not
   match the database; rotate by hand (``ALTER ROLE``, then both files).
2. ``database_url`` is derived from ``postgres_password`` (hex: nothing to escape in a URL).
3. The directory is ``0700`` (no other host user may enter it) and the files ``0644``: Compose
   bind-mounts each file at ``/run/secrets/<name>`` with its host mode, and the containers read
   it as their own user (orderflow runs as uid 10001, PostgreSQL as 999), not as its owner.
4. Nothing is printed but the names written: the values stay in the files.

Provider credentials (Stripe, WeChat Pay, Kuaidi100, the warehouse) are issued by the providers,
not generated here: see the header of docker-compose.yml.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "secrets"
DB_USER = DB_NAME = "orderflow"


def _fernet_key() -> str:
    # What cryptography's Fernet.generate_key() returns, without needing the package here.
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


#: name -> how its value is made.
GENERATED: dict[str, Callable[[], str]] = {
    "postgres_password": lambda: secrets.token_hex(24),
    "api_keys": lambda: secrets.token_urlsafe(32),
    "admin_api_key": lambda: secrets.token_urlsafe(32),
    "flower_basic_auth": lambda: f"ops:{secrets.token_urlsafe(24)}",
    "key_encryption_key": _fernet_key,
    "metrics_token": lambda: secrets.token_urlsafe(32),
}
#: Every secret docker-compose.yml reads (``database_url`` is derived from the password).
SECRETS = (*GENERATED, "database_url")


def database_url(password: str) -> str:
    return f"postgresql+psycopg2://{DB_USER}:{password}@postgres:5432/{DB_NAME}"


def generate(directory: Path) -> list[str]:
    """Write the missing secrets into ``directory``; returns the names written."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    makers = {
        **GENERATED,
        "database_url": lambda: database_url((directory / "postgres_password").read_text().strip()),
    }
    return [name for name in SECRETS if _write_new(directory / name, makers[name])]


def _write_new(path: Path, make: Callable[[], str]) -> bool:
    if path.exists():
        return False
    path.write_text(make() + "\n")
    path.chmod(0o644)
    return True


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="default: ./secrets")
    args = parser.parse_args(argv)
    written = generate(args.dir)
    print(f"{args.dir}: wrote {', '.join(written) or 'nothing (all present)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
