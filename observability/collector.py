"""The state series of ``/metrics``, read from PostgreSQL, Redis and the broker at scrape time
(see :mod:`observability.metrics` for every series and what it means). Each backend fails
alone: a dead Redis costs only its own series and sets ``orderflow_scrape_error{backend}``."""

from __future__ import annotations

import functools
import importlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta

import redis
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection, func, select, text

from adapters.circuit import CircuitBreaker, CircuitState
from domain.allocation import parse_warehouses
from domain.orders import FINAL_STATUSES, OrderStatus
from domain.parcels import UNKNOWN_WAREHOUSE
from domain.tracking import FINAL as SHIPMENT_FINAL
from models import DeadLetter, Dispute, Order, SettlementDifference, Shipment
from models.db import get_engine
from models.logistics import OUTBOUND_ONLY
from settings import Settings, get_settings

log = logging.getLogger(__name__)

#: kombu's Redis transport keeps messages with a priority in ``<queue>\x06\x16<step>`` lists.
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)

#: Every provider name a service calls through the gate (one circuit breaker each).
PROVIDERS = ("alipay", "wechatpay", "stripe", "kuaidi100", "warehouse")

#: Statuses whose ``stage_deadline`` means "the pipeline must have acted by then". Today only
#: RECEIVED..PAID (the sweeper's) set one, the others report 0 until a stage gives them one.
#: NEEDS_ATTENTION waits for a person and final statuses wait for nothing: never overdue.
DEADLINE_STATUSES = tuple(
    s for s in OrderStatus if s not in FINAL_STATUSES and s != OrderStatus.NEEDS_ATTENTION
)

#: Dispute statuses that wait for the shop's evidence, and how early a deadline counts as soon.
RESPONSE_STATUSES = ("needs_response", "warning_needs_response")
RESPONSE_DUE_SOON = timedelta(hours=72)

#: Providers whose settlement bills are reconciled (adapters.registry.SETTLEMENT_PROVIDERS;
#: not imported, it would pull every adapter into the scrape path), and the age that alerts.
SETTLEMENT_PROVIDERS = ("alipay", "stripe", "wechatpay")
_DAY = timedelta(days=1)

_SCRAPE_STATEMENT_TIMEOUT_MS = 2000
_REDIS_TIMEOUT_S = 1.0


def shipment_warehouses(settings: Settings, active: Iterable[str]) -> list[str]:
    """The ``warehouse`` label values of the shipment series, sorted: every configured
    warehouse (``WAREHOUSES``) and ``DEFAULT_WAREHOUSE``, zero-filled so that a warehouse's
    series (and an alert on it) drops to 0 rather than vanishing when its last parcel is
    delivered, plus any other warehouse with an active parcel (``?`` for a legacy parcel
    without one). Bounded by the warehouses stock is kept in, never by orders or parcels."""
    configured = parse_warehouses(settings.warehouses or "")
    return sorted({*configured, settings.default_warehouse, *active})


# -- state series, read at scrape time -----------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _redis(url: str) -> redis.Redis:
    # Short timeouts: a dead Redis must cost a scrape one second, not Prometheus's whole timeout.
    # kombu spells a unix socket redis+socket:///path, redis-py unix:///path
    # (as workers.embedded.redis_client_url, not imported: services must not depend on workers).
    return redis.Redis.from_url(
        url.replace("redis+socket://", "unix://", 1),
        socket_timeout=_REDIS_TIMEOUT_S,
        socket_connect_timeout=_REDIS_TIMEOUT_S,
    )


def queue_names() -> tuple[str, ...]:
    """The Celery queues (``celeryconfig.task_queues``); each is a Redis list of that name."""
    # Imported lazily (it reads the broker URL, which only a run has configured) and by name,
    # so that type checking services, which import this module, does not pull Celery in.
    config = importlib.import_module("celeryconfig")
    return tuple(str(queue.name) for queue in config.task_queues)


def _is_redis_url(url: str) -> bool:
    return url.split("://", 1)[0] in ("redis", "rediss", "redis+socket", "unix")


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


