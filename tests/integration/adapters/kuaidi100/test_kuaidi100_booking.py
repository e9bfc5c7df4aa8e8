"""The warehouse booking client against the warehouse simulator, over real HTTP, with the
booked waybill tracked through the Kuaidi100 adapter and simulator."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Iterator

import pytest

from adapters.logistics.base import (
    REALLOCATE_CODES,
    BookShipment,
    ProviderRejected,
    ProviderUnavailable,
)
from adapters.logistics.kuaidi100 import (
    Kuaidi100Provider,
)
from adapters.logistics.warehouse import WarehouseBookingConfig, WarehouseBookingService
from simulators.kuaidi100 import Kuaidi100Simulator
from simulators.warehouse import WarehouseSimulator
from tests.integration.adapters.kuaidi100.support import HOUR, S

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


def test_a_booking_names_its_warehouse_and_a_refusing_warehouse_says_why(
    warehouse: WarehouseSimulator,
) -> None:
    service = WarehouseBookingService(WarehouseBookingConfig(warehouse.url, warehouse.api_key))
    north = service.book(dataclasses.replace(booking("ship-ord-1-north-1"), warehouse="north"))
    warehouse.refuse("south", "warehouse_closed")
    with pytest.raises(ProviderRejected) as err:
        service.book(dataclasses.replace(booking("ship-ord-1-south-1"), warehouse="south"))
    assert err.value.code == "warehouse_closed" and err.value.code in REALLOCATE_CODES
    warehouse.refuse("north", "out_of_stock")  # a replay is still answered
    again = service.book(dataclasses.replace(booking("ship-ord-1-north-1"), warehouse="north"))
    assert again == north
    ledger = warehouse.ledger()
    assert {k: (b["warehouse"], b["items"]) for k, b in ledger["bookings"].items()} == {
        "ship-ord-1-north-1": ("north", [("SKU-1", 2), ("SKU-2", 1)])
    }
    assert [r["warehouse"] for r in ledger["refusals"]] == ["south"]
