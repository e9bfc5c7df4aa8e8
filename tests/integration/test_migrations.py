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


def test_migration_0019_clears_the_trade_number_stored_as_alipay_refund_refs(fresh_database_url):
    def upgrade(revision: str) -> None:
        run = subprocess.run(
            [sys.executable, "-m", "cli.main", "db", "upgrade", revision],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "DATABASE_URL": fresh_database_url},
        )  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr

    upgrade("0018")
    engine = create_engine(fresh_database_url)
    try:
        with engine.begin() as conn:
            for n, (provider, trade, refund_ref) in enumerate(
                [("alipay", "2026120422001", "2026120422001"),  # the trade's number: cleared
                 ("alipay", "2026120422002", "dash-7"),  # a console refund's own name: kept
                 ("stripe", "pi_3Q", "re_3Q")], start=1,  # a refund id of its own: kept
            ):  # fmt: skip
                oid = f"00000000-0000-4000-8000-00000000000{n}"
                conn.execute(
                    text(
                        "INSERT INTO orders (id, source, external_id, body_hash, status, currency, "
                        "total_amount, payment_provider, shipping_address) VALUES (:o, 'web', :o, "
                        "md5(:o), 'PAID', 'CNY', 100, :p, '{}'::jsonb)"
                    ),
                    {"o": oid, "p": provider},
                )
                pid = conn.execute(text(
                    "INSERT INTO payments (order_id, provider, out_trade_no, idempotency_key, "
                    "status, amount, currency, provider_ref) "
                    "VALUES (:o, :p, :t, :t, 'PAID', 100, 'CNY', :r) "
                    "RETURNING id"), {"o": oid, "p": provider, "t": f"t{n}", "r": trade},
                ).scalar_one()  # fmt: skip
                conn.execute(text(
                    "INSERT INTO refunds (order_id, payment_id, refund_no, amount, currency, "
                    "status, provider_refund_ref) VALUES (:o, :p, :n, 10, 'CNY', 'SUCCEEDED', :r)"),
                    {"o": oid, "p": pid, "n": f"r{n}", "r": refund_ref})  # fmt: skip
        upgrade("0019")
        with engine.connect() as conn:
            refs = conn.execute(text("SELECT refund_no, provider_refund_ref FROM refunds "
                                     "ORDER BY refund_no")).all()  # fmt: skip
        assert [tuple(r) for r in refs] == [("r1", None), ("r2", "dash-7"), ("r3", "re_3Q")]
    finally:
        engine.dispose()
