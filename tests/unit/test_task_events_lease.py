"""The task-event lease decision (workers/task_events.lease_expired)."""

from __future__ import annotations

import pytest

from workers.task_events import lease_expired


@pytest.mark.parametrize(
    ("groups", "last_asked", "now", "expired"),
    [
        ({"worker", "task"}, 100.0, 129.9, False),  # asked 29.9 s ago: lease of 30 s holds
        ({"worker", "task"}, 100.0, 130.0, True),  # nobody asked for 30 s: off
        ({"worker", "task"}, float("-inf"), 0.0, True),  # never asked (enabled some other way)
        ({"worker"}, 0.0, 1000.0, False),  # already off
        (None, 0.0, 1000.0, False),  # on by configuration: every group, no lease
        (set(), 0.0, 1000.0, False),
    ],
)
def test_lease_expired(groups, last_asked, now, expired):
    assert lease_expired(groups, last_asked, now, 30.0) is expired
