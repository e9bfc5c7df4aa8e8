"""The migrations and the models agree: ``orderflow db upgrade`` on a fresh database gives the
schema ``models/`` describes (alembic's autogenerate comparison finds nothing to change), and
migration 0007's append-only trigger is there."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, make_url, text

from models import Base
from models.migrate import head_revision


@pytest.fixture
def fresh_database_url(services: dict[str, str]) -> Iterator[str]:
    """An empty database on the session's server, dropped afterwards."""
    admin = create_engine(services["database_url"], isolation_level="AUTOCOMMIT")
    name = f"orderflow_migrate_{os.getpid()}_{secrets.token_hex(3)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = make_url(services["database_url"]).set(database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_db_upgrade_on_a_fresh_database_matches_the_models(fresh_database_url):
    run = subprocess.run(
        [sys.executable, "-m", "cli.main", "db", "upgrade"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "DATABASE_URL": fresh_database_url},
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"database at revision {head_revision()}" in run.stdout
    engine = create_engine(fresh_database_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            triggers = conn.execute(
                text(
                    "SELECT tgname FROM pg_trigger WHERE tgrelid = 'stock_movements'::regclass "
                    "AND NOT tgisinternal"
                )
            ).scalars()
            assert list(triggers) == ["stock_movements_append_only"]
    finally:
        engine.dispose()
    assert diff == [], "models and migrations differ:\n" + "\n".join(map(str, diff))
