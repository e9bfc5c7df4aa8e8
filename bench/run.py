"""``make bench`` / ``python -m bench.run``: ceilings and pipeline figures in one run.

Runs in its own throw-away database (created, migrated, dropped) on the configured servers, or
on the embedded ones when DATABASE_URL / REDIS_URL are unset. Every process it starts is stopped
by pid; every loop is bounded in count and time. Prints one table and writes bench/results.json.
``--phases`` runs a subset (a figure whose ceiling comes from a skipped phase has no ceiling).

The broker should not be shared with another orderflow run meanwhile: the bench purges the
pipeline's queues before and after it runs (its orders leave payment tasks behind).

Cadence: the journey, flash-sale and maintenance phases run beat and the sweeper at their
production defaults (``bench.environment.production_env``: sweep and payment poll every 5 s,
tracking tick 10 s, callbacks 2 s, re-drives after 30/20/60 s), whatever the calling
environment sets. The journey needs no beat tick to progress: the Alipay simulator notifies
each payment at once and the Kuaidi100 simulator pushes every subscribed waybill's trace, so
polls and sweeps are only its safety net (a quick run: all 300 DELIVERED via push). The
tracking phase keeps its own tick (bench/tracking.py). ``flashsale`` (bench/flashsale.py)
raises CREATE_REDRIVE_S past the phase, which runs no payments worker; ``maintenance``
(bench/maintenance.py) meters ticks of each beat job with 10,000 open orders.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from bench.common import Figure, git_revision, print_table
from bench.environment import (
    HOT_SKU,
    SPREAD_SKUS,
    production_env,
    purge_queues,
    redis_conn,
    seed_catalog,
    simulators,
    throwaway_database,
)
from settings import PROJECT_ROOT, get_settings
from workers.embedded import exported_env

if TYPE_CHECKING:
    from bench.pipeline import StageResult
    from bench.tracking import TrackingConfig
    from simulators.stack import ProviderStack
    from workers.procs import ProcessGroup

RESULTS = PROJECT_ROOT / "bench" / "results.json"
#: Every phase, in the order they run.
PHASES = (
    "raw", "chains", "intake", "reserved", "paid", "journey", "tracking", "flashsale",
    "maintenance",
)  # fmt: skip
NEEDS_CATALOG = frozenset({"raw", "intake", "reserved", "paid", "journey"})
NEEDS_API = frozenset({"intake", "reserved", "paid", "journey"})
NEEDS_SIMULATORS = NEEDS_API | {"tracking"}
console = Console()
_NOT_INLINE = {"PAYMENT_CREATE_INLINE": "false"}


class Bench:
    """Runs the selected phases in order and collects the figures."""

    def __init__(
        self, quick: bool, phases: frozenset[str] = frozenset(PHASES), api_workers: int = 2
    ) -> None:
        self.quick = quick
        self.api_workers = api_workers
        self.phases = phases
        self.rev = git_revision()
        self.figures: list[Figure] = []
        self.ceil: dict[str, float] = {}

    def add(self, figure: str, unit: str, value: float, ceiling: float | None, cfg: str) -> None:
        self.figures.append(Figure(figure, unit, value, ceiling, cfg, self.rev))
        console.log(
            f"{figure}: {value:,.1f} {unit}" + (f" (ceiling {ceiling:,.1f})" if ceiling else "")
        )

    def unmeasured(self, ceiling: str) -> str:
        """A note for a configuration string whose ceiling's phase was skipped in this run."""
        return "" if ceiling in self.ceil else " (not measured: its phase was skipped)"

    def raw_postgres(self) -> None:
        """Ceiling 1: the intake (and intake + reservation) SQL through psycopg2, 1/2/4 threads."""
        from bench.ceilings import raw_postgres

        seconds = 2.0 if self.quick else 4.0
        for reserve, label in ((False, "intake"), (True, "intake+reserve")):
            r = raw_postgres(SPREAD_SKUS, reserve=reserve, seconds=seconds)
            self.ceil[label] = r.best
            per = ", ".join(f"{n}t={v:,.0f}" for n, v in r.by_threads.items())
            self.add(
                f"raw PostgreSQL {label} SQL",
                "orders/s",
                r.best,
                None,
                f"psycopg2, best of threads (1,2,4): {per}",
            )

    def seed_style(self) -> None:
        """The naive ORM loop, against the raw intake+reserve ceiling."""
        from bench.baseline import seed_style

        rate = seed_style(SPREAD_SKUS, seconds=3.0 if self.quick else 5.0)
        self.add(
            "seed-style ORM loop (1 process)",
            "orders/s",
            rate,
            self.ceil.get("intake+reserve"),
            "SQLAlchemy ORM, one transaction per order, no locks/ledger/queue",
        )

    def celery_chains(self, group: ProcessGroup) -> None:
        """Ceilings 2 and 3: 4-hop no-op chains (the journey's Celery tasks), then chains with one
        UPDATE per hop."""
        from bench.ceilings import prepare_chain_table, raw_celery_chains

        rdb = redis_conn()
        noop_n, db_n = (500, 300) if self.quick else (2000, 1000)
        prepare_chain_table(db_n)
        rate, done = raw_celery_chains(group, rdb, chains=noop_n, with_db=False, timeout_s=90)
        self.ceil["celery"] = rate
        self.add(
            "raw Celery 4-hop no-op chain",
            "chains/s",
            rate,
            None,
            f"{done}/{noop_n} chains, 1 worker prefork 2, acks late, prefetch 1",
        )
        rate, done = raw_celery_chains(group, rdb, chains=db_n, with_db=True, timeout_s=90)
        self.ceil["celery+pg"] = rate
        self.add(
            "raw Celery + PostgreSQL 4-hop chain",
            "chains/s",
            rate,
            self.ceil.get("celery"),
            f"{done}/{db_n} chains, one UPDATE transaction per hop",
        )

    def intake(self, base: str, key: str) -> None:
        """POST /v1/orders at 16 and 32 client threads against the API (uvicorn processes)."""
        from bench.pipeline import intake_figures

        n = 400 if self.quick else 1500
        for conc in (16, 32):
            rate, p50, p99, refused = intake_figures(
                base, key, SPREAD_SKUS, concurrency=conc, orders=n
            )
            cfg = (
                f"{n} orders, {conc} client threads, {self.api_workers} uvicorn process(es), "
                f"{refused} refused"
            )
            self.add(f"intake accepted (c={conc})", "orders/s", rate, self.ceil.get("intake"), cfg)
            self.add(f"intake p50 (c={conc})", "ms", p50, None, cfg)
            self.add(f"intake p99 (c={conc})", "ms", p99, 50.0, cfg + "; ceiling = 50 ms target")
        purge_queues()

    def reserved(self, group: ProcessGroup, base: str, key: str) -> None:
        """Intake -> RESERVED: spread with 2 and 1 processes, hot SKU with 2; stage latency."""
        from bench.pipeline import RESERVED_OR_LATER, WorkerSpec, to_stage

        n = 300 if self.quick else 1000
        runs = [
            ("spread-p2", SPREAD_SKUS, 2),
            ("hot-p2", [HOT_SKU], 2),
            ("spread-p1", SPREAD_SKUS, 1),
        ]
        rates: dict[str, float] = {}
        for label, skus, procs in runs:
            purge_queues()  # payment tasks left by the previous run would compete
            r = to_stage(
                group,
                base,
                key,
                source=f"bench-{label}",
                skus=skus,
                orders=n,
                # The reservation stage alone, as the seed-style loop it is compared with: the
                # reserving task publishes payments.create (no payments worker runs) instead of
                # creating the payment itself (the fused stage, measured by the PAID and
                # journey runs).
                workers=[WorkerSpec("orders,maintenance", procs, env=_NOT_INLINE)],
                target=RESERVED_OR_LATER,
                timeout_s=150,
            )
            rates[label] = r.rate
            cfg = (
                f"{r.orders} orders over {len(skus)} SKU(s), orders+maintenance prefork {procs} "
                "(PAYMENT_CREATE_INLINE=false: payments.create published, not run), 16 client "
                f"threads, API running; final {r.counts}; {_cpu(r)}"
                + ("" if r.finished else "; TIMED OUT")
            )
            ceiling = rates["spread-p2"] if label == "hot-p2" else self.ceil.get("intake+reserve")
            self.add(f"intake -> RESERVED ({label})", "orders/s", r.rate, ceiling, cfg)
        ratio = rates["spread-p2"] / rates["spread-p1"] if rates["spread-p1"] else 0.0
        self.add(
            "scaling: 2 processes / 1",
            "x",
            ratio,
            2.0,
            "to-RESERVED rate, spread, prefork 2 vs prefork 1; ceiling = linear",
        )
        self.add(
            "intake -> RESERVED vs Celery+PG chain",
            "orders/s",
            rates["spread-p2"],
            self.ceil.get("celery+pg"),
            "1 hop of the pipeline (and intake) vs the 4-hop raw chain",
        )
        self.stages("bench-spread-p2", n)

    def paid(self, group: ProcessGroup, base: str, key: str) -> None:
        """Intake -> PAID with the Alipay simulator paying at once (auto_pay_after_ms=0)."""
        from bench.pipeline import PAID_OR_LATER, WorkerSpec, to_stage

        n = 300 if self.quick else 1000
        purge_queues()  # payments.create of the RESERVED runs' orders must not run first
        r = to_stage(
            group,
            base,
            key,
            source="bench-paid",
            skus=SPREAD_SKUS,
            orders=n,
            workers=[WorkerSpec("orders,maintenance", 2), WorkerSpec("payments", 8, "threads")],
            target=PAID_OR_LATER,
            timeout_s=180,
        )
        cfg = (
            f"{r.orders} alipay orders, orders+maintenance prefork 2 + payments threads 8, "
            f"simulator pays at once; ceiling = raw Celery+PG 4-hop chain"
            f"{self.unmeasured('celery+pg')}; final {r.counts}; {_cpu(r)}"
            + ("" if r.finished else "; TIMED OUT")
        )
        self.add("intake -> PAID (spread)", "orders/s", r.rate, self.ceil.get("celery+pg"), cfg)
        self.stages("bench-paid", n)

    def journey(self, group: ProcessGroup, base: str, key: str) -> None:
        """Intake -> DELIVERED: every queue's worker, beat, compressed tracking (push + poll)."""
        from bench.journey import delivered_via, provider_calls, run_journey

        n = 300 if self.quick else 1000
        purge_queues()  # tasks of the earlier phases' orders must not compete
        started = time.monotonic()
        r = run_journey(
            group, base, key, source="bench-journey", skus=SPREAD_SKUS, orders=n,
            env=production_env(), timeout_s=150,
        )  # fmt: skip
        via = delivered_via("bench-journey")
        calls = provider_calls("bench-journey")
        cfg = (
            f"{r.orders} alipay orders; orders+maintenance prefork 2, payments threads 8, "
            "shipping+tracking threads 8, beat at production cadence (sweep and payment poll "
            "5 s, tracking tick 10 s); simulator pays at once; 34 h parcel trace at time scale "
            "36000 (3.4 s), pushes to the API + polls within the default Kuaidi100 quota "
            f"({get_settings().tracking_rate_per_s:g}/s); DELIVERED via {via}; "
            f"provider calls {calls}; ceiling = raw Celery+PG 4-hop chain"
            f"{self.unmeasured('celery+pg')}; final {r.counts}; {_cpu(r)}; "
            f"phase {time.monotonic() - started:.0f} s" + ("" if r.finished else "; TIMED OUT")
        )
        self.add(
            "intake -> DELIVERED (full journey)", "orders/s", r.rate,
            self.ceil.get("celery+pg"), cfg,
        )  # fmt: skip
        self.stages("bench-journey", n)

    def tracking(
        self, group: ProcessGroup, stack: ProviderStack, cfg: TrackingConfig | None = None
    ) -> None:
        """Polls/s and scheduler lag with 10,000 active shipments: real beat + tracking worker
        against the Kuaidi100 simulator (bench/tracking.py describes the method)."""
        from bench.tracking import TrackingConfig, describe, run_tracking

        cfg = cfg or TrackingConfig()
        purge_queues()
        started = time.monotonic()
        r = run_tracking(group, stack.kuaidi100, cfg)
        purge_queues()
        common = describe(cfg, r, default_rate=get_settings().tracking_rate_per_s)
        common += f"; phase {time.monotonic() - started:.0f} s"
        self.add(
            "tracking polls, steady (10k shipments)", "polls/s", r.steady.per_s, cfg.demand,
            f"{r.steady.polls} queries over {r.steady.span_s:.1f} s; ceiling = polls/s the "
            f"fleet needs; {common}",
        )  # fmt: skip
        self.add(
            f"tracking polls, backlog of {cfg.backlog:,} drained", "polls/s", r.drain.per_s,
            None, f"{r.drain.polls} queries over {r.drain.span_s:.1f} s, the fleet's regular "
            f"polls included; what the same processes poll when more is due; {common}",
        )  # fmt: skip
        lag_cfg = (
            f"{len(r.lags):,} shipments due in the first {cfg.measure_s:g} s: simulator receipt "
            "of the first query - next_poll_at; ceiling = one beat tick"
            + (f"; {r.unpolled} never polled count as end - due" if r.unpolled else "")
            + f"; {common}"
        )  # fmt: skip
        for label, value in zip(("mean", "p99", "max"), r.lag(), strict=True):
            self.add(f"tracking scheduler lag {label}", "s", value, cfg.tick_s, lag_cfg)

    def flashsale(self, group: ProcessGroup, key: str) -> None:
        """20,000 orders from 64 clients over 100 SKUs (10 hot), stock for half: accepted/s,
        429s, drain time, p99 intake -> RESERVED; raises if 5xx, lost, oversold or
        NEEDS_ATTENTION is not zero (bench/flashsale.py)."""
        from bench.flashsale import FlashConfig, ensure_clean, figures, run_flash_sale

        cfg = FlashConfig.quick() if self.quick else FlashConfig()
        started = time.monotonic()
        r = run_flash_sale(group, key, cfg)
        for row in figures(r, cfg, self.ceil.get("intake")):
            self.add(*row[:4], row[4] + f"; phase {time.monotonic() - started:.0f} s")
        ensure_clean(r)

    def maintenance(self, group: ProcessGroup) -> None:
        """CPU ms of one tick of each beat job with 10,000 open orders (bench/maintenance.py)."""
        from bench.maintenance import figures, tick_costs

        orders, ticks = 10_000, 25 if self.quick else 100
        for row in figures(tick_costs(group, orders=orders, ticks=ticks), orders):
            self.add(*row)

    def stages(self, source: str, n: int) -> None:
        """Per-stage latency p50/p99 of one run's orders, from the timeline."""
        from bench.pipeline import stage_latencies

        for s in stage_latencies(source):
            cfg = (
                f"{s.count} orders of {source} (burst of {n}, queue wait included); "
                f"min {s.low * 1000:,.0f} ms, max {s.high * 1000:,.0f} ms"
            )
            self.add(f"stage {s.stage} p50 ({source})", "ms", s.p50 * 1000, None, cfg)
            self.add(f"stage {s.stage} p99 ({source})", "ms", s.p99 * 1000, None, cfg)

    def run(self) -> None:
        from observability.metrics import prepare_multiproc_dir
        from workers.procs import ProcessGroup

        if self.phases & NEEDS_CATALOG:
            seed_started = time.monotonic()
            seed_catalog()
            console.log(
                f"seeded {len(SPREAD_SKUS) + 1} SKUs in {time.monotonic() - seed_started:.1f} s"
            )
        purge_queues()
        if "raw" in self.phases:
            self.raw_postgres()
            self.seed_style()
        prepare_multiproc_dir(Path(tempfile.mkdtemp(prefix="orderflow-bench-metrics-")))
        key = f"bench-{secrets.token_hex(12)}"
        os.environ["API_KEYS"] = key  # restored by main()'s exported_env
        get_settings.cache_clear()
        group = ProcessGroup(log_dir=Path(tempfile.mkdtemp(prefix="orderflow-bench-logs-")))
        try:
            if "chains" in self.phases:
                self.celery_chains(group)
            if self.phases & NEEDS_SIMULATORS:
                self.pipeline_phases(group, key)
            if "flashsale" in self.phases:
                self.flashsale(group, key)
            if "maintenance" in self.phases:
                self.maintenance(group)
        finally:
            group.stop_all()
            purge_queues()
            console.log(f"process logs: {group.log_dir}")

    def pipeline_phases(self, group: ProcessGroup, key: str) -> None:
        """The selected phases that need the simulators (and, but for tracking, the API)."""
        from workers.procs import free_port

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with simulators(port) as stack:
            if self.phases & NEEDS_API:
                group.api(port, workers=self.api_workers)
            if "intake" in self.phases:
                self.intake(base, key)
            if "reserved" in self.phases:
                self.reserved(group, base, key)
            if "paid" in self.phases:
                self.paid(group, base, key)
            if "journey" in self.phases:
                self.journey(group, base, key)
            if "tracking" in self.phases:
                self.tracking(group, stack)


