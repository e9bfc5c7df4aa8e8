"""Our number for a refund made at the provider (:func:`provider_refund_no`): the same for every
event about it, apart per payment, and always within ``refunds.refund_no``'s 64 characters."""

from __future__ import annotations

from services.payments.provider_refunds import lookup_arg, provider_refund_no


def test_the_number_is_stable_per_payment_and_refund() -> None:
    assert provider_refund_no(7, "re_3Ab") == provider_refund_no(7, "re_3Ab") == "provider-7-re_3Ab"
    assert provider_refund_no(8, "re_3Ab") != provider_refund_no(7, "re_3Ab")
    assert provider_refund_no(7, "re_3Ac") != provider_refund_no(7, "re_3Ab")


def test_a_long_name_is_hashed_into_64_characters() -> None:
    long_a, long_b = "H" * 64, "H" * 63 + "I"  # Alipay's out_biz_no may be 64 characters
    a, b = provider_refund_no(2**62, long_a), provider_refund_no(2**62, long_b)
    assert len(a) <= 64 and len(b) <= 64 and a != b
    assert a == provider_refund_no(2**62, long_a)


def test_the_lookup_argument_names_the_payment_and_perhaps_the_refund() -> None:
    assert lookup_arg(12) == "12:"
    assert lookup_arg(12, "HZ:1").partition(":") == ("12", ":", "HZ:1")
