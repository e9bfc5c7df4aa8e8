"""Settings and the target description shared by the API fuzzers (test_fuzz_api_*.py): the
admin key the target deployment gets, the seeded SKUs and Hypothesis' settings."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, settings

FULL = os.environ.get("RELIABILITY_FULL") == "1"
ADMIN_KEY = f"admin-fuzz-{secrets.token_hex(8)}"
SKUS = ["SKU-1", "SKU-2"]
HYPOTHESIS = settings(
    deadline=None,
    database=None,
    derandomize=not FULL,
    suppress_health_check=list(HealthCheck),
)


@dataclass
class Target:
    base_url: str
    api_key: str
    stack: Any
    order_id: str
    token: str
    logout_token: str
