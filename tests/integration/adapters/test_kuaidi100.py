"""Kuaidi100 adapter and warehouse booking client against their simulators, over real HTTP."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest

from adapters.logistics.base import (
    BookingService,
    BookShipment,
    ProviderRejected,
    ProviderUnavailable,
    PushUpdate,
    SignatureInvalid,
    TrackingProvider,
    TrackingStatus,
)
from adapters.logistics.kuaidi100 import (
    Kuaidi100Config,
    Kuaidi100Provider,
    WarehouseBookingConfig,
    WarehouseBookingService,
)
from simulators.kuaidi100 import Kuaidi100Simulator
from simulators.warehouse import WarehouseSimulator
from tests.conftest import wait_until

S = TrackingStatus
HOUR = 3600.0
DAY = 86400.0
CUSTOMER = "TESTCUSTOMER01"


# By default the clock barely moves on its own (time_scale=1) and tests jump it with
# ``advance``; the throttle is off and pushes are checked every simulated minute.
SIM_DEFAULTS: dict[str, Any] = {
    "time_scale": 1.0,
    "min_query_interval_s": 0.0,
    "push_interval_s": 60.0,
    "first_push_delay_s": 0.0,
    "push_retry_delays": (0.05, 0.05, 0.05),
}


@pytest.fixture(scope="module")
def keys() -> dict[str, str]:
    return {"key": secrets.token_hex(8), "salt": secrets.token_hex(8)}


@pytest.fixture(scope="module")
def shared_sim(keys: dict[str, str]) -> Iterator[Kuaidi100Simulator]:
    # One server for the module (a server takes ~0.5 s to shut down); reset between tests.
    with Kuaidi100Simulator(CUSTOMER, keys["key"], **SIM_DEFAULTS) as sim:
        yield sim


@pytest.fixture
def sim(shared_sim: Kuaidi100Simulator) -> Kuaidi100Simulator:
    shared_sim.reset()  # faults, waybills, subscriptions, ledger, push options
    return shared_sim


@pytest.fixture
def make_sim(keys: dict[str, str]) -> Iterator[Callable[..., Kuaidi100Simulator]]:
    """Dedicated simulators for tests that need other settings."""
    started: list[Kuaidi100Simulator] = []

    def factory(**overrides: Any) -> Kuaidi100Simulator:
        sim = Kuaidi100Simulator(CUSTOMER, keys["key"], **{**SIM_DEFAULTS, **overrides})
        started.append(sim.start())
        return sim

    yield factory
    for sim in started:
        sim.stop()


def provider_for(
    sim: Kuaidi100Simulator, keys: dict[str, str], **overrides: Any
) -> Kuaidi100Provider:
    options: dict[str, Any] = {
        "query_url": f"{sim.url}/poll/query.do",
        "subscribe_url": f"{sim.url}/poll",
        "customer": CUSTOMER,
        "key": keys["key"],
        "callback_salt": keys["salt"],
        "read_timeout": 2.0,
    }
    return Kuaidi100Provider(Kuaidi100Config(**{**options, **overrides}))


@pytest.fixture
def provider(sim: Kuaidi100Simulator, keys: dict[str, str]) -> Kuaidi100Provider:
    return provider_for(sim, keys)


class PushReceiver:
    """A merchant callback endpoint: verifies and parses with the adapter, replies its ack.
    The first ``fail_first`` pushes get the failure reply (to exercise retries)."""

    def __init__(self, provider: Kuaidi100Provider, fail_first: int = 0) -> None:
        self.forms: list[dict[str, str]] = []
        self.updates: list[PushUpdate] = []
        self.fail_first = fail_first
        self._cv = threading.Condition()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler(provider))
        self._httpd.daemon_threads = True
        # A short poll interval so that shutdown() returns quickly.
        kwargs = {"poll_interval": 0.05}
        threading.Thread(target=self._httpd.serve_forever, kwargs=kwargs, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/hooks/kuaidi100"

    def _handler(self, provider: Kuaidi100Provider) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                form = {k: v[-1] for k, v in parse_qs(raw.decode(), keep_blank_values=True).items()}
                update = provider.parse_push(form)
                ok = receiver._record(form, update)
                status, body, ctype = provider.push_reply(ok)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def _record(self, form: dict[str, str], update: PushUpdate) -> bool:
        with self._cv:
            self.forms.append(form)
            self.updates.append(update)
            self._cv.notify_all()
            if self.fail_first > 0:
                self.fail_first -= 1
                return False
            return True

    def wait_for(self, count: int, timeout: float = 60.0) -> list[PushUpdate]:
        with self._cv:
            assert self._cv.wait_for(lambda: len(self.updates) >= count, timeout), self.updates
            return list(self.updates)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def receiver(provider: Kuaidi100Provider) -> Iterator[PushReceiver]:
    r = PushReceiver(provider)
    yield r
    r.close()


# -- query ------------------------------------------------------------------------------------


def test_implements_the_ports(provider: Kuaidi100Provider) -> None:
    assert isinstance(provider, TrackingProvider)
    warehouse = WarehouseBookingService(WarehouseBookingConfig("http://127.0.0.1:9", "k"))
    assert isinstance(warehouse, BookingService)


def test_query_follows_the_trace_to_delivered(
    sim: Kuaidi100Simulator, provider: Kuaidi100Provider
) -> None:
    sim.register_waybill("yuantong", "YT1000000001")
    seen = [provider.query("yuantong", "YT1000000001")]
    assert seen[0].status is S.PENDING and seen[0].events == ()
    for hours in (1, 2, 22, 7, 5):  # 1h, 3h, 25h, 32h, 37h after registration
        sim.advance(hours * HOUR)
        seen.append(provider.query("yuantong", "YT1000000001"))
    assert [r.status for r in seen] == [
        S.PENDING,
        S.INFO_RECEIVED,
        S.IN_TRANSIT,
        S.IN_TRANSIT,
        S.OUT_FOR_DELIVERY,
        S.DELIVERED,
    ]
    final = seen[-1]
    assert final.raw_state == "301" and final.signed and not seen[-2].signed
    assert [e.raw_code for e in final.events] == [
        "102", "103", "1002", "1002", "1002", "1001", "5", "301",
    ]  # fmt: skip
    times = [e.at for e in final.events]
    assert times == sorted(times) and len(set(times)) == len(times)  # oldest first
    assert final.events[0].status is S.INFO_RECEIVED and final.events[-1].status is S.DELIVERED
    assert "签收" in final.events[-1].description and final.events[-1].location
    assert all(e.at.utcoffset() is not None for e in final.events)


def test_query_on_a_running_clock(
    make_sim: Callable[..., Kuaidi100Simulator], keys: dict[str, str]
) -> None:
    fast = make_sim(time_scale=200_000.0)  # 34 simulated hours in ~0.6 s
    provider = provider_for(fast, keys)
    fast.register_waybill("zhongtong", "ZT2000000002")
    statuses: list[S] = []
    deadline = time.monotonic() + 5
    while S.DELIVERED not in statuses and time.monotonic() < deadline:
        statuses.append(provider.query("zhongtong", "ZT2000000002").status)
        time.sleep(0.05)
    assert statuses[-1] is S.DELIVERED
    assert S.IN_TRANSIT in statuses
    assert fast.ledger()["queries"]["ZT2000000002"]["count"] == len(statuses)


def test_status_names_without_advanced_codes(sim: Kuaidi100Simulator, keys: dict[str, str]) -> None:
    provider = provider_for(sim, keys, resultv2="1")  # events carry names, state basic codes
    sim.register_waybill("yunda", "YD3000000003", script="returned")
    sim.advance(33 * HOUR)
    returning = provider.query("yunda", "YD3000000003")
    assert returning.status is S.EXCEPTION and returning.raw_state == "6"
    assert returning.events[-1].raw_code == "退回"
    sim.advance(30 * HOUR)
    returned = provider.query("yunda", "YD3000000003")
    assert returned.status is S.EXCEPTION and returned.raw_state == "4" and not returned.signed


def test_exception_script(sim: Kuaidi100Simulator, provider: Kuaidi100Provider) -> None:
    sim.register_waybill("yuantong", "YT4000000004", script="exception")
    sim.advance(40 * HOUR)
    result = provider.query("yuantong", "YT4000000004")
    assert result.status is S.EXCEPTION and result.raw_state == "2"


def test_no_trace_is_pending(sim: Kuaidi100Simulator, provider: Kuaidi100Provider) -> None:
    sim.register_waybill("yuantong", "YT5000000005", script="never_found")
    sim.advance(10 * DAY)
    for carrier, number in (("yuantong", "YT5000000005"), ("yuantong", "YT5999999999")):
        result = provider.query(carrier, number)
        assert (result.status, result.events, result.waybill) == (S.PENDING, (), number)
    sim.register_waybill("yuantong", "YT5000000006")
    sim.advance(DAY)
    wrong_carrier = provider.query("zhongtong", "YT5000000006")
    assert wrong_carrier.status is S.PENDING


def test_wrong_key_is_rejected_503(sim: Kuaidi100Simulator, keys: dict[str, str]) -> None:
    sim.register_waybill("yuantong", "YT6000000006")
    forged = provider_for(sim, {**keys, "key": secrets.token_hex(8)})
    with pytest.raises(ProviderRejected) as err:
        forged.query("yuantong", "YT6000000006")
    assert err.value.code == "503" and not err.value.retryable


def test_unknown_carrier_is_rejected_400(provider: Kuaidi100Provider) -> None:
    with pytest.raises(ProviderRejected) as err:
        provider.query("nosuchcarrier", "YT6100000006")
    assert err.value.code == "400"


def test_shunfeng_needs_a_phone(sim: Kuaidi100Simulator, provider: Kuaidi100Provider) -> None:
    sim.register_waybill("shunfeng", "SF7000000007", phone="13912345678")
    sim.advance(3 * HOUR)
    with pytest.raises(ProviderRejected) as err:
        provider.query("shunfeng", "SF7000000007")
    assert err.value.code == "408"
    with pytest.raises(ProviderRejected):
        provider.query("shunfeng", "SF7000000007", phone="0000")
    assert provider.query("shunfeng", "SF7000000007", phone="5678").status is S.IN_TRANSIT


def test_throttle_locks_the_number(
    make_sim: Callable[..., Kuaidi100Simulator], keys: dict[str, str]
) -> None:
    sim = make_sim(min_query_interval_s=0.5)
    window = {"now": 1000.0}  # the throttle's clock is the test's: no race with a busy machine
    sim.window_clock = lambda: window["now"]
    provider = provider_for(sim, keys)
    sim.register_waybill("yuantong", "YT8000000008")
    sim.advance(3 * HOUR)
    assert provider.query("yuantong", "YT8000000008").status is S.IN_TRANSIT
    with pytest.raises(ProviderUnavailable) as err:  # documented: lock code 502, retryable
        provider.query("yuantong", "YT8000000008")
    assert err.value.code == "502" and err.value.retryable
    assert provider.query("yuantong", "YT8000000009").status is S.PENDING  # other numbers free
    ledger = sim.ledger()
    assert ledger["throttle_violations"] == 1
    record = ledger["queries"]["YT8000000008"]
    assert record["count"] == 2 and record["throttle_violations"] == 1
    assert len(record["timestamps"]) == 2
    window["now"] += 0.55
    assert provider.query("yuantong", "YT8000000008").status is S.IN_TRANSIT


def test_quota_exhausted_is_601(
    make_sim: Callable[..., Kuaidi100Simulator], keys: dict[str, str]
) -> None:
    sim = make_sim(quota=2)
    provider = provider_for(sim, keys)
    provider.query("yuantong", "YT9000000001")
    provider.query("yuantong", "YT9000000002")
    with pytest.raises(ProviderRejected) as err:
        provider.query("yuantong", "YT9000000003")
    assert err.value.code == "601"
    assert sim.ledger()["quota_rejections"] == 1


# -- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "faults",
    [
        {"error_rate": 1.0},
        {"timeout_rate": 1.0, "hang_seconds": 1.0},
        {"reset_rate": 1.0},
        {"business_error": "502"},
        {"business_error": "501"},
    ],
    ids=["5xx", "timeout", "reset", "busy-502", "error-501"],
)
def test_transient_failures_are_unavailable(
    sim: Kuaidi100Simulator, keys: dict[str, str], faults: dict[str, Any]
) -> None:
    provider = provider_for(sim, keys, read_timeout=0.3)
    sim.set_faults(**faults)
    with pytest.raises(ProviderUnavailable) as err:
        provider.query("yuantong", "YT1100000011")
    assert err.value.retryable
    if "business_error" in faults:
        return  # 501 means "duplicate" to the subscription endpoint
    with pytest.raises(ProviderUnavailable):
        provider.subscribe("yuantong", "YT1100000011", "http://127.0.0.1:9/cb", None)


def test_business_errors_are_rejected(sim: Kuaidi100Simulator, provider: Kuaidi100Provider) -> None:
    sim.set_faults(business_error="601")
    with pytest.raises(ProviderRejected) as err:
        provider.query("yuantong", "YT1200000012")
    assert err.value.code == "601" and not err.value.retryable


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


# -- booking ----------------------------------------------------------------------------------


@pytest.fixture
def warehouse(sim: Kuaidi100Simulator) -> Iterator[WarehouseSimulator]:
    with WarehouseSimulator("wh-" + secrets.token_hex(6), tracker=sim) as server:
        assert isinstance(server, WarehouseSimulator)
        yield server


def booking(key: str, address: str = "北京市朝阳区望京街1号") -> BookShipment:
    return BookShipment(
        order_id="ord-1",
        idempotency_key=key,
        recipient_name="张三",
        phone="13800001111",
        address=address,
        items=[("SKU-1", 2), ("SKU-2", 1)],
    )


def test_booking_is_idempotent_and_trackable(
    warehouse: WarehouseSimulator, sim: Kuaidi100Simulator, provider: Kuaidi100Provider
) -> None:
    service = WarehouseBookingService(WarehouseBookingConfig(warehouse.url, warehouse.api_key))
    first = service.book(booking("ship-ord-1"))
    again = service.book(booking("ship-ord-1"))
    assert first == again and first.carrier == "yuantong" and first.waybill.startswith("YT")
    ledger = warehouse.ledger()
    assert list(ledger["bookings"]) == ["ship-ord-1"] and ledger["replays"] == 1
    with pytest.raises(ProviderRejected) as err:
        service.book(booking("ship-ord-1", address="elsewhere"))
    assert err.value.code == "idempotency_conflict"
    sim.advance(35 * HOUR)  # the hook registered the waybill with the tracking simulator
    assert provider.query(first.carrier, first.waybill).status is S.DELIVERED


def test_booking_errors(warehouse: WarehouseSimulator) -> None:
    wrong = WarehouseBookingService(WarehouseBookingConfig(warehouse.url, "not-the-key"))
    with pytest.raises(ProviderRejected) as err:
        wrong.book(booking("k1"))
    assert err.value.code == "unauthorized"
    service = WarehouseBookingService(
        WarehouseBookingConfig(warehouse.url, warehouse.api_key, read_timeout=0.3)
    )
    with pytest.raises(ProviderRejected) as err:
        service.book(BookShipment("ord-2", "k2", "", "1", "addr", [("SKU", 1)]))
    assert err.value.code == "invalid_request"
    for faults in ({"error_rate": 1.0}, {"reset_rate": 1.0}, {"timeout_rate": 1.0}):
        warehouse.set_faults(**{"error_rate": 0.0, "reset_rate": 0.0, "timeout_rate": 0.0})
        warehouse.set_faults(hang_seconds=1.0, **faults)
        with pytest.raises(ProviderUnavailable):
            service.book(booking("k3"))
    warehouse.set_faults(error_rate=0.0, reset_rate=0.0, timeout_rate=0.0)
    assert service.book(booking("k3")).waybill  # the retry with the same key books once
    assert len(warehouse.ledger()["bookings"]) == 1
