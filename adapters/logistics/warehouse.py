"""orderflow's own warehouse booking client.

No public standard exists for booking with our warehouse/carrier, so this is the contract
orderflow defines (the simulator in ``simulators/warehouse.py`` serves it):

``POST {base_url}/v1/bookings``, header ``X-Api-Key: <api_key>``, JSON body::

    {"order_id": "...", "idempotency_key": "...", "recipient": "...", "phone": "...",
     "address": "...", "warehouse": "...", "items": [{"sku": "...", "quantity": 1}, ...]}

``warehouse`` names the site the parcel leaves from (one booking per parcel, one parcel per
warehouse of the order); it is left out for a legacy parcel that carries the whole order.

* ``200``/``201`` ``{"carrier": "yuantong", "waybill": "YT…"}`` — carrier is a Kuaidi100 code.
  The same ``idempotency_key`` always returns the same waybill (a replay books nothing new).
* ``4xx`` ``{"error": "<code>", "message": "..."}`` — refused (401 bad key, 409 same key with a
  different body, 422 invalid field; 422 ``out_of_stock`` / ``warehouse_closed``: that
  warehouse cannot ship the parcel, :data:`~adapters.logistics.base.REALLOCATE_CODES`):
  :class:`ProviderRejected` with ``code`` = ``error``.
* ``429``, ``5xx``, network errors and timeouts: :class:`ProviderUnavailable` (retry with the
  same key).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import requests

from adapters.http import json_object, post_classified
from adapters.logistics.base import Booked, BookShipment
from domain.errors import ProviderRejected, ProviderUnavailable


@dataclass(frozen=True, slots=True)
class WarehouseBookingConfig:
    base_url: str  # e.g. https://warehouse.example.com (no trailing /v1)
    api_key: str = field(repr=False)
    connect_timeout: float = 3.05
    read_timeout: float = 10


class WarehouseBookingService:
    """:class:`~adapters.logistics.base.BookingService` for orderflow's warehouse API
    (contract in the module docstring)."""

    name = "warehouse"

    def __init__(
        self, config: WarehouseBookingConfig, session: requests.Session | None = None
    ) -> None:
        self._config = config
        self._session = session or requests.Session()
        self._timeout = (config.connect_timeout, config.read_timeout)

    def book(self, request: BookShipment) -> Booked:
        """Book a shipment; a replay with the same idempotency key returns the same waybill."""
        url = self._config.base_url.rstrip("/") + "/v1/bookings"
        headers = {"X-Api-Key": self._config.api_key}
        resp = post_classified(
            self._session,
            self.name,
            url,
            self._timeout,
            json=_booking_body(request),
            headers=headers,
        )
        body = json_object(self.name, resp)
        if resp.status_code >= 400:
            code = str(body.get("error") or resp.status_code)
            raise ProviderRejected(
                self.name, str(body.get("message", "booking refused")), code=code
            )
        carrier, waybill = body.get("carrier"), body.get("waybill")
        if not isinstance(carrier, str) or not isinstance(waybill, str) or not waybill:
            raise ProviderUnavailable(self.name, "booking answer without carrier/waybill")
        return Booked(carrier=carrier, waybill=waybill)


def _booking_body(request: BookShipment) -> dict[str, Any]:
    body: dict[str, Any] = {
        "order_id": request.order_id,
        "idempotency_key": request.idempotency_key,
        "recipient": request.recipient_name,
        "phone": request.phone,
        "address": request.address,
        "items": [{"sku": sku, "quantity": qty} for sku, qty in request.items],
    }
    if request.warehouse is not None:
        body["warehouse"] = request.warehouse
    return body
