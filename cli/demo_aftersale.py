"""The demo's after-sale: a few customers return a line or ask for an exchange once their order
is delivered, and the warehouse ships nothing back but receives every return it is sent
(all units restocked). Returns are approved by the policy (``RETURN_AUTO_APPROVE_MAX`` is set
for the demo), so the pipeline settles them on its own: line refunds at the providers, the
exchanges' replacements booked and tracked."""

from __future__ import annotations

from typing import Any

#: Of every 10 delivered orders (by external id): 4 returns its first line's units, 9 asks for
#: one unit of its first line again.
KINDS = {4: "RETURN_AND_REFUND", 9: "EXCHANGE"}
#: The demo's policy: every return the demo makes is approved without an operator.
AUTO_APPROVE_MAX = "1000000"


def wanted_return(external_id: str) -> str | None:
    """The kind of return the customer of ``demo-NNNNNN`` asks for, if any."""
    return KINDS.get(int(external_id.rsplit("-", 1)[1]) % 10)


class AfterSale:
    """Plays the returning customers and the warehouse, through the API."""

    def __init__(self, http: Any, base_url: str) -> None:
        self.http, self.base_url = http, base_url
        self.asked: set[str] = set()
        self.received: set[int] = set()

    def act(self, delivered: list[tuple[str, str]], awaiting: list[tuple[int, list[str]]]) -> None:
        """Ask for the returns of newly delivered orders; receive every parcel awaited."""
        for order_id, external_id in delivered:
            kind = wanted_return(external_id)
            if kind is None or order_id in self.asked:
                continue
            self.asked.add(order_id)
            self._ask(order_id, kind)
        for return_id, skus in awaiting:
            if return_id in self.received:
                continue
            self.received.add(return_id)
            self._receive(return_id, skus)

    def _ask(self, order_id: str, kind: str) -> None:
        order = self.http.get(f"{self.base_url}/v1/orders/{order_id}", timeout=30).json()
        first = order["lines"][0]
        quantity = 1 if kind == "EXCHANGE" else first["quantity"]
        body = {"kind": kind, "reason": "demo: not as pictured",
                "lines": [{"sku": first["sku"], "quantity": quantity}]}  # fmt: skip
        url = f"{self.base_url}/v1/orders/{order_id}/returns"
        self.http.post(url, json=body, timeout=30).raise_for_status()

    def _receive(self, return_id: int, skus: list[str]) -> None:
        url = f"{self.base_url}/v1/returns/{return_id}"
        parcel = {"carrier": "yuantong", "waybill": f"YTR{return_id:09d}"}
        self.http.post(f"{url}/parcel", json=parcel, timeout=30).raise_for_status()
        ret = self.http.get(url, timeout=30).json()
        lines = [{"sku": x["sku"], "restock": x["quantity"]} for x in ret["lines"]]
        self.http.post(f"{url}/receive", json={"lines": lines}, timeout=30).raise_for_status()
