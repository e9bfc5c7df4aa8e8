"""Kuaidi100 adapter against its simulator, over real HTTP: subscriptions and pushes (retries,
forgeries, aborts, push options, replies) and the mapping of every state code and status name."""

from __future__ import annotations

import secrets

import pytest

from adapters.logistics.base import ProviderRejected, SignatureInvalid
from adapters.logistics.kuaidi100 import Kuaidi100Provider
from simulators.kuaidi100 import Kuaidi100Simulator
from tests.conftest import wait_until
from tests.integration.adapters.kuaidi100.support import DAY, HOUR, PushReceiver, S, provider_for

# -- subscription and pushes ------------------------------------------------------------------


def test_subscribe_then_duplicate(
    sim: Kuaidi100Simulator, provider: Kuaidi100Provider, keys: dict[str, str]
) -> None:
    url = "http://127.0.0.1:9/hooks/kuaidi100"
    assert provider.subscribe("yuantong", "YT1300000013", url, None) is True
    assert provider.subscribe("yuantong", "YT1300000013", url, None) is False
    with pytest.raises(ProviderRejected) as err:
        provider_for(sim, {**keys, "key": "wrong"}).subscribe("yuantong", "YT1300000014", url, None)
    assert err.value.code == "600"
    with pytest.raises(ProviderRejected) as err:
        provider.subscribe("yuantong", "YT1300000015", "ftp://nowhere", None)
    assert err.value.code == "700"
    subs = sim.ledger()["subscriptions"]
    assert list(subs) == ["YT1300000013"] and subs["YT1300000013"]["status"] == "polling"


def test_pushes_follow_the_trace_until_shutdown(
    sim: Kuaidi100Simulator, provider: Kuaidi100Provider, receiver: PushReceiver
) -> None:
    sim.register_waybill("yuantong", "YT1400000014")
    assert provider.subscribe("yuantong", "YT1400000014", receiver.url, "13800000000")
    sim.advance(3 * HOUR)
    first = receiver.wait_for(1)[0]
    assert first.push_status == "polling" and first.result is not None
    assert first.result.status is S.IN_TRANSIT and first.result.raw_state == "103"
    assert (first.result.carrier, first.result.waybill) == ("yuantong", "YT1400000014")
    sim.advance(40 * HOUR)
    last = receiver.wait_for(2)[-1]
    assert last.push_status == "shutdown" and last.result is not None
    assert last.result.status is S.DELIVERED and last.result.signed
    assert [e.raw_code for e in last.result.events][-1] == "301"
    assert sim.ledger()["subscriptions"]["YT1400000014"]["status"] == "shutdown"
    wait_until(lambda: sim.ledger()["pushes"]["YT1400000014"]["acked"] == 2)
    pushes = sim.ledger()["pushes"]["YT1400000014"]
    assert (pushes["sent"], pushes["answered"], pushes["acked"]) == (2, 2, 2)
    assert [p["status"] for p in pushes["log"]] == ["polling", "shutdown"]


def test_unacknowledged_push_is_retried(
    sim: Kuaidi100Simulator, provider: Kuaidi100Provider
) -> None:
    receiver = PushReceiver(provider, fail_first=2)
    try:
        sim.register_waybill("yuantong", "YT1500000015")
        provider.subscribe("yuantong", "YT1500000015", receiver.url, None)
        sim.advance(3 * HOUR)
        updates = receiver.wait_for(3)
        assert receiver.forms[0] == receiver.forms[1] == receiver.forms[2]
        assert all(u.push_status == "polling" for u in updates)
        wait_until(lambda: sim.ledger()["pushes"]["YT1500000015"]["acked"] == 1)
        pushes = sim.ledger()["pushes"]["YT1500000015"]
        assert (pushes["sent"], pushes["answered"], pushes["acked"]) == (1, 3, 1)
    finally:
        receiver.close()


def test_forged_pushes_are_refused(
    sim: Kuaidi100Simulator,
    provider: Kuaidi100Provider,
    receiver: PushReceiver,
    keys: dict[str, str],
) -> None:
    sim.register_waybill("yuantong", "YT1600000016")
    provider.subscribe("yuantong", "YT1600000016", receiver.url, None)
    sim.advance(3 * HOUR)
    receiver.wait_for(1)
    genuine = receiver.forms[0]
    assert provider.parse_push(genuine).push_status == "polling"
    tampered = genuine["param"].replace('"polling"', '"shutdown"')
    assert tampered != genuine["param"]
    forgeries: list[dict[str, str]] = [
        {"param": tampered, "sign": genuine["sign"]},
        {"param": genuine["param"], "sign": "0" * 32},
        {"param": genuine["param"], "sign": ""},
        {"param": genuine["param"]},
        {"sign": genuine["sign"]},
    ]
    for form in forgeries:
        with pytest.raises(SignatureInvalid):
            provider.parse_push(form)
    other_salt = provider_for(sim, {**keys, "salt": secrets.token_hex(8)})
    with pytest.raises(SignatureInvalid):
        other_salt.parse_push(genuine)


def test_stuck_parcel_aborts_as_expired(
    sim: Kuaidi100Simulator, provider: Kuaidi100Provider, receiver: PushReceiver
) -> None:
    sim.register_waybill("yuantong", "YT1700000017", script="stuck")
    provider.subscribe("yuantong", "YT1700000017", receiver.url, None)
    sim.advance(7 * HOUR)
    assert receiver.wait_for(1)[0].push_status == "polling"
    sim.advance(30 * DAY)
    sim.advance(31 * DAY)
    abort = receiver.wait_for(2)[-1]
    assert abort.push_status == "abort" and "60天无变化" in abort.message
    assert abort.result is not None and abort.result.status is S.EXPIRED
    assert abort.result.raw_state == "1002" and len(abort.result.events) == 3
    assert sim.ledger()["subscriptions"]["YT1700000017"]["status"] == "abort"


