"""WeChat Pay v3 adapter against the WeChat Pay simulator over real HTTP on 127.0.0.1:
notifications (delivery and retries, refunds, duplicates and order), forged notifications
refused with the check that fired, and the notification replies.

Every key (merchant API key, platform key, APIv3 key) is generated at test time.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from adapters.payments.base import NotificationKind, PaymentState, RefundState, SignatureInvalid
from adapters.payments.wechatpay import WeChatPayProvider
from domain.money import Money
from simulators.wechatpay import WeChatPaySimulator
from tests.integration.adapters.wechatpay.support import (
    APPID,
    MCHID,
    Headers,
    Receiver,
    paid_order,
    refund_request,
)


# -- notifications ---------------------------------------------------------------------------------
def test_payment_notification_is_retried_until_acknowledged_and_parses_to_paid(
    provider: WeChatPayProvider, sim: WeChatPaySimulator, receiver: Receiver
) -> None:
    receiver.replies = [500]  # the first delivery fails, WeChat must retry
    ref = paid_order(provider, sim, 4321, notify_url=receiver.url)

    deliveries = receiver.wait_for(2)
    notes = [provider.parse_notification(h, b) for h, b in deliveries]

    note = notes[0]
    assert note.kind is NotificationKind.PAYMENT and note.raw_type == "TRANSACTION.SUCCESS"
    assert note.out_trade_no == ref.out_trade_no
    assert note.status is not None and note.status.state is PaymentState.PAID
    assert note.status.amount == Money(4321, "CNY")
    assert note.status.provider_ref == sim.ledger()["orders"][ref.out_trade_no]["transaction_id"]
    assert {n.event_id for n in notes} == {note.event_id}  # a retry is the same event


def test_refund_notification_parses_to_refund(
    provider: WeChatPayProvider, sim: WeChatPaySimulator, receiver: Receiver
) -> None:
    ref = paid_order(provider, sim, 1000)
    request = replace(
        refund_request(ref, "R-" + ref.out_trade_no, 400, 1000), notify_url=receiver.url
    )
    result = provider.refund(request)

    headers, body = receiver.wait_for(1)[0]
    note = provider.parse_notification(headers, body)

    assert note.kind is NotificationKind.REFUND and note.raw_type == "REFUND.SUCCESS"
    assert note.out_trade_no == ref.out_trade_no
    assert note.refund is not None
    assert note.refund.refund_no == request.refund_no
    assert note.refund.state is RefundState.SUCCEEDED
    assert note.refund.amount == Money(400, "CNY")
    assert note.refund.provider_refund_ref == result.provider_refund_ref


def test_duplicate_and_out_of_order_notifications(
    provider: WeChatPayProvider, sim: WeChatPaySimulator, receiver: Receiver
) -> None:
    sim.set_options(hold_notifications=True, notify_copies=2)
    first = paid_order(provider, sim, 100, notify_url=receiver.url)
    second = paid_order(provider, sim, 200, notify_url=receiver.url)
    assert sim.release_notifications(reverse=True) == 2

    notes = [provider.parse_notification(h, b) for h, b in receiver.wait_for(4)]

    # Released newest first, 50 ms apart; on a loaded machine two deliveries can still swap,
    # so the adapter's contract is checked on the set: every copy parses, copies share an id.
    arrived = sorted(n.out_trade_no for n in notes)
    assert arrived == sorted([second.out_trade_no] * 2 + [first.out_trade_no] * 2)
    assert len({n.event_id for n in notes}) == 2  # duplicates share the event id


def _transaction(
    out_trade_no: str = "T0000001", mchid: str = MCHID, appid: str = APPID
) -> dict[str, Any]:
    return {
        "appid": appid,
        "mchid": mchid,
        "out_trade_no": out_trade_no,
        "transaction_id": "4200000000000000000000000001",
        "trade_type": "NATIVE",
        "trade_state": "SUCCESS",
        "success_time": "2025-01-01T12:00:00+08:00",
        "amount": {"total": 1000, "payer_total": 1000, "currency": "CNY"},
    }


def _signed(sim: WeChatPaySimulator, **options: Any) -> tuple[Headers, bytes]:
    """A notification the simulator signs; ``mchid`` goes into the encrypted resource."""
    resource = _transaction(mchid=options.pop("mchid", MCHID), appid=options.pop("appid", APPID))
    return sim.build_notification("TRANSACTION.SUCCESS", resource, **options)


def forge_bad_signature(sim: WeChatPaySimulator) -> tuple[Headers, bytes]:
    return _signed(sim, corrupt_signature=True)


def forge_attacker_key(sim: WeChatPaySimulator) -> tuple[Headers, bytes]:
    """Well formed, but signed by someone else's key under our platform serial."""
    headers, body = _signed(sim)
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    message = f"{headers['Wechatpay-Timestamp']}\n{headers['Wechatpay-Nonce']}\n".encode()
    signature = attacker.sign(message + body + b"\n", padding.PKCS1v15(), hashes.SHA256())
    return {**headers, "Wechatpay-Signature": base64.b64encode(signature).decode()}, body


