"""domain.money.format_money / money_json: the one display form of an amount (issue 19)."""

from __future__ import annotations

import pytest

from domain.money import CURRENCY_EXPONENTS, Money, MoneyError, format_money, money_json


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [
        (6900, "CNY", "69.00 CNY"),
        (34200, "CNY", "342.00 CNY"),
        (1234, "USD", "12.34 USD"),
        (5, "EUR", "0.05 EUR"),
        (0, "CNY", "0.00 CNY"),
        (-5, "USD", "-0.05 USD"),
        (-123456, "EUR", "-1234.56 EUR"),
        (500, "JPY", "500 JPY"),
        (0, "KRW", "0 KRW"),
        (-70, "JPY", "-70 JPY"),
    ],
)
def test_major_units_with_the_currency_exponent(amount: int, currency: str, shown: str) -> None:
    assert format_money(amount, currency) == shown


def test_exact_beyond_decimal_precision() -> None:
    # 31 digits: Decimal's default context (28 digits) would round the last ones.
    amount = 1234567890123456789012345678901
    assert format_money(amount, "CNY") == "12345678901234567890123456789.01 CNY"


def test_every_known_currency_round_trips_through_the_parser() -> None:
    for currency, exponent in CURRENCY_EXPONENTS.items():
        text, code = format_money(123456, currency).split()
        assert code == currency
        assert len(text.partition(".")[2]) == exponent
        assert Money.from_major_str(text, currency) == Money(123456, currency)


def test_money_str_is_the_same_formatter() -> None:
    assert str(Money(6900, "CNY")) == format_money(6900, "CNY") == "69.00 CNY"
    assert str(Money(6900, "JPY")) == "6900 JPY"


def test_unknown_currency_is_shown_in_minor_units_not_guessed() -> None:
    assert format_money(6900, "XYZ") == "6900 XYZ (minor units)"


@pytest.mark.parametrize("amount", [69.0, "6900", True, None])
def test_non_integer_amount_is_refused(amount: object) -> None:
    with pytest.raises(MoneyError, match="integer minor units"):
        format_money(amount, "CNY")  # type: ignore[arg-type]


def test_money_json_carries_the_exact_integer_and_the_display() -> None:
    assert money_json(6900, "CNY") == {
        "amount_minor": 6900,
        "currency": "CNY",
        "display": "69.00 CNY",
    }
    assert money_json(500, "JPY")["display"] == "500 JPY"