class PipelineCollector(Collector):
    """Scrape-time state series from PostgreSQL and Redis (see the module docstring).

    Each backend is read all-or-nothing: if a read fails, none of that backend's series are
    emitted and ``orderflow_scrape_error{backend}`` is 1.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings

    @property
    def settings(self) -> Settings:
        return self._settings or get_settings()

    def collect(self) -> Iterator[Metric]:
        errors = _gauge("orderflow_scrape_error", "1 if reading the backend failed", ["backend"])
        durations = _gauge(
            "orderflow_scrape_duration_seconds", "Time spent reading the backend", ["backend"]
        )
        parts: dict[str, Callable[[], list[Metric]]] = {
            "postgres": self._database,
            "redis": self._circuits,
            "broker": self._queues,
        }
        for backend, read in parts.items():
            started = time.perf_counter()
            try:
                families = read()
                failed = 0
            except Exception:
                log.warning("metrics: reading %s failed", backend, exc_info=True)
                families, failed = [], 1
            errors.add_metric([backend], failed)
            durations.add_metric([backend], time.perf_counter() - started)
            yield from families
        yield errors
        yield durations

    def describe(self) -> Iterator[Metric]:
        # Registering must not query the backends: describe nothing (an unchecked collector).
        return iter(())

    # -- PostgreSQL ---------------------------------------------------------------------------

    def _database(self) -> list[Metric]:
        with get_engine().connect() as conn, conn.begin():
            conn.execute(text(f"SET LOCAL statement_timeout = {_SCRAPE_STATEMENT_TIMEOUT_MS}"))
            return [
                *self._orders(conn),
                *self._overdue(conn),
                self._dead_letters(conn),
                *self._shipments(conn),
                *self._disputes(conn),
                *self._settlement(conn),
            ]

    def _orders(self, conn: Connection) -> list[Metric]:
        counts = {s.value: 0 for s in OrderStatus}
        for status, count in conn.execute(
            select(Order.status, func.count()).group_by(Order.status)
        ):
            counts[status] = int(count)
        family = _gauge("orderflow_orders", "Orders per status", ["status"])
        for status, count in counts.items():
            family.add_metric([status], count)
        return [family]

    def _overdue(self, conn: Connection) -> list[Metric]:
        overdue = _gauge(
            "orderflow_orders_overdue",
            "Orders past their stage deadline (the sweeper should have moved them on)",
            ["status"],
        )
        oldest = _gauge(
            "orderflow_orders_overdue_oldest_seconds",
            "How long the most overdue order of the status has been past its deadline",
            ["status"],
        )
        rows = {
            status: (int(count), float(age))
            for status, count, age in conn.execute(
                select(
                    Order.status,
                    func.count(),
                    func.extract("epoch", func.now() - func.min(Order.stage_deadline)),
                )
                .where(Order.status.in_(DEADLINE_STATUSES), Order.stage_deadline < func.now())
                .group_by(Order.status)
            )
        }
        for status in DEADLINE_STATUSES:
            count, age = rows.get(status.value, (0, 0.0))
            overdue.add_metric([status.value], count)
            oldest.add_metric([status.value], age)
        return [overdue, oldest]

    def _dead_letters(self, conn: Connection) -> Metric:
        count = conn.scalar(select(func.count()).where(DeadLetter.status == "OPEN")) or 0
        family = _gauge("orderflow_dead_letters_open", "Dead letters not replayed or discarded")
        family.add_metric([], int(count))
        return family

    def _disputes(self, conn: Connection) -> list[Metric]:
        open_count, due_soon = conn.execute(
            select(
                func.count(),
                func.count().filter(
                    Dispute.status.in_(RESPONSE_STATUSES),
                    Dispute.evidence_due_by < func.now() + RESPONSE_DUE_SOON,
                ),
            ).where(Dispute.outcome.is_(None))
        ).one()
        families: list[Metric] = []
        for name, doc, value in (
            ("orderflow_disputes_open", "Disputes not closed yet", open_count),
            (
                "orderflow_disputes_response_due_soon",
                "Open disputes still needing evidence whose deadline is within 72 h or passed",
                due_soon,
            ),
        ):
            family = _gauge(name, doc)
            family.add_metric([], int(value or 0))
            families.append(family)
        return families

    def _settlement(self, conn: Connection) -> list[Metric]:
        found = _gauge(
            "orderflow_settlement_differences_unresolved",
            "Settlement differences nobody resolved yet, by provider and age (under/over 1 day)",
            ["provider", "age"],
        )
        oldest = _gauge(
            "orderflow_settlement_differences_oldest_unresolved_seconds",
            "Age of the oldest unresolved settlement difference of the provider",
            ["provider"],
        )
        rows = {
            provider: (int(young), int(old), float(age))
            for provider, young, old, age in conn.execute(
                select(
                    SettlementDifference.provider,
                    func.count().filter(SettlementDifference.created_at >= func.now() - _DAY),
                    func.count().filter(SettlementDifference.created_at < func.now() - _DAY),
                    func.extract("epoch", func.now() - func.min(SettlementDifference.created_at)),
                )
                .where(SettlementDifference.resolved_at.is_(None))
                .group_by(SettlementDifference.provider)
            )
        }
        for provider in sorted(set(SETTLEMENT_PROVIDERS) | set(rows)):
            young, old, age = rows.get(provider, (0, 0, 0.0))
            found.add_metric([provider, "under_1d"], young)
            found.add_metric([provider, "over_1d"], old)
            oldest.add_metric([provider], age)
        return [found, oldest]

    def _shipments(self, conn: Connection) -> list[Metric]:
        """Active shipments per warehouse (:func:`shipment_warehouses` names the series)."""
        quiet_since = func.coalesce(Shipment.last_event_at, Shipment.created_at)
        stale_before = func.now() - timedelta(seconds=self.settings.tracking_stale_after_s)
        rows = {
            warehouse or UNKNOWN_WAREHOUSE: (int(active), int(stale), float(age))
            for warehouse, active, stale, age in conn.execute(
                select(
                    Shipment.warehouse,
                    func.count(),
                    func.count().filter(quiet_since < stale_before),
                    func.coalesce(func.extract("epoch", func.now() - func.min(quiet_since)), 0),
                )
                .where(
                    Shipment.status.not_in(sorted(s.value for s in SHIPMENT_FINAL)),
                    Shipment.tracking_ended_at.is_(None),  # the provider finished: not polled
                    Shipment.cancelled_at.is_(None),  # a parcel refused or cancelled unbooked
                    OUTBOUND_ONLY,  # a buyer's return parcel is no warehouse's shipment
                )
                .group_by(Shipment.warehouse)
            )
        }
        families = [
            _gauge(
                "orderflow_shipments_active",
                "Shipments still tracked: not delivered or expired, tracking not ended",
                ["warehouse"],
            ),
            _gauge(
                "orderflow_shipments_stale",
                "Active shipments without a tracking update for tracking_stale_after_s",
                ["warehouse"],
            ),
            _gauge(
                "orderflow_shipments_oldest_update_age_seconds",
                "Seconds since the last tracking update of the quietest active shipment",
                ["warehouse"],
            ),
        ]
        for warehouse in shipment_warehouses(self.settings, rows):
            for family, value in zip(families, rows.get(warehouse, (0, 0, 0.0)), strict=True):
                family.add_metric([warehouse], float(value))
        return list(families)

    # -- Redis ----------------------------------------------------------------------------------

    def _circuits(self) -> list[Metric]:
        s = self.settings
        if not s.redis_url:
            raise RuntimeError("REDIS_URL is not set")
        client = _redis(s.redis_url)
        family = _gauge(
            "orderflow_circuit_open", "1 while the provider's circuit breaker is open", ["provider"]
        )
        for provider in PROVIDERS:
            state = CircuitBreaker(client, provider).state()  # the policy plays no part
            family.add_metric([provider], 1 if state == CircuitState.OPEN else 0)
        return [family]

    def _queues(self) -> list[Metric]:
        """Messages waiting in each queue: on Redis the LLEN of its list (plus its priority
        lists) in one pipeline; on another broker (RabbitMQ) the message count of a passive
        queue declare, which needs no management plugin."""
        s = self.settings
        url = s.broker_url or s.redis_url
        if not url:
            return []
        queues = queue_names()
        family = _gauge("orderflow_queue_depth", "Messages waiting in the queue", ["queue"])
        depths = _redis_depths(url, queues) if _is_redis_url(url) else _broker_depths(url, queues)
        for queue in queues:
            family.add_metric([queue], depths[queue])
        return [family]


def _redis_depths(url: str, queues: tuple[str, ...]) -> dict[str, int]:
    pipe = _redis(url).pipeline(transaction=False)
    for queue in queues:
        pipe.llen(queue)
        for step in _PRIORITY_STEPS:
            pipe.llen(f"{queue}{_PRIORITY_SEP}{step}")
    lengths = pipe.execute()
    per_queue = 1 + len(_PRIORITY_STEPS)
    return {q: sum(lengths[i * per_queue : (i + 1) * per_queue]) for i, q in enumerate(queues)}


def _broker_depths(url: str, queues: tuple[str, ...]) -> dict[str, int]:
    # Imported by name for the reason queue_names gives: services type-check without kombu.
    broker = importlib.import_module("workers.broker")
    depths: dict[str, int] = broker.queue_depths(url, queues)
    return depths
