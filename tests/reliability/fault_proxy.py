"""A TCP fault proxy for tests: sits between orderflow and a provider and spoils the network.

Faults are drawn per request (HTTP keep-alive reuses connections): a request is either reset
(``reset_rate``: SO_LINGER 0, so the client sees ECONNRESET, as from a dropped NAT entry or a
crashed load balancer) before it reaches the provider, or forwarded at once with the provider's
answer held back for ``latency()`` seconds. A client that times out waiting has therefore still
created the payment at the provider — the case idempotency keys exist for.

Listens on 127.0.0.1 only; ``stop()`` closes the listener and every open connection.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class FaultProxy:
    upstream: tuple[str, int]
    latency: Callable[[], float] = lambda: 0.0
    reset_rate: float = 0.0
    seed: int = 0
    port: int = 0
    connections: int = 0
    resets: int = 0
    _rng: random.Random = field(init=False)
    _listener: socket.socket = field(init=False)
    _open: set[socket.socket] = field(default_factory=set, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _stopped: threading.Event = field(default_factory=threading.Event, init=False)

    def start(self) -> FaultProxy:
        self._rng = random.Random(self.seed)
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept_loop, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for s in list(self._open):
                with contextlib.suppress(OSError):
                    s.close()

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _draw(self) -> tuple[bool, float]:
        """Per request: reset it, or how long to hold its answer."""
        with self._lock:
            reset = self._rng.random() < self.reset_rate
            self.resets += reset
        return reset, self.latency()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            client.close()
            return
        with self._lock:
            self._open.update((client, upstream))
        conn = _Conn(client, upstream)
        threading.Thread(target=self._requests, args=(conn,), daemon=True).start()
        self._answers(conn)

    def _requests(self, conn: _Conn) -> None:
        """client → upstream. Each new request (data after an answer) draws its faults."""
        try:
            while True:
                data = conn.client.recv(65536)
                if not data:
                    break
                if conn.answered.is_set() or not conn.started:
                    conn.started = True
                    conn.answered.clear()
                    reset, conn.hold = self._draw()
                    if reset:
                        # Linger 0: close() sends RST instead of FIN.
                        conn.client.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                        break
                conn.upstream.sendall(data)
        except OSError:
            pass
        finally:
            self._close(conn)

    def _answers(self, conn: _Conn) -> None:
        """upstream → client; the first chunk of each answer waits ``hold`` seconds."""
        try:
            while True:
                data = conn.upstream.recv(65536)
                if not data:
                    break
                if not conn.answered.is_set():
                    if conn.hold:
                        time.sleep(conn.hold)
                    conn.answered.set()
                conn.client.sendall(data)
        except OSError:
            pass
        finally:
            self._close(conn)

    def _close(self, conn: _Conn) -> None:
        for s in (conn.client, conn.upstream):
            with contextlib.suppress(OSError):
                s.close()
            with self._lock:
                self._open.discard(s)


@dataclass
class _Conn:
    client: socket.socket
    upstream: socket.socket
    started: bool = False
    hold: float = 0.0
    answered: threading.Event = field(default_factory=threading.Event)
