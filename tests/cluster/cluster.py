"""orderflow across hosts: a data host, a provider host, an API host, two worker hosts and two
beat hosts, each a network namespace of :mod:`tests.cluster.netns`.

Every process is configured by its environment alone (:meth:`Cluster.app_env`), and every path
in it is a path of that host: the simulators' key files are copied to each app host (as an
operator copies secrets), each host keeps its metrics in its own directory and exports them on
its own address. PostgreSQL and Redis are the machine's Debian binaries, started in the data
host on its two addresses (``db``, ``redis``): the broker (Redis) can be cut from a host while
PostgreSQL stays reachable.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import redis
import requests
from cryptography.fernet import Fernet

from settings import PROJECT_ROOT
from simulators.stack import count_charges
from tests.cluster.netns import Host, Network
from workers.embedded import exported_env
from workers.procs import Proc

PG_BIN = Path("/usr/lib/postgresql/15/bin")
ORDERFLOW = str(Path(sys.executable).parent / "orderflow")  # the CLI of this venv
LAYOUT = {
    "data": [10, 11, 12],  # .10 PostgreSQL, .11 Redis (the broker), .12 RabbitMQ
    "prov": [60],
    "api": [20],
    "w1": [31],
    "w2": [32],
    "beat1": [41],
    "beat2": [42],
}
API_PORT = 8000
METRICS_PORT = 9808
SIM_BASE_PORT = 9100  # alipay +1, wechatpay +2, stripe +3, kuaidi100 +4, warehouse +5
IN_HOST_STATE = PROJECT_ROOT / ".orderflow"
RABBIT_ENV = {
    "HOME": "/var/lib/rabbitmq"
}  # its Erlang cookie, for rabbitmqctl  # every host sees its own directory here

#: The Celery broker of the run: Redis (the default; ``make test-cluster``), or RabbitMQ on the
#: data host for every scenario (``make test-cluster-rabbitmq``, ``CLUSTER_BROKER=rabbitmq``).
BROKER = os.environ.get("CLUSTER_BROKER", "redis")

# The pipeline's periods, short enough for a scenario to see recovery (as tests/conftest.py).
PIPELINE_ENV = {
    "SWEEP_INTERVAL_S": "0.5",
    "PAYMENT_POLL_INTERVAL_S": "1",
    "CREATE_REDRIVE_S": "5",
    "TRACKING_INTERVAL_S": "0.5",
    "INTAKE_REDRIVE_S": "5",
    "TASK_MAX_RETRIES": "5",
    "AUTO_RECEIVE_S": "0",
    "AFTERSALE_WINDOW_S": "0",
    "PAYMENT_WINDOW_S": "600",
    # A task abandoned by a host that left the network comes back after this (Redis broker).
    "TASK_SOFT_TIME_LIMIT_S": "10",
    "TASK_TIME_LIMIT_S": "15",
    "VISIBILITY_TIMEOUT_S": "20",
    # Below the soft time limit, as the defaults are (15 s < 30 s): a task waiting on a silent
    # database fails with a retryable error first. The other way round the soft limit's signal
    # interrupted tasks mid-wait, and one such interruption corrupted billiard's result pipe and
    # killed a prefork worker ("Unrecoverable error: UnicodeDecodeError", RabbitMQ worker cut).
    "DB_NETWORK_TIMEOUT_S": "6",
    "INTAKE_MAX_BACKLOG": "100000",
}


@dataclass
class Cluster:
    net: Network
    api_key: str
    secrets_env: dict[str, str]
    sim_env: dict[str, str] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)

    # -- addresses ---------------------------------------------------------------------------
    def host(self, name: str) -> Host:
        return self.net.hosts[name]

    @property
    def db_address(self) -> str:
        return self.host("data").addresses[0]

    @property
    def redis_address(self) -> str:
        return self.host("data").addresses[1]

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres@{self.db_address}:5432/orderflow"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.redis_address}:6379/0"

    @property
    def api_url(self) -> str:
        return f"http://{self.host('api').address}:{API_PORT}"

    def sim_url(self, offset: int) -> str:
        return f"http://{self.host('prov').address}:{SIM_BASE_PORT + offset}"

    # -- start-up ----------------------------------------------------------------------------
    @classmethod
    def create(cls, run_dir: Path) -> Cluster:
        net = Network.create(run_dir, LAYOUT)
        api_key = f"cluster-{secrets.token_hex(8)}"
        env = {"API_KEYS": api_key, "KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
               "METRICS_TOKEN": secrets.token_hex(16)}  # fmt: skip
        cluster = cls(net, api_key, env)
        try:
            cluster.start_data()
            if BROKER == "rabbitmq":
                cluster.ensure_rabbitmq()
            cluster.start_providers()
        except BaseException:
            net.close()
            raise
        return cluster

    def close(self) -> None:
        self.net.close()

    def start_data(self) -> None:
        data = self.host("data")
        pgdata = data.dir / "pg"
        if not pgdata.exists():
            pgdata.mkdir(parents=True)
            shutil.chown(pgdata, "postgres", "postgres")
            subprocess.run(
                ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups",
                 str(PG_BIN / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust",
                 "-E", "UTF8", "--no-sync"],
                check=True, capture_output=True,
            )  # fmt: skip
            with (pgdata / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {self.net.subnet}.0/24 trust\n")
        self.start_postgres()
        self.start_redis()
        with contextlib.closing(psycopg2.connect(self.admin_dsn())) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = 'orderflow'")
                if cur.fetchone() is None:
                    cur.execute("CREATE DATABASE orderflow")

    def ensure_data(self) -> None:
        """Start PostgreSQL or Redis again if a scenario left either stopped; heal every link."""
        for host in self.net.hosts.values():
            host.heal()
        running = {p.name for p in self.host("data").procs if p.alive()}
        if "data/postgres" not in running:
            self.start_postgres()
        if "data/redis" not in running:
            self.start_redis()
        if BROKER == "rabbitmq":
            self.ensure_rabbitmq()

    def admin_dsn(self) -> str:
        return f"postgresql://postgres@{self.db_address}:5432/postgres"

    def start_postgres(self) -> Proc:
        data = self.host("data")
        proc = data.start(
            "postgres",
            [str(PG_BIN / "postgres"), "-D", str(IN_HOST_STATE / "pg"),
             "-c", f"listen_addresses={self.db_address}", "-c", "unix_socket_directories=/tmp",
             "-c", "max_connections=400", "-c", "shared_buffers=128MB"],
            {}, user="postgres",
        )  # fmt: skip
        wait_for(lambda: _pg_ready(self.admin_dsn()), proc, "PostgreSQL on the data host")
        return proc

    def start_redis(self) -> Proc:
        # No persistence (--save "", no AOF): a restart loses every queued task, the case the
        # sweeper must recover from.
        proc = self.host("data").start(
            "redis",
            ["redis-server", "--bind", self.redis_address, "--port", "6379", "--save", "",
             "--appendonly", "no", "--protected-mode", "no", "--dir", "/tmp"],
            {},
        )  # fmt: skip
        wait_for(lambda: redis.Redis.from_url(self.redis_url).ping(), proc, "Redis")
        return proc

    @property
    def broker(self) -> str:
        return BROKER

    @property
    def broker_address(self) -> str:
        """Where the app's tasks travel: Redis's address, or RabbitMQ's in a RabbitMQ run."""
        return self.host("data").addresses[2 if BROKER == "rabbitmq" else 1]

    def ensure_rabbitmq(self) -> None:
        """RabbitMQ on the data host, started once and left running for the session."""
        if not any(p.name == "data/rabbitmq" and p.alive() for p in self.host("data").procs):
            self.start_rabbitmq()

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@{self.host('data').addresses[2]}:5672//"

    def start_rabbitmq(self) -> Proc:
        """Debian's RabbitMQ in the data host, its files in the host's directory (started only
        for the RabbitMQ scenarios)."""
        data = self.host("data")
        home = data.dir / "rabbitmq"
        home.mkdir(exist_ok=True)
        (home / "rabbitmq.conf").write_text(
            f"loopback_users = none\nlisteners.tcp.1 = {data.addresses[2]}:5672\n"
        )
        (home / "enabled_plugins").write_text("[].\n")
        for path in (home, *home.iterdir()):
            shutil.chown(path, "rabbitmq", "rabbitmq")
        inside = IN_HOST_STATE / "rabbitmq"
        proc = data.start("rabbitmq", ["rabbitmq-server"], {
            "RABBITMQ_MNESIA_BASE": str(inside / "mnesia"), "RABBITMQ_LOG_BASE": str(inside),
            "RABBITMQ_CONFIG_FILE": str(inside / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(inside / "enabled_plugins"), **RABBIT_ENV,
        }, user="rabbitmq")  # fmt: skip
        wait_for(lambda: self.rabbitmqctl("await_startup", "--timeout", "5") is not None, proc,
                 "RabbitMQ on the data host", 120)  # fmt: skip
        return proc

    def rabbitmqctl(self, *args: str) -> str:
        return self.host("data").run(["rabbitmqctl", "-q", *args], user="rabbitmq", env=RABBIT_ENV)

    def start_providers(self) -> None:
        prov = self.host("prov")
        env_file = IN_HOST_STATE / "simulators.env"
        proc = prov.start(
            "simulators",
            [sys.executable, "-m", "simulators.stack", "--public-base-url", self.api_url,
             "--env-out", str(env_file), "--advertise-host", prov.address,
             "--base-port", str(SIM_BASE_PORT), "--time-scale", "36000", "--auto-pay-ms", "200"],
            {"SIMULATOR_BIND": prov.address},
        )  # fmt: skip
        written = prov.dir / "simulators.env"
        wait_for(written.exists, proc, "the simulators' settings")
        self.sim_env = dict(
            line.split("=", 1) for line in written.read_text().splitlines() if "=" in line
        )
        # The key files the settings name are files of the provider host: an operator copies
        # them to every app host, at the same path.
        for name in ("api", "w1", "w2", "beat1", "beat2"):
            shutil.copytree(prov.dir / "keys", self.host(name).dir / "keys", dirs_exist_ok=True)

    # -- the app's processes -----------------------------------------------------------------
    def app_env(self, host: Host) -> dict[str, str]:
        """Everything an app process of ``host`` is configured by: environment only."""
        return {
            **PIPELINE_ENV,
            **self.sim_env,
            **self.secrets_env,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "PUBLIC_BASE_URL": self.api_url,
            "PROMETHEUS_MULTIPROC_DIR": str(IN_HOST_STATE / "metrics"),
            "OUTBOUND_ALLOWED_NETWORKS": f"{self.net.subnet}.0/24",
            **self.extra_env,
        }

    def start_api(self) -> Proc:
        api = self.host("api")
        proc = api.start(
            "api",
            [sys.executable, "-m", "uvicorn", "api.app:app", "--host", api.address,
             "--port", str(API_PORT), "--log-level", "warning", "--workers", "2"],
            self.app_env(api),
        )  # fmt: skip
        wait_for(lambda: requests.get(f"{self.api_url}/healthz", timeout=2).ok, proc, "the API")
        return proc

    def start_workers(self, name: str) -> list[Proc]:
        """The worker host ``name``: one prefork worker for orders and the beat jobs, one
        threaded worker for the provider-bound queues, and its metrics exporter."""
        host = self.host(name)
        env = self.app_env(host)
        celery = [sys.executable, "-m", "celery", "-A", "workers.app", "worker",
                  "--without-gossip", "--without-mingle", "-l", "INFO"]  # fmt: skip
        procs = [
            host.start("orders", [*celery, "-Q", "orders,maintenance", "-c", "2",
                                  "-P", "prefork", "-n", f"orders@{name}"], env),
            host.start("io", [*celery, "-Q", "payments,shipping,tracking,callbacks", "-c", "8",
                              "-P", "threads", "-n", f"io@{name}"], env),
            host.start("metrics", [ORDERFLOW, "metrics", "serve", "--host", host.address,
                                   "--port", str(METRICS_PORT)], env),
        ]  # fmt: skip
        for proc in procs[:2]:
            wait_for(lambda p=proc: b" ready." in p.log_path.read_bytes(), proc, proc.name, 90)
        return procs

    def start_beat(self, name: str) -> Proc:
        host = self.host(name)
        # No -s and no BEAT_SCHEDULE_FILE: the default must be a file of this host's own.
        return host.start(
            "beat", [sys.executable, "-m", "celery", "-A", "workers.app", "beat", "-l", "INFO"],
            self.app_env(host),
        )  # fmt: skip

    def start_app(self, workers: tuple[str, ...] = ("w1", "w2"), beats: int = 1) -> None:
        self.start_api()
        for name in workers:
            self.start_workers(name)
        for n in range(beats):
            self.start_beat(f"beat{n + 1}")

    def stop_app(self) -> None:
        for name in ("beat2", "beat1", "w2", "w1", "api"):
            self.host(name).stop_all()

    # -- state between scenarios -------------------------------------------------------------
    def reset(self) -> None:
        """Empty the database, Redis and the simulators' ledgers (app processes stopped)."""
        from sqlalchemy import text

        from models import Base
        from models.db import get_engine

        tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        with get_engine().begin() as conn:
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        redis.Redis.from_url(self.redis_url).flushall()
        for offset in range(1, 6):
            requests.post(f"{self.sim_url(offset)}/_sim/reset", timeout=10).raise_for_status()
        self.auto_pay(200)
        self.extra_env = {"BROKER_URL": self.amqp_url} if BROKER == "rabbitmq" else {}

    def auto_pay(self, after_ms: int) -> None:
        """Every buyer pays ``after_ms`` after the payment is created (each simulator's control
        endpoint on the provider host)."""
        for offset, path in ((1, "options"), (2, "options"), (3, "config")):
            url = f"{self.sim_url(offset)}/_sim/{path}"
            requests.post(url, json={"auto_pay_after_ms": after_ms}, timeout=10).raise_for_status()

    # -- reading the providers and the hosts -------------------------------------------------
    def charges(self) -> Counter[tuple[str, str]]:
        ledgers = [requests.get(f"{self.sim_url(n)}/_sim/ledger", timeout=30).json()
                   for n in (1, 2, 3)]  # fmt: skip
        return count_charges(*ledgers)

    def host_metric(self, name: str, metric: str) -> float:
        """The sum of ``metric``'s samples on worker host ``name``'s own exporter."""
        body = requests.get(f"http://{self.host(name).address}:{METRICS_PORT}/metrics",
                            timeout=10).text  # fmt: skip
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in body.splitlines()
            if line.startswith(metric) and not line.startswith("#")
        )

    # -- a failed scenario's evidence ---------------------------------------------------------
    def diagnose(self) -> str:
        """What a stuck scenario looked like, for its failure report (CI keeps no logs): the
        broker's queue depths, the tail of every app process's log and, for each worker, where
        each of its threads stands (Celery dumps every thread's stack on SIGUSR1)."""
        parts = [f"broker queues: {self._queue_depths()}"]
        procs = [p for h in ("api", "w1", "w2", "beat1", "beat2") for p in self.host(h).procs]
        sizes = {p.name: p.log_path.stat().st_size for p in procs}
        workers = [p for p in procs if p.name.endswith(("/orders", "/io")) and p.alive()]
        for proc in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGUSR1)
        with contextlib.suppress(TimeoutError):  # stacks that never come are a finding too
            wait_for(lambda: all(b"LOCAL VARIABLES" in _read_from(p.log_path, sizes[p.name])
                                 for p in workers), None, "thread dumps", 10)  # fmt: skip
        for proc in procs:
            before = _read_from(proc.log_path, 0)[: sizes[proc.name]].decode(errors="replace")
            state = "running" if proc.alive() else "exited"
            tail = "\n".join(before.splitlines()[-40:])
            parts.append(f"--- {proc.name} ({state}), last lines:\n{tail}")
            if proc in workers:
                dump = _read_from(proc.log_path, sizes[proc.name]).decode(errors="replace")
                parts.append(f"--- {proc.name} threads:\n{_innermost_frames(dump)}")
        return "\n".join(parts)

    def _queue_depths(self) -> dict[str, int] | str:
        if BROKER == "rabbitmq":
            return self.rabbitmqctl("list_queues", "name", "messages", "messages_unacknowledged")
        try:
            client = redis.Redis.from_url(self.redis_url, socket_timeout=5)
            lists = [k for k in client.scan_iter(count=1000) if client.type(k) == b"list"]
            depths = {k.decode(errors="replace"): client.llen(k) for k in lists}
            depths["(unacked)"] = client.hlen("unacked")
            return depths
        except redis.RedisError as exc:
            return f"unreadable: {exc}"

    # -- load ----------------------------------------------------------------------------------
    def post_order(self, message: Mapping[str, Any], timeout: float = 30) -> requests.Response:
        return requests.post(f"{self.api_url}/v1/orders", json=message,
                             headers={"X-API-Key": self.api_key}, timeout=timeout)  # fmt: skip


