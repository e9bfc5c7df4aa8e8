"""The fake payment provider (see :mod:`tests.fakes`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from adapters.payments.base import (
    ClosePayment,
    CloseResult,
    CreatePayment,
    Notification,
    NotificationKind,
    NotificationReply,
    PaymentCreated,
    PaymentRef,
    PaymentState,
    RefundRequest,
    RefundResult,
    RefundState,
    TradeStatus,
)
from domain.errors import ProviderRejected, SignatureInvalid
from domain.money import Money
from tests.fakes.base import Faulty, signature, verified


@dataclass
class FakeTrade:
    request: CreatePayment
    provider_ref: str
    state: PaymentState = PaymentState.PENDING
    paid: Money | None = None  # what the buyer paid (may differ from the request, on purpose)
    paid_at: datetime | None = None
    refunded: int = 0  # minor units committed to refunds that did not fail


class FakePaymentProvider(Faulty):
    """A payment provider keyed by ``out_trade_no`` (like Alipay and WeChat Pay).

    * ``create``: the same request again returns the same :class:`PaymentCreated`; another
      amount for the same ``out_trade_no`` → ``CONTEXT_INCONSISTENT``; an idempotency key reused
      for another trade → ``idempotency_error``; a trade already paid or closed →
      ``ORDERPAID`` / ``ORDER_CLOSED`` (both in ``SETTLED_ON_CREATE``).
    * ``query``: ``NOT_FOUND`` for an unknown trade, else PENDING → PAID → REFUNDED, or CLOSED.
    * ``close``: unknown trade → closed, ``NOT_FOUND``; paid/refunded → ``closed=False``.
    * ``refund``: idempotent by ``refund_no`` (another amount → ``INVALID_REQUEST``); only a paid
      trade (``TRADE_NOT_PAID``), at most what remains (``NOTENOUGH``). Succeeds at once, or
      stays PENDING until :meth:`settle_refund` when ``refunds_start_pending``.
    * Notifications (queued in ``outbox`` on pay and on refund success) are JSON objects signed
      with ``secret`` in their ``sign`` field; headers are ignored.
    * :meth:`dashboard_refund` is a refund made at the provider (no ``refund_no`` of ours, named
      by its ``provider_refund_ref``); ``list_refunds`` lists every refund of a trade
      (:class:`adapters.payments.base.RefundLister`, as Stripe).
    """

    name = "fake"

    def __init__(self, *, secret: str = "fake-secret", refunds_start_pending: bool = False) -> None:
        super().__init__()
        self.secret = secret
        self.refunds_start_pending = refunds_start_pending
        self.trades: dict[str, FakeTrade] = {}
        self.refunds: dict[str, tuple[str, RefundResult]] = {}  # refund_no -> (trade, result)
        self.outbox: list[bytes] = []
        self._keys: dict[str, str] = {}  # idempotency key -> out_trade_no
        self._notice: dict[str, bool] = {}  # how dashboard_refund's notification is shaped

    # -- the Protocol ----------------------------------------------------------------------
    def create(self, request: CreatePayment) -> PaymentCreated:
        return self._call(lambda: self._create(request))

    def query(self, ref: PaymentRef) -> TradeStatus:
        return self._call(lambda: self._status(ref.out_trade_no))

    def close(self, request: ClosePayment) -> CloseResult:
        return self._call(lambda: self._close(request.ref.out_trade_no))

    def refund(self, request: RefundRequest) -> RefundResult:
        return self._call(lambda: self._refund(request))

    def query_refund(self, ref: PaymentRef, refund_no: str) -> RefundResult:
        return self._call(lambda: self._stored_refund(refund_no))

    def list_refunds(self, ref: PaymentRef) -> list[RefundResult]:
        """Every refund of the trade, newest first."""
        return self._call(
            lambda: [r for t, r in reversed(self.refunds.values()) if t == ref.out_trade_no]
        )

    def parse_notification(self, headers: Mapping[str, str], body: bytes) -> Notification:
        """Verify ``sign`` over the other fields, then parse; SignatureInvalid otherwise."""
        try:
            fields = json.loads(body)
        except ValueError as exc:
            raise SignatureInvalid(self.name, "unreadable notification") from exc
        if not isinstance(fields, dict):
            raise SignatureInvalid(self.name, "notification is not an object")
        sign = fields.pop("sign", None)
        verified(
            self.name, self.secret, _canonical(fields), sign if isinstance(sign, str) else None
        )
        return _notification(fields)

    def notification_reply(self, ok: bool) -> NotificationReply:
        return (
            NotificationReply(200, b"success", "text/plain")
            if ok
            else NotificationReply(400, b"fail", "text/plain")
        )

    # -- test controls ---------------------------------------------------------------------
    def pay(self, out_trade_no: str, amount: Money | None = None) -> None:
        """The buyer pays (``amount`` defaults to the trade's). ValueError unless PENDING."""
        trade = self.trades.get(out_trade_no)
        if trade is None or trade.state is not PaymentState.PENDING:
            raise ValueError(f"{out_trade_no} cannot be paid")
        trade.state, trade.paid = PaymentState.PAID, amount or trade.request.amount
        trade.paid_at = datetime.now(UTC)
        self._notify("payment", trade)

    def settle_refund(self, refund_no: str, *, succeeded: bool = True) -> None:
        """Finish a PENDING refund; a failed one gives its amount back to the trade."""
        out_trade_no, result = self.refunds[refund_no]
        if result.state is not RefundState.PENDING:
            raise ValueError(f"refund {refund_no} is {result.state}")
        trade = self.trades[out_trade_no]
        state = RefundState.SUCCEEDED if succeeded else RefundState.FAILED
        if not succeeded:
            trade.refunded -= result.amount.amount if result.amount else 0
        self._settled(trade, refund_no, replace(result, state=state, raw_status=state.value))

    def dashboard_refund(
        self,
        out_trade_no: str,
        amount: int | None = None,
        *,
        pending: bool = False,
        unlisted: bool = False,
        anonymous: bool = False,
    ) -> str:
        """A refund made at the provider (default: all that is left); returns its provider
        reference. Its notification names no refund when ``unlisted`` (as Stripe's
        ``charge.refunded`` today) and no ``out_trade_no`` when ``anonymous`` (only the
        provider's reference, as a Stripe refund made in the dashboard). A ``pending`` one is
        finished with :meth:`settle_refund` under its provider reference."""
        trade = self.trades[out_trade_no]
        paid = trade.paid or trade.request.amount
        amount = paid.amount - trade.refunded if amount is None else amount
        if trade.state not in (PaymentState.PAID, PaymentState.REFUNDED):
            raise ValueError(f"{out_trade_no} is not paid")
        if not 0 < amount <= paid.amount - trade.refunded:
            raise ValueError(f"cannot refund {amount}")
        trade.refunded += amount
        key = f"fake-dash-{len(self.refunds) + 1}"
        state = RefundState.PENDING if pending else RefundState.SUCCEEDED
        result = RefundResult("", state, state.value, Money(amount, paid.currency), key)
        self.refunds[key] = (out_trade_no, result)
        self._notice = {"unlisted": unlisted, "anonymous": anonymous}
        if state is RefundState.SUCCEEDED:
            self._settled(trade, key, result)
        else:
            self._notify("refund", trade, result)
        self._notice = {}
        return key

    def sign_notification(self, fields: Mapping[str, str]) -> bytes:
        """A notification body as this provider sends it (tests forge with another secret)."""
        return json.dumps({**fields, "sign": signature(self.secret, _canonical(fields))}).encode()

    # -- behaviour ---------------------------------------------------------------------------
    def _create(self, request: CreatePayment) -> PaymentCreated:
        bound = self._keys.get(request.idempotency_key, request.out_trade_no)
        if bound != request.out_trade_no:
            raise ProviderRejected(
                self.name, "key used for another trade", code="idempotency_error"
            )
        trade = self.trades.get(request.out_trade_no)
        if trade is None:
            trade = FakeTrade(request, provider_ref=f"fake-{len(self.trades) + 1:06d}")
            self.trades[request.out_trade_no] = trade
        elif trade.request.amount != request.amount:
            raise ProviderRejected(self.name, "amount differs", code="CONTEXT_INCONSISTENT")
        elif trade.state in (PaymentState.PAID, PaymentState.REFUNDED):
            raise ProviderRejected(self.name, "trade already paid", code="ORDERPAID")
        elif trade.state is PaymentState.CLOSED:
            raise ProviderRejected(self.name, "trade closed", code="ORDER_CLOSED")
        self._keys[request.idempotency_key] = request.out_trade_no
        return PaymentCreated(trade.provider_ref, {"qr_code": f"fake://pay/{trade.provider_ref}"})

    def _status(self, out_trade_no: str) -> TradeStatus:
        trade = self.trades.get(out_trade_no)
        if trade is None:
            return TradeStatus(PaymentState.NOT_FOUND, "NOT_FOUND")
        amount = trade.paid or trade.request.amount
        return TradeStatus(
            trade.state, trade.state.value, trade.provider_ref, amount, trade.paid_at
        )

    def _close(self, out_trade_no: str) -> CloseResult:
        trade = self.trades.get(out_trade_no)
        if trade is not None and trade.state is PaymentState.PENDING:
            trade.state = PaymentState.CLOSED
        status = self._status(out_trade_no)
        return CloseResult(status.state not in (PaymentState.PAID, PaymentState.REFUNDED), status)

    def _refund(self, request: RefundRequest) -> RefundResult:
        no, out_trade_no = request.refund_no, request.ref.out_trade_no
        if no in self.refunds:
            stored_trade, stored = self.refunds[no]
            if (stored_trade, stored.amount) != (out_trade_no, request.amount):
                raise ProviderRejected(self.name, "refund_no reused", code="INVALID_REQUEST")
            return stored
        trade = self.trades.get(out_trade_no)
        if trade is None or trade.state not in (PaymentState.PAID, PaymentState.REFUNDED):
            raise ProviderRejected(self.name, "trade not paid", code="TRADE_NOT_PAID")
        paid = trade.paid or trade.request.amount
        if request.amount.currency != paid.currency:
            raise ProviderRejected(self.name, "currency differs", code="PARAM_ERROR")
        if not 0 < request.amount.amount <= paid.amount - trade.refunded:
            raise ProviderRejected(self.name, "more than remains", code="NOTENOUGH")
        trade.refunded += request.amount.amount
        state = RefundState.PENDING if self.refunds_start_pending else RefundState.SUCCEEDED
        result = RefundResult(
            no, state, state.value, request.amount, f"fake-rf-{len(self.refunds) + 1}"
        )
        self.refunds[no] = (out_trade_no, result)
        if state is RefundState.SUCCEEDED:
            self._settled(trade, no, result)
        return result

    def _settled(self, trade: FakeTrade, refund_no: str, result: RefundResult) -> None:
        self.refunds[refund_no] = (trade.request.out_trade_no, result)
        if result.state is not RefundState.SUCCEEDED:
            return
        settled = sum(
            r.amount.amount
            for t, r in self.refunds.values()
            if t == trade.request.out_trade_no and r.state is RefundState.SUCCEEDED and r.amount
        )
        if settled >= (trade.paid or trade.request.amount).amount:
            trade.state = PaymentState.REFUNDED
        self._notify("refund", trade, result)

    def _stored_refund(self, refund_no: str) -> RefundResult:
        if refund_no not in self.refunds:
            raise ProviderRejected(self.name, "no such refund", code="RESOURCE_NOT_EXISTS")
        return self.refunds[refund_no][1]

    def _notify(self, kind: str, trade: FakeTrade, refund: RefundResult | None = None) -> None:
        status = self._status(trade.request.out_trade_no)
        fields = {
            "event_id": f"evt-{len(self.outbox) + 1}",
            "type": kind,
            "out_trade_no": trade.request.out_trade_no,
            "state": status.state.value,
            "provider_ref": trade.provider_ref,
            "amount": str(status.amount.amount if status.amount else ""),
            "currency": status.amount.currency if status.amount else "",
        }
        if refund is not None and not self._notice.get("unlisted"):
            fields |= {"refund_no": refund.refund_no, "refund_state": refund.state.value,
                       "refund_amount": str(refund.amount.amount) if refund.amount else "",
                       "refund_ref": refund.provider_refund_ref or ""}  # fmt: skip
        if self._notice.get("unlisted"):
            fields["unlisted"] = "yes"
        if self._notice.get("anonymous"):
            del fields["out_trade_no"]
        self.outbox.append(self.sign_notification(fields))


def _canonical(fields: Mapping[str, Any]) -> str:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def _notification(fields: Mapping[str, Any]) -> Notification:
    state = PaymentState(fields["state"])
    amount = Money(int(fields["amount"]), fields["currency"]) if fields.get("amount") else None
    status = TradeStatus(state, state.value, fields.get("provider_ref"), amount)
    refund = None
    if fields.get("refund_no") or fields.get("refund_ref"):
        refund_state = RefundState(fields["refund_state"])
        refund_amount = fields.get("refund_amount")
        refund = RefundResult(
            fields["refund_no"], refund_state, refund_state.value,
            Money(int(refund_amount), fields["currency"]) if refund_amount else None,
            fields.get("refund_ref") or None,
        )  # fmt: skip
    kind = NotificationKind.REFUND if fields["type"] == "refund" else NotificationKind.PAYMENT
    return Notification(
        kind, fields["event_id"], fields.get("out_trade_no"), status, refund,
        raw_type=fields["type"], provider_ref=fields.get("provider_ref"),
        refunds_unlisted=fields.get("unlisted") == "yes",
    )  # fmt: skip
