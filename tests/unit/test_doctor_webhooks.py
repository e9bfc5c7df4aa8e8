"""orderflow doctor's webhooks line: a provider off this machine cannot call a loopback
PUBLIC_BASE_URL (the default), which the workers put in every payment and subscription."""

from __future__ import annotations

import pytest

from cli.ops import webhooks_reachable

REMOTE = {"alipay": "https://openapi.alipay.com/gateway.do", "stripe": "https://api.stripe.com"}
LOCAL = {"alipay": "http://127.0.0.1:9101/gateway.do", "stripe": "http://localhost:9103"}


@pytest.mark.parametrize("base", ["http://127.0.0.1:8000", "http://localhost:8000",
                                  "http://[::1]:8000", "http://127.0.0.2"])  # fmt: skip
def test_a_loopback_base_fails_naming_the_providers_that_cannot_reach_it(base: str) -> None:
    with pytest.raises(RuntimeError, match=r"PUBLIC_BASE_URL is .*: alipay, stripe cannot reach"):
        webhooks_reachable(base, {**REMOTE, "kuaidi100": "http://127.0.0.1:9104/poll"})


def test_a_loopback_base_is_fine_when_every_provider_is_on_this_machine() -> None:
    assert "all on this machine" in webhooks_reachable("http://127.0.0.1:8000", LOCAL)
    assert "all on this machine" in webhooks_reachable("http://127.0.0.1:8000", {})


def test_a_public_base_is_fine_whatever_the_providers() -> None:
    said = webhooks_reachable("https://orders.example.com", REMOTE)
    assert said == "providers notify https://orders.example.com"
