"""Settlement tasks: the beat job over the last days' bills, and one day on demand
(:mod:`services.settlement`). Provider errors go to :meth:`OrderflowTask.retry_or_fail`; a bill
not ready or refused is no error: the next beat run asks again."""

from __future__ import annotations

import logging
from datetime import date

from adapters.registry import configured_settlement_providers, settlement_source
from services import settlement, settlement_match
from services.ports import utcnow
from services.task_names import MAINTENANCE_SETTLEMENT, MAINTENANCE_SETTLEMENT_DAY
from services.unit_of_work import unit_of_work
from settings import get_settings
from tasks.base import OrderflowTask
from workers.app import app

log = logging.getLogger(__name__)


@app.task(name=MAINTENANCE_SETTLEMENT, base=OrderflowTask, bind=True)
def settle_due_days(self: OrderflowTask) -> int:
    """Beat: fetch and match the bills of the last ``settlement_lookback_days`` days."""
    try:
        done = settlement.run_due(
            settlement_source, configured_settlement_providers(), now=utcnow(),
            lookback_days=get_settings().settlement_lookback_days,
        )  # fmt: skip
    except Exception as exc:
        self.retry_or_fail(exc)
    for step in done:
        log.info("settlement: %s", step)
    return len(done)


@app.task(name=MAINTENANCE_SETTLEMENT_DAY, base=OrderflowTask, bind=True)
def settle_day(self: OrderflowTask, provider: str, day: str) -> str:
    """On demand: fetch ``provider``'s bill of ``day`` (ISO date) if missing, then match it."""
    try:
        source = settlement_source(provider)
        fetched = settlement.fetch(source, date.fromisoformat(day), now=utcnow())
        if not any(f.status in ("stored", "already_stored") for f in fetched):
            return ", ".join(f"{f.bill_type}: {f.status}" for f in fetched)
        with unit_of_work() as session:
            matched = settlement_match.match(
                session, provider, source.account, date.fromisoformat(day), now=utcnow()
            )
    except Exception as exc:
        self.retry_or_fail(exc)
    return f"matched {matched.lines} lines, {matched.new_differences} new differences"
