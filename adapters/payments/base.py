"""The payment port: what services need from a payment provider, and nothing else.

Every adapter (Alipay, WeChat Pay v3, Stripe) implements :class:`PaymentProvider` over plain
HTTP. Inputs and results are frozen dataclasses; money is :class:`domain.money.Money` (integer
minor units). Errors are the provider branch of the one error tree:

* :class:`ProviderUnavailable` — network failure, timeout, 5xx, throttling; retry with the *same*
  idempotency key.
* :class:`ProviderRejected` — a business refusal (``code`` carries the provider's code).
* :class:`SignatureInvalid` — a response or notification that does not verify.

Idempotency: ``out_trade_no`` / ``refund_no`` / ``idempotency_key`` are generated once by the
service and stored before the first call, so calling any method again with the same input is safe.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from adapters.errors import ProviderError, ProviderRejected, ProviderUnavailable, SignatureInvalid
from domain.money import Money

__all__ = [
    "REPLAYED_FAILURE",
    "SETTLED_ON_CREATE",
    "ClosePayment",
    "CloseResult",
    "CreatePayment",
    "DisputeEvent",
    "Notification",
    "NotificationKind",
    "NotificationReply",
    "PaymentCreated",
    "PaymentProvider",
    "PaymentRef",
    "PaymentState",
    "ProviderError",
    "ProviderRejected",
    "ProviderUnavailable",
    "RefundLister",
    "RefundRequest",
    "RefundResult",
    "RefundState",
    "SignatureInvalid",
    "TradeStatus",
    "key_number",
    "rotated_key",
]


#: ``ProviderUnavailable.code`` when a provider that stores responses per idempotency key (Stripe)
#: replays a stored server error: retrying with the same key can never succeed, so the caller
#: mints a new key. Safe for money: the failed attempt returned nothing the customer can pay.
REPLAYED_FAILURE = "replayed_failure"


def rotated_key(base: str, n: int) -> str:
    """Key number ``n`` of the one rotation sequence every replayed failure moves along:
    ``base``, ``base:r1``, ``base:r2`` ... Two ways to move, one sequence: the create key is
    stored and moved by the payment service (a close must repeat exactly the key a create may
    have used, even while the provider keeps failing), while a cancel or refund key is walked
    from its start by the Stripe adapter on each call (repeating those is harmless, or checked
    first), so that every worker reaches the same key without storing it."""
    return base if n == 0 else f"{base}:r{n}"


def key_number(base: str, key: str) -> int:
    """Where ``key`` stands in ``base``'s sequence (0 for ``base``; keys minted before this
    sequence was shared end ``-rN`` and count the same)."""
    suffix = key.removeprefix(base)
    return int(suffix[2:]) if suffix[:2] in (":r", "-r") else 0


#: ``ProviderRejected.code`` values a *create* can answer when the trade already exists and is
#: settled at the provider — a create replayed after the buyer paid (Alipay
#: ``ACQ.TRADE_HAS_SUCCESS``, WeChat Pay ``ORDERPAID``) or after it was closed. Not a refusal:
#: the caller queries the trade and applies what it says.
SETTLED_ON_CREATE = frozenset(
    {"ACQ.TRADE_HAS_SUCCESS", "ACQ.TRADE_HAS_CLOSE", "ORDERPAID", "ORDER_CLOSED"}
)


class PaymentState(enum.StrEnum):
    """Normalized payment state at the provider."""

    PENDING = "PENDING"  # created, waiting for the buyer (Alipay WAIT_BUYER_PAY, WeChat NOTPAY...)
    PAID = "PAID"  # money taken (Alipay TRADE_SUCCESS/TRADE_FINISHED, WeChat SUCCESS, succeeded)
    CLOSED = "CLOSED"  # closed/cancelled without payment
    REFUNDED = "REFUNDED"  # paid and then (fully) refunded (Alipay TRADE_CLOSED after pay, REFUND)
    NOT_FOUND = "NOT_FOUND"  # the provider does not know this trade (yet)


class RefundState(enum.StrEnum):
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


class NotificationKind(enum.StrEnum):
    PAYMENT = "PAYMENT"
    REFUND = "REFUND"
    DISPUTE = "DISPUTE"  # a buyer disputes a captured payment (Stripe charge.dispute.*)
    OTHER = "OTHER"  # verified, but not an event orderflow acts on (e.g. payment_intent.created)


@dataclass(frozen=True, slots=True)
class PaymentRef:
    """How a payment is found at the provider: our key, and theirs once known."""

    out_trade_no: str
    provider_ref: str | None = None  # Alipay trade_no, WeChat transaction_id, Stripe pi_… id


@dataclass(frozen=True, slots=True)
class CreatePayment:
    out_trade_no: str  # our merchant order number, unique per payment
    idempotency_key: str  # stored before the first call; Stripe sends it as Idempotency-Key
    amount: Money
    description: str
    notify_url: str
    expires_at: datetime  # timezone-aware
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PaymentCreated:
    """What the customer needs to pay, plus the provider's reference."""

    provider_ref: str | None
    instructions: Mapping[str, str]  # {"qr_code": …} / {"code_url": …} / {"client_secret": …}


