"""Retry delays: capped exponential backoff with equal jitter, the one rule every retry uses
(task retries in ``tasks/base.py``, status callbacks in ``services/callbacks/rules.py``).

For the ``n``-th failure (``n >= 1``) the ceiling is ``min(cap, first * 2**(n-1))`` and the delay
is drawn uniformly from ``[ceiling/2, ceiling]`` ("equal jitter"): never less than half the
ceiling, so a retry storm still spreads out, and never more than the cap.
"""

from __future__ import annotations

import random


def ceiling_s(failures: int, *, first_s: float, cap_s: float) -> float:
    """The longest delay after the ``failures``-th failure (``failures <= 1``: ``first_s``)."""
    # The exponent is bounded: a retry that goes on through a long outage (tasks/base.py) may
    # count past a thousand failures, where 2.0 ** n overflows a float.
    return min(cap_s, first_s * 2.0 ** min(max(0, failures - 1), 64))


def equal_jitter_s(
    failures: int, *, first_s: float, cap_s: float, rng: random.Random | None = None
) -> float:
    """A delay uniform in ``[c/2, c]`` with ``c = ceiling_s(failures, ...)``."""
    ceiling = ceiling_s(failures, first_s=first_s, cap_s=cap_s)
    return (rng or random).uniform(ceiling / 2, ceiling)
