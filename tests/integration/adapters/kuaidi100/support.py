"""Helpers shared by the Kuaidi100 adapter tests: the simulator's default settings, provider
construction and a merchant push endpoint."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from adapters.logistics.base import PushUpdate
from adapters.logistics.kuaidi100 import Kuaidi100Config, Kuaidi100Provider
from domain.tracking import ShipmentStatus
from simulators.kuaidi100 import Kuaidi100Simulator

S = ShipmentStatus
HOUR = 3600.0
DAY = 86400.0
CUSTOMER = "TESTCUSTOMER01"


# By default the clock barely moves on its own (time_scale=1) and tests jump it with
# ``advance``; the throttle is off and pushes are checked every simulated minute.
SIM_DEFAULTS: dict[str, Any] = {
    "time_scale": 1.0,
    "min_query_interval_s": 0.0,
    "push_interval_s": 60.0,
    "first_push_delay_s": 0.0,
    "push_retry_delays": (0.05, 0.05, 0.05),
}


def provider_for(
    sim: Kuaidi100Simulator, keys: dict[str, str], **overrides: Any
) -> Kuaidi100Provider:
    options: dict[str, Any] = {
        "query_url": f"{sim.url}/poll/query.do",
        "subscribe_url": f"{sim.url}/poll",
        "customer": CUSTOMER,
        "key": keys["key"],
        "callback_salt": keys["salt"],
        "read_timeout": 2.0,
    }
    return Kuaidi100Provider(Kuaidi100Config(**{**options, **overrides}))


class PushReceiver:
    """A merchant callback endpoint: verifies and parses with the adapter, replies its ack.
    The first ``fail_first`` pushes get the failure reply (to exercise retries)."""

    def __init__(self, provider: Kuaidi100Provider, fail_first: int = 0) -> None:
        self.forms: list[dict[str, str]] = []
        self.updates: list[PushUpdate] = []
        self.fail_first = fail_first
        self._cv = threading.Condition()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler(provider))
        self._httpd.daemon_threads = True
        # A short poll interval so that shutdown() returns quickly.
        kwargs = {"poll_interval": 0.05}
        threading.Thread(target=self._httpd.serve_forever, kwargs=kwargs, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/hooks/kuaidi100"

    def _handler(self, provider: Kuaidi100Provider) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                form = {k: v[-1] for k, v in parse_qs(raw.decode(), keep_blank_values=True).items()}
                update = provider.parse_push(form)
                ok = receiver._record(form, update)
                status, body, ctype = provider.push_reply(ok)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def _record(self, form: dict[str, str], update: PushUpdate) -> bool:
        with self._cv:
            self.forms.append(form)
            self.updates.append(update)
            self._cv.notify_all()
            if self.fail_first > 0:
                self.fail_first -= 1
                return False
            return True

    def wait_for(self, count: int, timeout: float = 60.0) -> list[PushUpdate]:
        with self._cv:
            assert self._cv.wait_for(lambda: len(self.updates) >= count, timeout), self.updates
            return list(self.updates)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