def test_never_found_parcel_abort_is_flagged_as_an_exception(
    sim: Kuaidi100Simulator, provider: Kuaidi100Provider, receiver: PushReceiver
) -> None:
    """Kuaidi100 gives up on a number without any trace after 3 days ("3天查询无记录"): the
    push parses as EXCEPTION with a note, so the order is flagged, not left waiting."""
    sim.register_waybill("yuantong", "YT1750000017", script="never_found")
    provider.subscribe("yuantong", "YT1750000017", receiver.url, None)
    sim.advance(4 * DAY)
    (abort,) = receiver.wait_for(1)
    assert abort.push_status == "abort" and "3天查询无记录" in abort.message
    assert abort.result is not None and abort.result.status is S.EXCEPTION
    assert abort.result.events == () and "3天查询无记录" in abort.result.note


# Every state code of provider-protocols.md §4 and its normalized status from the §5 table,
# written out by hand (not derived from the adapter's table). 8 and 9 are not documented: the
# mildest status that says "there is a trace".
STATE_CODES: dict[str, S] = {
    "0": S.IN_TRANSIT, "1": S.IN_TRANSIT, "2": S.EXCEPTION, "3": S.DELIVERED,
    "4": S.EXCEPTION, "5": S.OUT_FOR_DELIVERY, "6": S.EXCEPTION, "7": S.IN_TRANSIT,
    "8": S.IN_TRANSIT, "9": S.IN_TRANSIT, "10": S.IN_TRANSIT, "11": S.IN_TRANSIT,
    "12": S.IN_TRANSIT, "13": S.EXCEPTION, "14": S.EXCEPTION,
    # advanced codes (resultv2=4)
    "101": S.INFO_RECEIVED, "102": S.INFO_RECEIVED, "103": S.IN_TRANSIT,
    "1001": S.IN_TRANSIT, "1002": S.IN_TRANSIT, "1003": S.IN_TRANSIT,
    "501": S.AVAILABLE_FOR_PICKUP,
    "301": S.DELIVERED, "302": S.DELIVERED, "303": S.DELIVERED, "304": S.DELIVERED,
    "401": S.EXCEPTION,
}  # fmt: skip
STATUS_NAMES = {"在途": "0", "揽收": "1", "疑难": "2", "签收": "3", "退签": "4", "派件": "5",
                "退回": "6", "转投": "7", "待清关": "10", "清关中": "11", "已清关": "12",
                "清关异常": "13", "拒签": "14"}  # fmt: skip


@pytest.mark.parametrize(("code", "expected"), sorted(STATE_CODES.items()))
def test_every_state_code_maps_to_its_normalized_status(
    provider: Kuaidi100Provider, keys: dict[str, str], code: str, expected: S
) -> None:
    """Through a signed push (the same parser as a query answer): the result's status comes
    from ``state``, each event's from its ``statusCode``, and the raw code is kept beside it."""
    import hashlib
    import json

    from adapters.logistics.kuaidi100 import normalize_state

    assert normalize_state(code) is expected
    event = {"time": "2026-11-02 10:00:00", "ftime": "2026-11-02 10:00:00",
             "context": f"scan {code}", "status": "在途", "statusCode": code}  # fmt: skip
    last = {"message": "ok", "nu": "YT1900000019", "ischeck": "0", "com": "yuantong",
            "status": "200", "state": code, "data": [event]}  # fmt: skip
    param = json.dumps({"status": "polling", "message": "", "lastResult": last})
    sign = hashlib.md5((param + keys["salt"]).encode()).hexdigest().upper()
    result = provider.parse_push({"param": param, "sign": sign}).result
    assert result is not None
    assert (result.status, result.raw_state) == (expected, code)
    assert (result.events[0].status, result.events[0].raw_code) == (expected, code)
    # Refused, returned or cancelled: an exception that will not resolve itself.
    assert result.returned is (code in ("4", "6", "14", "401"))


@pytest.mark.parametrize(("name", "code"), sorted(STATUS_NAMES.items()))
def test_status_names_map_like_their_codes(name: str, code: str) -> None:
    from adapters.logistics.kuaidi100 import normalize_state

    assert normalize_state(name) is STATE_CODES[code]


def test_push_options_and_push_now(
    sim: Kuaidi100Simulator, provider: Kuaidi100Provider, receiver: PushReceiver
) -> None:
    sim.register_waybill("yuantong", "YT1800000018")
    provider.subscribe("yuantong", "YT1800000018", receiver.url, None)
    sim.set_push_options(duplicate=True)
    sim.advance(3 * HOUR)
    first, again = receiver.wait_for(2)
    assert first == again  # the duplicate parses the same
    sim.set_push_options(duplicate=False, out_of_order=True, stale_delay_s=0.1)
    sim.advance(10 * HOUR)
    updates = receiver.wait_for(4)
    newer, stale = updates[2].result, updates[3].result
    assert newer is not None and stale is not None
    assert len(stale.events) < len(newer.events)  # the stale snapshot arrived last
    sim.set_push_options(out_of_order=False)
    assert sim.push_now("YT1800000018") and not sim.push_now("YT0000000000")
    assert receiver.wait_for(5)[-1].result == newer


def test_push_reply_shapes(provider: Kuaidi100Provider) -> None:
    status, body, ctype = provider.push_reply(True)
    assert (status, ctype) == (200, "application/json")
    assert body.decode() == '{"result":true,"returnCode":"200","message":"成功"}'
    status, body, _ = provider.push_reply(False)
    assert status == 500 and b'"result":false' in body and b'"returnCode":"500"' in body
