"""Worker signal handlers."""

from __future__ import annotations

from typing import Any

from celery.signals import worker_process_init

from models.db import dispose_engine


@worker_process_init.connect
def _fresh_engine_after_fork(**_: Any) -> None:
    # A pooled connection inherited from the parent must never be used by two processes.
    dispose_engine()
