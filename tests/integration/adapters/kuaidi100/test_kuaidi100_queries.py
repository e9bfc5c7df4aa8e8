"""Kuaidi100 adapter against its simulator, over real HTTP: queries (traces, scripts, errors,
throttle and quota) and the classification of transport faults and business errors."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import pytest

from adapters.logistics.base import (
    BookingService,
    ProviderRejected,
    ProviderUnavailable,
    TrackingProvider,
)
from adapters.logistics.kuaidi100 import (
    Kuaidi100Provider,
)
from adapters.logistics.warehouse import WarehouseBookingConfig, WarehouseBookingService
from simulators.kuaidi100 import Kuaidi100Simulator
from tests.conftest import wait_until
from tests.integration.adapters.kuaidi100.support import DAY, HOUR, S, provider_for

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

    def delivered() -> bool:
        statuses.append(provider.query("zhongtong", "ZT2000000002").status)
        return statuses[-1] is S.DELIVERED

    wait_until(delivered, 5, 0.05, show=lambda: statuses)
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
