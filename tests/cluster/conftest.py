"""The cluster: started once per session (data and provider hosts), the app's processes per
scenario. ``make test-cluster`` runs these (``CLUSTER_TESTS=1``); ``make test`` leaves them out
(tests/conftest.py): they need root and ``ip netns``, and skip with that reason elsewhere.

Figures of each scenario go through the reliability suite's ``figures`` fixture to
``RELIABILITY_RESULTS`` (default ``.orderflow/cluster-results.json``) for docs/reliability.md.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from settings import PROJECT_ROOT
from tests.cluster.cluster import Cluster, control_env
from tests.cluster.netns import missing_requirements
from tests.reliability.conftest import figures, pytest_terminal_summary  # noqa: F401

os.environ.setdefault(
    "RELIABILITY_RESULTS", str(PROJECT_ROOT / ".orderflow" / "cluster-results.json")
)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed scenario's report carries the cluster's state (queues, thread stacks, log
    tails): CI removes the hosts' logs with the run, so this is all a failure leaves behind."""
    outcome = yield
    report = outcome.get_result()
    cluster = getattr(item, "funcargs", {}).get("fresh")
    if report.when == "call" and report.failed and isinstance(cluster, Cluster):
        report.sections.append(("cluster diagnosis", cluster.diagnose()))


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    why = missing_requirements()
    if why and os.environ.get("ORDERFLOW_REQUIRE_CLUSTER") == "1":  # CI: a skip would hide it
        pytest.fail(f"cluster tests cannot run: {why}")
    if why:
        pytest.skip(f"cluster tests: {why}")
    # Outside the checkout: each host sees the checkout read-only, and a directory bound from
    # inside a read-only mount would be read-only too.
    run_dir = Path(tempfile.gettempdir()) / f"orderflow-cluster-{os.getpid()}"
    made = Cluster.create(run_dir)
    try:
        with control_env(made):
            from models.migrate import upgrade

            upgrade()
            yield made
    finally:
        made.close()
        if os.environ.get("CLUSTER_KEEP_LOGS") != "1":
            shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def fresh(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster with an empty database, Redis and provider ledgers; every app process this
    scenario starts is stopped (by pid) afterwards."""
    cluster.reset()
    try:
        yield cluster
    finally:
        cluster.stop_app()
        cluster.ensure_data()  # a scenario may have stopped PostgreSQL or Redis
