"""The pure rules of services.tracking.finish: when Kuaidi100 is finished with a parcel, and
when that flags the order."""

from __future__ import annotations

import pytest

from adapters.logistics.base import TrackingResult
from domain.tracking import ShipmentStatus as S
from services.tracking.finish import end_reason, ended_flag


def result(status: S = S.IN_TRANSIT, raw_state: str = "0", signed: bool = False) -> TrackingResult:
    return TrackingResult("yuantong", "YT1", status, raw_state, (), signed)


@pytest.mark.parametrize(
    ("push", "message", "res", "expected"),
    [
        ("shutdown", "", result(S.DELIVERED, "3", signed=True), "kuaidi100 shutdown"),
        ("shutdown", "", result(S.EXCEPTION, "2"), "kuaidi100 shutdown"),  # rule 1: any status
        ("abort", "60天无变化", result(S.EXPIRED), "kuaidi100 abort (60天无变化)"),
        ("abort", "3天查询无记录", None, "kuaidi100 abort (3天查询无记录)"),
        ("polling", "", result(S.DELIVERED, "301", signed=True), "signed for (ischeck=1)"),
        ("", "", result(S.DELIVERED, "3", signed=True), "signed for (ischeck=1)"),  # a query
        ("", "", result(S.EXCEPTION, "4"), "returned and signed for by the sender (state 4, 退签)"),
    ],
)
def test_what_ends_tracking(push, message, res, expected):
    assert end_reason(res, push, message) == expected


@pytest.mark.parametrize("state", ["0", "1", "2", "5", "6", "13", "14", "301", "501"])
@pytest.mark.parametrize("push", ["", "polling", "updateall"])
def test_what_does_not_end_tracking(state, push):
    """Problem (2), being returned (6), refused (14), customs (13): the carrier still moves
    those; polling and updateall pushes end nothing; neither does a missing result."""
    assert end_reason(result(S.EXCEPTION, state), push) == ""
    assert end_reason(None, push) == ""


@pytest.mark.parametrize(
    ("order", "shipment", "flagged"),
    [
        ("IN_TRANSIT", "IN_TRANSIT", True),  # ended without a delivery scan
        ("SHIPPED", "PENDING", True),
        ("NEEDS_ATTENTION", "EXCEPTION", False),  # already with a person: reason kept
        ("NEEDS_ATTENTION", "IN_TRANSIT", False),
        ("COMPLETED", "DELIVERED", False),  # delivered: nothing to flag
        ("IN_TRANSIT", "DELIVERED", False),
        ("CANCELLED", "IN_TRANSIT", False),  # the table forbids the move: none taken
    ],
)
def test_which_orders_are_flagged_when_tracking_ends(order, shipment, flagged):
    flag = ended_flag(order, shipment, "kuaidi100 shutdown")
    assert (flag is not None) is flagged
    if flag:
        assert flag.startswith("tracking_ended: kuaidi100 shutdown")
        assert f"last status {shipment}" in flag