def forge_tampered_body(sim: WeChatPaySimulator) -> tuple[Headers, bytes]:
    headers, body = _signed(sim)
    return headers, body.replace(b'"id":"EV-', b'"id":"EX-')


def forge_wrong_serial(sim: WeChatPaySimulator) -> tuple[Headers, bytes]:
    return _signed(sim, serial="PUB_KEY_ID_0000UNKNOWN")


def forge_missing_signature(sim: WeChatPaySimulator) -> tuple[Headers, bytes]:
    headers, body = _signed(sim)
    return {k: v for k, v in headers.items() if k != "Wechatpay-Signature"}, body


def forge_stale_timestamp(sim: WeChatPaySimulator) -> tuple[Headers, bytes]:
    return _signed(sim, timestamp=int(time.time()) - 301)


def forge_future_timestamp(sim: WeChatPaySimulator) -> tuple[Headers, bytes]:
    return _signed(sim, timestamp=int(time.time()) + 600)


def forge_bad_gcm_tag(sim: WeChatPaySimulator) -> tuple[Headers, bytes]:
    return _signed(sim, corrupt_tag=True)  # correctly signed, but the ciphertext fails its tag


def forge_wrong_mchid(sim: WeChatPaySimulator) -> tuple[Headers, bytes]:
    return _signed(sim, mchid="1900009999")  # genuine, but for another merchant


def forge_wrong_appid(sim: WeChatPaySimulator) -> tuple[Headers, bytes]:
    return _signed(sim, appid="wx0000000000000bad")  # our merchant, but another app's trade


Forgery = Callable[[WeChatPaySimulator], tuple[Headers, bytes]]

#: name → (forgery, text the SignatureInvalid message must contain: proves *which* check fired)
FORGERIES: dict[str, tuple[Forgery, str]] = {
    "bad_signature": (forge_bad_signature, "does not verify"),
    "attacker_key": (forge_attacker_key, "does not verify"),
    "tampered_body": (forge_tampered_body, "does not verify"),
    "wrong_serial": (forge_wrong_serial, "unknown Wechatpay-Serial"),
    "missing_signature": (forge_missing_signature, "missing"),
    "stale_timestamp": (forge_stale_timestamp, "Timestamp"),
    "future_timestamp": (forge_future_timestamp, "Timestamp"),
    "bad_gcm_tag": (forge_bad_gcm_tag, "GCM"),
    "wrong_mchid": (forge_wrong_mchid, "mchid"),
    "wrong_appid": (forge_wrong_appid, "appid"),
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_forged_notifications_raise_signature_invalid(
    name: str, provider: WeChatPayProvider, sim: WeChatPaySimulator
) -> None:
    forge, reason = FORGERIES[name]
    headers, body = forge(sim)
    with pytest.raises(SignatureInvalid, match=reason):
        provider.parse_notification(headers, body)


def test_notification_just_inside_tolerance_is_accepted(
    provider: WeChatPayProvider, sim: WeChatPaySimulator
) -> None:
    headers, body = sim.build_notification(
        "TRANSACTION.SUCCESS", _transaction(), timestamp=int(time.time()) - 290
    )
    note = provider.parse_notification({k.upper(): v for k, v in headers.items()}, body)
    assert note.status is not None and note.status.amount == Money(1000, "CNY")


def test_notification_replies(provider: WeChatPayProvider) -> None:
    ok, fail = provider.notification_reply(True), provider.notification_reply(False)
    assert (ok.status_code, ok.body) == (204, b"")
    assert fail.status_code == 500 and b'"code":"FAIL"' in fail.body