@dataclass(frozen=True, slots=True)
class TradeStatus:
    """What the provider says about a trade (named apart from ``domain.payments.PaymentStatus``,
    our own payment row's status, which this answer may move)."""

    state: PaymentState
    raw_status: str  # the provider's own status string, stored beside the normalized one
    provider_ref: str | None = None
    amount: Money | None = None  # the amount the provider says was paid / ordered
    paid_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ClosePayment:
    """Close the trade ``ref``. ``create`` is the create request the payment was (perhaps) made
    with: a provider that can only close by its own reference (Stripe) repeats it, with the same
    idempotency key, to recover that reference when ``ref.provider_ref`` is unknown."""

    ref: PaymentRef
    idempotency_key: str
    create: CreatePayment | None = None


@dataclass(frozen=True, slots=True)
class CloseResult:
    """``closed`` is False when the trade turned out to be paid already (``status`` says so).

    A trade the provider never created counts as closed (``closed=True``): Alipay
    ``ACQ.TRADE_NOT_EXIST``, WeChat Pay ``ORDER_NOT_EXIST``, and Stripe when the repeated create
    replays a stored failure (state ``NOT_FOUND``). Nothing can be paid then, so stock may go.
    """

    closed: bool
    status: TradeStatus


@dataclass(frozen=True, slots=True)
class RefundRequest:
    ref: PaymentRef
    refund_no: str  # our refund number: unique per refund, the provider's idempotency key
    amount: Money  # this refund
    total: Money  # the original payment
    reason: str
    notify_url: str | None = None


@dataclass(frozen=True, slots=True)
class RefundResult:
    refund_no: str
    state: RefundState
    raw_status: str
    amount: Money | None = None
    provider_refund_ref: str | None = None


@dataclass(frozen=True, slots=True)
class DisputeEvent:
    """A dispute as a verified notification carried it (amounts in minor units).

    ``status`` is the provider's own (Stripe: ``warning_needs_response``, ``warning_under_review``,
    ``warning_closed``, ``needs_response``, ``under_review``, ``won``, ``lost``);
    ``funds_withdrawn``/``funds_reinstated`` add up the balance transactions the dispute carries
    (without fees); ``event_at`` is when the provider created the event, for ordering.
    """

    dispute_id: str  # Stripe dp_…
    provider_ref: str | None  # the payment's provider reference (Stripe pi_…)
    charge_ref: str | None  # Stripe ch_…
    amount: Money
    reason: str
    status: str
    evidence_due_by: datetime | None
    has_evidence: bool
    funds_withdrawn: int
    funds_reinstated: int
    event_at: datetime


@dataclass(frozen=True, slots=True)
class Notification:
    """A verified, parsed provider notification."""

    kind: NotificationKind
    event_id: str  # unique per event (Alipay notify_id, WeChat id, Stripe evt_…) for dedupe
    out_trade_no: str | None
    status: TradeStatus | None = None  # for PAYMENT
    refund: RefundResult | None = None  # for REFUND
    dispute: DisputeEvent | None = None  # for DISPUTE
    raw_type: str = ""  # e.g. trade_status_sync, TRANSACTION.SUCCESS, payment_intent.succeeded
    #: The payment's provider reference (Stripe ``pi_…``) when the event names it: a refund made
    #: in the provider's dashboard carries no ``out_trade_no`` of ours, only this.
    provider_ref: str | None = None
    #: The event says refunds were made but not which (Stripe ``charge.refunded`` since API
    #: version 2022-11-15 embeds no refund list): look them up (:class:`RefundLister`).
    refunds_unlisted: bool = False


@dataclass(frozen=True, slots=True)
class NotificationReply:
    """The HTTP answer a provider expects for a notification."""

    status_code: int
    body: bytes
    content_type: str


@runtime_checkable
class RefundLister(Protocol):
    """A provider that can list a payment's refunds (Stripe ``GET /v1/refunds``). Alipay and
    WeChat Pay cannot list them, but every refund notification they send names its refund."""

    def list_refunds(self, ref: PaymentRef) -> list[RefundResult]:
        """Every refund of the payment ``ref``, newest first; ``refund_no`` is ours when we made
        it, else ``""`` (then ``provider_refund_ref`` names it)."""
        ...


@runtime_checkable
class PaymentProvider(Protocol):
    """A payment provider. Every method may raise the errors listed in the module docstring."""

    name: str

    def create(self, request: CreatePayment) -> PaymentCreated:
        """Create the payment; repeating the same request returns the same payment."""
        ...

    def query(self, ref: PaymentRef) -> TradeStatus:
        """The payment's current state at the provider."""
        ...

    def close(self, request: ClosePayment) -> CloseResult:
        """Close/cancel an unpaid payment. If it is already paid, return ``closed=False``."""
        ...

    def refund(self, request: RefundRequest) -> RefundResult:
        """Refund (part of) a paid payment; the same ``refund_no`` refunds at most once."""
        ...

    def query_refund(self, ref: PaymentRef, refund_no: str) -> RefundResult:
        """The state of one refund."""
        ...

    def parse_notification(self, headers: Mapping[str, str], body: bytes) -> Notification:
        """Verify, then parse, an inbound notification. Raises SignatureInvalid on forgery.

        ``headers`` keys are matched case-insensitively by implementations.
        """
        ...

    def notification_reply(self, ok: bool) -> NotificationReply:
        """The body the provider expects: acknowledged (``ok``) or to be retried."""
        ...
