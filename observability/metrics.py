"""Prometheus metrics of the API and the workers, served by the API at ``GET /metrics``.

Two kinds of series, named ``orderflow_*``:

**Event series**, recorded where the event happens (worker processes, and the API for webhooks):

- ``orderflow_task_retries_total{task,error}``: a task scheduled a retry (``error`` = class name)
- ``orderflow_task_failures_total{task,error}``: a task failed for good (became a dead letter)
- ``orderflow_provider_call_seconds{provider,operation}`` (histogram): every provider request
- ``orderflow_provider_calls_total{provider,operation,outcome}``: ``ok``, ``rejected`` (a
  business "no": the provider is up), ``unavailable``, ``error`` (an exception the adapter did
  not classify: a bug), ``circuit_open`` (no request went out)
- ``orderflow_intake_batch_size`` (histogram): orders per committed HTTP intake group commit
  (:mod:`api.group_commit`); ``_count`` is the number of intake transactions
- ``orderflow_order_stage_seconds{from_status,to_status}`` (histogram): time an order spent in
  ``from_status`` (read by :func:`services.timeline.record` in the transition's INSERT)

**State series**, read at scrape time by :class:`PipelineCollector` (PostgreSQL is the truth,
so counts come from it rather than from counters that a restart would lose):

- ``orderflow_orders{status}``: orders per status (every status, zero-filled)
- ``orderflow_orders_overdue{status}``: orders past their stage deadline, in the deadline-driven
  statuses (:data:`DEADLINE_STATUSES`); ``orderflow_orders_overdue_oldest_seconds{status}``: how
  long the most overdue one has been overdue
- ``orderflow_dead_letters_open``: dead letters not yet replayed or discarded
- ``orderflow_shipments_active{warehouse}`` (parcels still tracked: not delivered or expired,
  and the provider has not ended tracking), ``orderflow_shipments_stale{warehouse}`` (active,
  quiet longer than ``tracking_stale_after_s``),
  ``orderflow_shipments_oldest_update_age_seconds{warehouse}``, by the warehouse the parcel
  leaves from: every configured one (``WAREHOUSES``, ``DEFAULT_WAREHOUSE``) zero-filled, others
  while they have an active parcel (:func:`~observability.collector.shipment_warehouses`).
  Totals: ``sum without (warehouse)`` (``max`` for the age)
- ``orderflow_disputes_open`` (disputes without an outcome) and
  ``orderflow_disputes_response_due_soon`` (those still needing evidence, due within 72 h or past
  due; the console's Attention page lists them)
- ``orderflow_settlement_differences_unresolved{provider,age}``: differences found matching the
  providers' daily bills that nobody resolved yet, ``age`` ``under_1d`` or ``over_1d`` (since
  found); ``orderflow_settlement_differences_oldest_unresolved_seconds{provider}``
- ``orderflow_queue_depth{queue}``: messages waiting in each Celery queue (Redis or RabbitMQ)
- ``orderflow_circuit_open{provider}``: 1 while the provider's circuit breaker is open
- ``orderflow_scrape_error{backend}`` (1 if reading postgres/redis/broker failed) and
  ``orderflow_scrape_duration_seconds{backend}``

Multiprocess mode
-----------------
Celery runs tasks in prefork children and thread pools, and ``/metrics`` is served by the API:
a plain in-memory counter in a worker child would be invisible. prometheus_client's multiprocess
mode makes every process write its values to mmap files in a shared directory; the API merges
the files of all processes at scrape time (``MultiProcessCollector``). The directory is the
``PROMETHEUS_MULTIPROC_DIR`` setting (read through :mod:`settings`, like every setting); it must
be known *before* the first metric is created, i.e. at the import of this module, which then
exports it to ``os.environ`` (prometheus_client reads its path from there) and switches the
value class to multiprocess. :func:`prepare_multiproc_dir` is for the process that owns a run
(``orderflow up``/``demo``, the test session), before it starts the others: it picks the
setting or ``<state_dir>/metrics``, empties it and exports it to the children (Flower, though,
keeps its own series out of it: :func:`keep_in_memory`). A process started without the
setting (a unit test, a one-off CLI command) keeps its metrics in memory, where they do no
harm; the API then serves only its own. Files of exited processes are kept on
purpose: their counts are part of the totals. Only event series are multiprocess; there are no
live gauges, so :func:`process_exited` is bookkeeping for the future.

Files are named by :func:`process_id`, ``<hostname>-<pid>``, not by the bare pid that
prometheus_client uses by default: containers sharing one directory through a volume
(docker-compose.yml) each have their own pid namespace, so two live processes there may share a
pid but never a hostname and a pid. A restarted container reuses its files and carries on
counting from their values, so the directory does not grow with restarts.

Deployment: the files are shared through the local filesystem only (in docker-compose, the
``metrics`` volume mounted by every app service at ``PROMETHEUS_MULTIPROC_DIR``), so every
machine that runs workers must also run an API process (or any exporter calling :func:`render`)
on the same directory, and Prometheus scrapes each of them. The state series then come from
every exporter alike (they read the shared database and Redis): aggregate them with ``max``,
not ``sum``.

Scrape cost
-----------
One short read-only transaction (``statement_timeout`` 2 s) and a handful of Redis commands:
``GROUP BY status`` over ``orders`` (an index-only scan of ``ix_orders_status_deadline``, linear
in the table — archive finished orders once it holds tens of millions), overdue orders (a range
scan of the same index over the in-flight statuses), open dead letters (``ix_dead_letters_status``)
and active shipments (a scan of ``shipments``; a partial index on active rows would bound it).
A backend that fails is reported as ``orderflow_scrape_error{backend}=1`` and its series are
left out; the rest of the scrape still succeeds.

Recording never raises: a metric must not fail a task or a request.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import ParamSpec

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
    values,
)
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from starlette.responses import Response

from observability.collector import PipelineCollector
from settings import get_settings

log = logging.getLogger(__name__)

P = ParamSpec("P")

#: prometheus_client's own variable (it reads it itself, at import and when a value is created).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


# Stages last from milliseconds (reserve) to days (a parcel in transit).
STAGE_BUCKETS = (
    0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600,
    4 * 3600, 12 * 3600, 86400, 3 * 86400, 7 * 86400,
)  # fmt: skip
# Provider requests: connect timeout ~3 s, read timeout 10 s.
PROVIDER_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# -- multiprocess directory (before the first metric is created) -------------------------------


def process_id(pid: int | None = None) -> str:
    """``<hostname>-<pid>``: names this process's metric files; distinct for any two processes
    alive at once, also in containers (own pid namespace, own hostname) sharing a volume.
    No ``_``: prometheus_client splits file names on it."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "host"
    return f"{host}-{os.getpid() if pid is None else pid}"


