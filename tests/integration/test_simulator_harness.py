"""The simulators' HTTP server answers keep-alive requests without a delayed-ACK stall.

It writes an answer's headers and body separately; with Nagle's algorithm on, the body waits
for the client's delayed ACK of the headers, about 40 ms per request on Linux, which made
every provider call of the e2e suite and the bench wait. Twenty keep-alive POSTs would take
at least 0.8 s that way; they must take a fraction of it.
"""

from __future__ import annotations

import time

import requests

from simulators.harness import Response, SimulatorServer


def test_keep_alive_answers_do_not_wait_for_a_delayed_ack():
    with SimulatorServer("echo") as server:
        server.route("POST", "/echo", lambda req: Response.json({"n": len(req.body)}))
        with requests.Session() as http:
            http.post(f"{server.url}/echo", data=b"x" * 300, timeout=5)  # connection set up
            started = time.perf_counter()
            for _ in range(20):
                assert http.post(f"{server.url}/echo", data=b"x" * 300, timeout=5).json() == {
                    "n": 300
                }
            elapsed = time.perf_counter() - started
    assert elapsed < 0.4, f"20 keep-alive requests took {elapsed:.3f} s"
