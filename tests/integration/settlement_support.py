"""What the settlement integration tests (Stripe, Alipay, WeChat Pay) share: matching a day,
reading what was stored, and driving a simulator's bill controls."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import requests
from sqlalchemy import func, select

from models import SettlementDifference, SettlementFile, SettlementLine
from services import settlement, settlement_match
from services.unit_of_work import unit_of_work


def match_day(
    provider: str, account: str, day: date, *, now: datetime | None = None
) -> settlement_match.MatchResult:
    """Match ``provider``'s stored bill of ``day`` for ``account`` (now, unless told)."""
    with unit_of_work() as s:
        return settlement_match.match(s, provider, account, day, now=now or datetime.now(UTC))


def differences() -> set[tuple[str, str]]:
    """Every recorded difference as (kind, ref)."""
    with unit_of_work() as s:
        return set(s.execute(select(SettlementDifference.kind, SettlementDifference.ref)).tuples())


def counts() -> tuple[int, int, int]:
    """How many settlement files, lines and differences are stored."""
    with unit_of_work() as s:
        files, lines, diffs = (
            int(s.scalar(select(func.count()).select_from(t)) or 0)
            for t in (SettlementFile, SettlementLine, SettlementDifference)
        )
        return files, lines, diffs


def statuses(results: list[settlement.FetchResult]) -> dict[str, tuple[str, int]]:
    """A fetch's outcome per bill type: (status, lines)."""
    return {r.bill_type: (r.status, r.lines) for r in results}


def sim_control(base_url: str, path: str, **body: Any) -> dict[str, Any]:
    """POST a simulator control (``/_sim/…``) and return its JSON answer (200 asserted)."""
    response = requests.post(f"{base_url}{path}", json=body, timeout=5)
    assert response.status_code == 200, response.text
    return dict(response.json())