def multiproc_dir() -> Path | None:
    """This process's metrics directory (the ``PROMETHEUS_MULTIPROC_DIR`` setting), or None
    when multiprocess mode is off."""
    return get_settings().prometheus_multiproc_dir


def _enable_multiprocess() -> None:
    directory = multiproc_dir()
    if directory is None:
        return
    # prometheus_client reads the path from the environment itself; the setting may have come
    # from an env file, so export it. A worker writes its first value lazily: create the dir.
    os.environ[MULTIPROC_ENV] = str(directory)
    directory.mkdir(parents=True, exist_ok=True)
    values.ValueClass = values.MultiProcessValue(process_identifier=process_id)  # type: ignore[no-untyped-call]


_enable_multiprocess()


def keep_in_memory() -> None:
    """From now on this process keeps the metrics it creates in memory, whatever
    ``PROMETHEUS_MULTIPROC_DIR`` says, and its children do not inherit the directory.

    For Flower (:mod:`workers.flower`): its ``flower_*`` series are its own, served on its own
    ``/metrics``; written into the shared directory they would be merged into the API's
    ``/metrics`` and outlive Flower there. Call it before the process creates its first metric
    (``prometheus_client`` picks a metric's value class when the metric, or a label set of it,
    is created).
    """
    os.environ.pop(MULTIPROC_ENV, None)
    values.ValueClass = values.MutexValue


# -- event series (multiprocess when PROMETHEUS_MULTIPROC_DIR is set) ---------------------------

