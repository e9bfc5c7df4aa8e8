"""Settlement sources: the port through which :mod:`services.settlement` fetches a provider's
bill for one day. Stripe's is :mod:`adapters.payments.stripe_settlement`, Alipay's
:mod:`adapters.payments.alipay_settlement`; WeChat Pay's files plug in as a further source
implementing :class:`SettlementSource`.

Contract of :meth:`SettlementSource.fetch_bill`:

* Returns a :class:`Bill`: the raw file exactly as it will be stored (``raw``) with its SHA-256,
  and its parsed lines (:class:`domain.settlement.BillLine`). A provider that publishes a hash
  (WeChat Pay's ``hash_value``) has it checked before anything is parsed.
* Raises :class:`BillNotReady` when the day's bill is not complete yet (asked too early, or
  the provider's own "not ready" answer): retryable, the caller asks again later.
* Raises :class:`BillRefused` for bad input — a truncated or re-encoded file, a hash mismatch,
  an unknown line type, a line that does not add up, another merchant's bill — with a message
  naming the line and the field. Nothing from a refused bill may be stored.
* Other provider errors (network, 5xx, authentication) are the adapter's usual
  :class:`~domain.errors.ProviderUnavailable` / :class:`~domain.errors.ProviderRejected`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, datetime
from typing import Protocol

from domain.errors import ProviderRejected, ProviderUnavailable
from domain.settlement import BillLine


class BillNotReady(ProviderUnavailable):
    """The day's bill is not complete yet; ``ready_at`` is when to ask again (if known)."""

    def __init__(self, provider: str, message: str, ready_at: datetime | None = None) -> None:
        super().__init__(provider, message, code="bill_not_ready")
        self.ready_at = ready_at


class BillRefused(ProviderRejected):
    """The bill failed verification or parsing; the message says where and why."""

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(provider, message, code="bill_refused")


@dataclass(frozen=True, slots=True)
class Bill:
    provider: str
    account: str
    day: date
    bill_type: str
    raw: bytes
    lines: tuple[BillLine, ...]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()


class SettlementSource(Protocol):
    """One provider account's daily bills (see the module docstring for the contract)."""

    name: str
    account: str
    bill_types: tuple[str, ...]

    def fetch_bill(self, day: date, bill_type: str, *, now: datetime) -> Bill: ...
