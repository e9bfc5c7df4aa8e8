"""Alembic environment: the URL comes from settings, the metadata from ``models``."""

from __future__ import annotations

from alembic import context

import models
from models.db import get_engine

target_metadata = models.Base.metadata


def run_migrations_online() -> None:
    with get_engine().connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations_online()