def _cpu(r: StageResult) -> str:
    """Where the CPU of a pipeline run went, per order (what limits it on this machine)."""
    return r.cpu.describe(r.orders) if r.cpu else "CPU not sampled"


def parse_phases(value: str) -> frozenset[str]:
    """``--phases``: comma-separated names out of :data:`PHASES`; at least one."""
    chosen = frozenset(p.strip() for p in value.split(",") if p.strip())
    unknown = chosen - set(PHASES)
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown phases {sorted(unknown)}; choose from {','.join(PHASES)}"
        )
    return chosen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller counts (a smoke run)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--phases",
        type=parse_phases,
        default=frozenset(PHASES),
        help=f"comma-separated subset of {','.join(PHASES)} (default: all; raw includes the "
        "seed-style baseline)",
    )
    parser.add_argument(
        "--api-workers", type=int, default=2, help="uvicorn processes of the API (default 2)"
    )
    args = parser.parse_args(argv)
    from workers.embedded import embedded_services

    started = time.monotonic()
    bench = Bench(args.quick, args.phases, args.api_workers)
    try:
        # Re-exporting the current value makes exported_env restore it after bench.run sets it.
        with exported_env({"API_KEYS": get_settings().api_keys.get_secret_value()}), \
                embedded_services(), throwaway_database():  # fmt: skip
            bench.run()
    finally:
        if bench.figures:
            print_table(bench.figures, console)
            args.output.write_text(json.dumps([f.as_dict() for f in bench.figures], indent=2))
            console.log(f"wrote {args.output} in {time.monotonic() - started:.0f} s total")


if __name__ == "__main__":
    main()