TASK_RETRIES = Counter(
    "orderflow_task_retries", "Task retries scheduled, by task and error class", ["task", "error"]
)
TASK_FAILURES = Counter(
    "orderflow_task_failures",
    "Tasks that failed for good (written as dead letters), by task and error class",
    ["task", "error"],
)
PROVIDER_CALL_SECONDS = Histogram(
    "orderflow_provider_call_seconds",
    "Latency of provider requests (every outcome)",
    ["provider", "operation"],
    buckets=PROVIDER_BUCKETS,
)
PROVIDER_CALLS = Counter(
    "orderflow_provider_calls",
    "Provider calls by outcome: ok, rejected, unavailable, error, circuit_open (not sent)",
    ["provider", "operation", "outcome"],
)
INTAKE_REFUSED = Counter(
    "orderflow_intake_refused",
    "Orders refused at intake by back-pressure (429): the accepted work is too far behind",
    ["channel"],
)
INTAKE_BATCH_SIZE = Histogram(
    "orderflow_intake_batch_size",
    "Orders stored by one HTTP intake group commit (one transaction, one publish)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
ORDER_STAGE_SECONDS = Histogram(
    "orderflow_order_stage_seconds",
    "Time an order spent in from_status before moving to to_status",
    ["from_status", "to_status"],
    buckets=STAGE_BUCKETS,
)

PROVIDER_OUTCOMES = ("ok", "rejected", "unavailable", "error", "circuit_open")


def _never_raise(fn: Callable[P, None]) -> Callable[P, None]:
    """Log (at debug: it could be every call) instead of raising into a task or request."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:
            log.debug("could not record metric in %s", fn.__name__, exc_info=True)

    return wrapper


@_never_raise
def observe_transition(from_status: str, to_status: str, seconds_in_previous_stage: float) -> None:
    """Record that an order left ``from_status`` for ``to_status`` after that many seconds.

    Called where the transition is written, inside its transaction: a transaction that then
    rolls back and is retried is counted twice. Rare, and it errs towards visibility.
    """
    ORDER_STAGE_SECONDS.labels(str(from_status), str(to_status)).observe(
        max(seconds_in_previous_stage, 0.0)  # clocks may disagree by a little
    )


@_never_raise
def intake_refused(channel: str) -> None:
    INTAKE_REFUSED.labels(channel).inc()


@_never_raise
def intake_batch(orders: int) -> None:
    INTAKE_BATCH_SIZE.observe(orders)


@_never_raise
def task_retried(task: str, exc: BaseException) -> None:
    TASK_RETRIES.labels(task, type(exc).__name__).inc()


@_never_raise
def task_failed(task: str, exc: BaseException) -> None:
    TASK_FAILURES.labels(task, type(exc).__name__).inc()


@_never_raise
def observe_provider_call(
    provider: str, operation: str, outcome: str, seconds: float | None = None
) -> None:
    """Count one provider call; ``seconds`` is None when no request went out (circuit open)."""
    PROVIDER_CALLS.labels(provider, operation, outcome).inc()
    if seconds is not None:
        PROVIDER_CALL_SECONDS.labels(provider, operation).observe(seconds)


# -- multiprocess directory of a run -----------------------------------------------------------


def prepare_multiproc_dir(path: Path | None = None) -> Path:
    """Set up the metrics directory of a run; call it once, before starting API and workers.

    Uses ``path``, else the ``PROMETHEUS_MULTIPROC_DIR`` setting, else ``<state_dir>/metrics``;
    creates it, removes the ``*.db`` files of an earlier run (only those: the directory may be
    shared with other things) and exports it to ``os.environ`` so every child process inherits
    it (and re-reads the settings so this process sees it too).
    """
    directory = path or multiproc_dir() or get_settings().state_dir / "metrics"
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.db"):
        old.unlink(missing_ok=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    get_settings.cache_clear()
    return directory


def process_exited(pid: int) -> None:
    """Drop the live-gauge files of an exited worker child (counters and histograms stay)."""
    directory = multiproc_dir()
    if directory is not None:
        multiprocess.mark_process_dead(process_id(pid), str(directory))  # type: ignore[no-untyped-call]


# -- exposition ---------------------------------------------------------------------------------


def build_registry(directory: Path | None = None, *, state: bool = True) -> CollectorRegistry:
    """A registry with the event series of every process plus (``state``) the state series.

    With a multiprocess directory (``directory``, else :func:`multiproc_dir`) the event series
    are merged from its files; without one they are this process's own (the default registry).
    """
    directory = directory or multiproc_dir()
    registry = CollectorRegistry(auto_describe=False)
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    else:
        registry.register(_DefaultRegistry())
    if state:
        registry.register(PipelineCollector())
    return registry


def serve_events(host: str, port: int, stop: threading.Event) -> None:
    """Serve this host's event series (merged from the multiprocess directory) on
    ``http://host:port/metrics`` until ``stop`` is set: the exporter of a machine that runs
    workers but no API. No state series: those describe the whole system, and the API's
    ``/metrics`` exports them once (a second copy per worker host would be summed twice).

    Raises :class:`RuntimeError` when multiprocess mode is off (workers then keep their
    series in memory, where no other process can read them).
    """
    directory = multiproc_dir()
    if directory is None:
        raise RuntimeError(
            "PROMETHEUS_MULTIPROC_DIR is not set: set it, to one directory, for the workers "
            "of this host and for this exporter"
        )
    registry = build_registry(directory, state=False)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    try:
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()


class _DefaultRegistry(Collector):
    """The default registry's series (the in-memory event series, process and GC stats)."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def render(directory: Path | None = None) -> bytes:
    """The text exposition of all orderflow series (what ``GET /metrics`` returns)."""
    return generate_latest(build_registry(directory))


def metrics_response() -> Response:
    """The ``GET /metrics`` endpoint's answer.

    Sync on purpose: it blocks on PostgreSQL and Redis, so FastAPI runs it in the thread pool.
    Open by itself: :mod:`api.metrics_access` mounts it behind ``METRICS_TOKEN`` or moves it
    to its own listener (``METRICS_PORT``).
    (starlette, not fastapi, is imported here: workers import this module too.)
    """
    return Response(render(), media_type=CONTENT_TYPE_LATEST)