def wait_for(check: Any, proc: Proc | None, what: str, timeout_s: float = 60.0) -> None:
    """Poll ``check`` until it is true; fail naming ``what`` (and ``proc``'s log) otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{what}: {proc.name} exited:\n{proc.log_tail()}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.2)
    tail = proc.log_tail() if proc is not None else ""
    raise TimeoutError(f"{what} not ready within {timeout_s:.0f} s\n{tail}")


def _read_from(path: Path, offset: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read()


def _innermost_frames(dump: str, depth: int = 3) -> str:
    """Each thread of a Celery SIGUSR1 dump (``celery.utils.debug.cry``: the thread's name, a
    rule, its stack, then its locals) as its name and its ``depth`` innermost frames."""
    threads = re.finditer(r"^(\S[^\n]*)\n={20,}\n((?:  [^\n]*\n)+)", dump, re.MULTILINE)
    shown = []
    for m in threads:
        lines = m[2].splitlines()
        while len(lines) >= 2 and ("cry" in lines[-2] or "cry" in lines[-1]):
            lines = lines[:-2]  # the dump's own frames (the signal handler)
        shown.append(f"{m[1]}:\n" + "\n".join(lines[-2 * depth :]))
    return "\n".join(shown)


def _pg_ready(dsn: str) -> bool:
    with contextlib.closing(psycopg2.connect(dsn, connect_timeout=2)):
        return True


@contextlib.contextmanager
def control_env(cluster: Cluster) -> Iterator[None]:
    """Point this (the control) process's settings at the cluster's database and Redis, for
    migrations, seeding and the invariant checker."""
    from models.db import dispose_engine

    wanted = {"DATABASE_URL": cluster.database_url, "REDIS_URL": cluster.redis_url,
              **cluster.secrets_env}  # fmt: skip
    with exported_env(wanted):  # re-reads the settings on the way in and out
        dispose_engine()
        try:
            yield
        finally:
            dispose_engine()
