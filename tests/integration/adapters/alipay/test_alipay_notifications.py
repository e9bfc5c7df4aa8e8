"""The Alipay adapter against the Alipay simulator, over real HTTP on 127.0.0.1: notifications
(delivery and acknowledgement, duplicates and retries, refunds out of order) and forged
notifications refused, directly and over HTTP.

All RSA keys are generated here at test time; the simulator generates its own Alipay key pair.
"""

from __future__ import annotations

import base64
from urllib.parse import parse_qsl, urlencode

import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from adapters.payments.alipay import AlipayProvider
from adapters.payments.base import NotificationKind, PaymentState, SignatureInvalid
from simulators.alipay import AlipaySimulator
from tests.conftest import wait_until
from tests.integration.adapters.alipay.support import Receiver, cny, create_request, new_key, refund


# -- notifications -------------------------------------------------------------------------------
def test_payment_notification_is_delivered_verified_and_acknowledged(
    provider: AlipayProvider, sim: AlipaySimulator, receiver: Receiver
) -> None:
    provider.create(create_request("N-1", "66.60", notify_url=receiver.url))
    sim.pay("N-1")
    note = wait_until(lambda: receiver.parsed and receiver.parsed[0])
    sent = sim.ledger()["notifications"][0]
    assert note.kind is NotificationKind.PAYMENT
    assert note.event_id == sent["notify_id"]
    assert note.out_trade_no == "N-1"
    assert note.raw_type == "trade_status_sync"
    assert note.status is not None
    assert (note.status.state, note.status.amount) == (PaymentState.PAID, cny("66.60"))
    assert note.status.provider_ref == sim.ledger()["trades"]["N-1"]["trade_no"]
    wait_until(lambda: [receiver.url, 200, 1] in sim.ledger()["deliveries"])
    assert [d for d in sim.ledger()["deliveries"] if d[0] == receiver.url] == [
        [receiver.url, 200, 1]
    ]
    assert receiver.rejected == []


def test_duplicate_notifications_and_retry_until_success(
    provider: AlipayProvider, sim: AlipaySimulator, receiver: Receiver
) -> None:
    sim.configure(notify_copies=3)
    receiver.fail_first = 1
    provider.create(create_request("N-2", notify_url=receiver.url))
    sim.pay("N-2")
    # 3 copies, one answered "fail" → one retry: four deliveries, all with the same notify_id.
    wait_until(lambda: len(receiver.parsed) == 4)
    assert {n.event_id for n in receiver.parsed} == {sim.ledger()["notifications"][0]["notify_id"]}
    deliveries = [d for d in sim.ledger()["deliveries"] if d[0] == receiver.url]
    assert sorted(d[1] for d in deliveries) == [200, 200, 200, 400]
    assert max(d[2] for d in deliveries) == 2
    assert sim.notifier.pending() == 0


def test_refund_notifications_out_of_order(
    provider: AlipayProvider, sim: AlipaySimulator, receiver: Receiver
) -> None:
    sim.configure(notify_hold=True)
    provider.create(create_request("N-3", "20.00", notify_url=receiver.url))
    sim.pay("N-3")
    provider.refund(refund("N-3", "RF-9", "20.00", total="20.00"))
    assert sim.release_notifications(reverse=True) == 2
    wait_until(lambda: len(receiver.parsed) == 2)
    refunded, paid = receiver.parsed  # delivered newest first
    assert refunded.status is not None and paid.status is not None
    assert refunded.status.state is PaymentState.REFUNDED
    assert refunded.refund is not None and refunded.refund.refund_no == "RF-9"
    assert refunded.refund.raw_status == "refund_fee=20.00"
    assert paid.status.state is PaymentState.PAID and paid.refund is None


def _sent_body(sim: AlipaySimulator) -> bytes:
    return str(sim.ledger()["notifications"][0]["body"]).encode()


def _with(body: bytes, **changes: str) -> bytes:
    return urlencode({**dict(parse_qsl(body.decode())), **changes}).encode()


def test_forged_notifications_are_rejected(provider: AlipayProvider, sim: AlipaySimulator) -> None:
    provider.create(create_request("N-4", "50.00", notify_url="http://127.0.0.1:9/notify"))
    sim.pay("N-4")
    body = _sent_body(sim)
    good = provider.parse_notification({}, body)
    assert good.status is not None and good.status.amount == cny("50.00")

    params = dict(parse_qsl(body.decode()))
    attacker = new_key()
    attacker_sign = attacker.sign(b"anything", padding.PKCS1v15(), hashes.SHA256())
    forgeries = {
        "tampered total_amount": _with(body, total_amount="0.01"),
        "bad signature": _with(body, sign=base64.b64encode(attacker_sign).decode()),
        "not base64": _with(body, sign="%%%"),
        "no signature": urlencode({k: v for k, v in params.items() if k != "sign"}).encode(),
        "legacy RSA sign_type": _with(body, sign_type="RSA"),
        "wrong app_id": sim.sign_notification({**params, "app_id": "2021999999999999"}),
        "repeated field": body + b"&total_amount=0.01",
    }
    for label, forged in forgeries.items():
        with pytest.raises(SignatureInvalid):
            provider.parse_notification({}, forged)
            pytest.fail(f"accepted forgery: {label}")


def test_forged_notification_gets_fail_reply_over_http(
    provider: AlipayProvider, sim: AlipaySimulator, receiver: Receiver
) -> None:
    provider.create(create_request("N-5", notify_url="http://127.0.0.1:9/notify"))
    sim.pay("N-5")
    forged = _with(_sent_body(sim), total_amount="0.01")
    resp = requests.post(receiver.url, data=forged, timeout=5)
    assert (resp.status_code, resp.content) == (400, b"fail")
    assert receiver.parsed == [] and len(receiver.rejected) == 1
