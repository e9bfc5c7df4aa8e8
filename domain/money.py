"""Money as integer minor units plus an ISO 4217 currency. No float ever touches an amount.

Wire formats differ per provider (Alipay wants "12.34" yuan, WeChat fen, Stripe cents); the
conversions live here so every adapter uses the same exact arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

#: Currencies orderflow accepts, with their minor-unit exponent (ISO 4217).
CURRENCY_EXPONENTS: dict[str, int] = {
    "CNY": 2,
    "USD": 2,
    "EUR": 2,
    "GBP": 2,
    "HKD": 2,
    "SGD": 2,
    "AUD": 2,
    "CAD": 2,
    "CHF": 2,
    "JPY": 0,
    "KRW": 0,
}


class MoneyError(ValueError):
    """An amount or currency that cannot be represented exactly."""


@dataclass(frozen=True, slots=True)
class Money:
    """An exact amount: ``amount`` minor units of ``currency`` (e.g. 1234 CNY = 12.34 yuan)."""

    amount: int
    currency: str

    def __post_init__(self) -> None:
        if isinstance(self.amount, bool) or not isinstance(self.amount, int):
            raise MoneyError(f"amount must be integer minor units, got {self.amount!r}")
        if self.currency not in CURRENCY_EXPONENTS:
            raise MoneyError(f"unknown currency {self.currency!r}")

    @property
    def exponent(self) -> int:
        return CURRENCY_EXPONENTS[self.currency]

    def __add__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(self.amount - other.amount, self.currency)

    def __mul__(self, factor: int) -> Money:
        if isinstance(factor, bool) or not isinstance(factor, int):
            raise MoneyError("money can only be multiplied by an integer")
        return Money(self.amount * factor, self.currency)

    def _same_currency(self, other: Money) -> None:
        if other.currency != self.currency:
            raise MoneyError(f"currency mismatch: {self.currency} vs {other.currency}")

    def to_major_str(self) -> str:
        """The decimal string in major units, e.g. ``Money(1234, "CNY") -> "12.34"``."""
        return _major(self.amount, self.exponent)

    @classmethod
    def from_major_str(cls, text: str, currency: str) -> Money:
        """Parse ``"12.34"`` into minor units; refuse anything that is not exact."""
        if currency not in CURRENCY_EXPONENTS:
            raise MoneyError(f"unknown currency {currency!r}")
        try:
            value = Decimal(text)
        except InvalidOperation as exc:
            raise MoneyError(f"not a decimal amount: {text!r}") from exc
        minor = value.scaleb(CURRENCY_EXPONENTS[currency])
        if not value.is_finite() or minor != minor.to_integral_value():
            raise MoneyError(f"{text!r} has more precision than {currency} allows")
        return cls(int(minor), currency)

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(0, currency)

    def __str__(self) -> str:
        return format_money(self.amount, self.currency)


def _major(amount_minor: int, exponent: int) -> str:
    # Integer arithmetic only: exact for any size (Decimal would round past 28 digits).
    if exponent == 0:
        return str(amount_minor)
    sign = "-" if amount_minor < 0 else ""
    whole, fraction = divmod(abs(amount_minor), 10**exponent)
    return f"{sign}{whole}.{fraction:0{exponent}d}"


def format_money(amount_minor: int, currency: str) -> str:
    """The one way orderflow shows an amount to a person: major units with the currency's
    exponent, then the code. ``format_money(6900, "CNY") == "69.00 CNY"``,
    ``format_money(500, "JPY") == "500 JPY"``, ``format_money(-5, "USD") == "-0.05 USD"``.

    No thousands separators, so the figure can be pasted into a refund or a provider's portal as
    is. Every CLI table uses it, and it is pure so the console can register it as a Jinja filter
    (``{{ order.total_amount | money(order.currency) }}``). A currency outside
    :data:`CURRENCY_EXPONENTS` (none can be stored, but a display must not fail on one) is shown
    in minor units and says so: ``"6900 XYZ (minor units)"``. Raises :class:`MoneyError` when
    ``amount_minor`` is not an ``int``: a float or a string here is a bug upstream, not money.
    """
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int):
        raise MoneyError(f"amount must be integer minor units, got {amount_minor!r}")
    exponent = CURRENCY_EXPONENTS.get(currency)
    if exponent is None:
        return f"{amount_minor} {currency} (minor units)"
    return f"{_major(amount_minor, exponent)} {currency}"


def money_json(amount_minor: int, currency: str) -> dict[str, int | str]:
    """Money in machine-readable output (``--json``): the exact integer, the currency and the
    :func:`format_money` text, e.g. ``{"amount_minor": 6900, "currency": "CNY",
    "display": "69.00 CNY"}``. Scripts compute with ``amount_minor``, never with ``display``."""
    return {
        "amount_minor": amount_minor,
        "currency": currency,
        "display": format_money(amount_minor, currency),
    }
