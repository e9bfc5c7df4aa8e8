"""The attacker of ``test_webhook_flood``: posts forged notifications from threads, in a process of
its own (the provider simulators live in the test process; sharing its GIL would slow the genuine
notifications for a reason that has nothing to do with the API).

``python -m tests.security.flood SPEC.json RESULT.json``

SPEC: ``{"base_url", "threads", "min_per_thread", "max_seconds", "stop_file",
"requests": [{"provider", "path", "body_b64", "headers"}]}`` and optionally ``"ready_file"``,
created once every thread has finished a request (the flood is at full speed). Each thread cycles
through the requests (starting at its own offset) until it has sent ``min_per_thread`` and
``stop_file`` exists, or ``max_seconds`` passed. RESULT: wall-clock ``started_at`` /
``finished_at``, ``sent``, ``statuses`` (``"provider status"`` -> count; status 0 = no response),
``errors`` (first few) and ``latency_ms`` percentiles.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import requests


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(spec: dict[str, Any]) -> dict[str, Any]:
    reqs = [
        (r["provider"], spec["base_url"] + r["path"], base64.b64decode(r["body_b64"]), r["headers"])
        for r in spec["requests"]
    ]
    stop_file = Path(spec["stop_file"])
    ready_file = Path(spec["ready_file"]) if spec.get("ready_file") else None
    answered: set[int] = set()  # threads that have finished a request
    deadline = time.monotonic() + float(spec["max_seconds"])
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        session = requests.Session()
        local: Counter[str] = Counter()
        times: list[float] = []
        sent = 0
        while time.monotonic() < deadline:
            if sent >= spec["min_per_thread"] and stop_file.exists():
                break
            provider, url, body, headers = reqs[(index + sent * spec["threads"]) % len(reqs)]
            start = time.perf_counter()
            try:
                status = session.post(url, data=body, headers=headers, timeout=30).status_code
            except requests.RequestException as exc:
                status = 0
                with lock:
                    if len(errors) < 10:
                        errors.append(f"{provider}: {exc}")
            times.append((time.perf_counter() - start) * 1000)
            local[f"{provider} {status}"] += 1
            sent += 1
            if sent == 1 and ready_file is not None:
                with lock:
                    answered.add(index)
                    if len(answered) == spec["threads"]:
                        ready_file.touch()
        with lock:
            statuses.update(local)
            latencies.extend(times)

    started_at = time.time()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(spec["threads"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "started_at": started_at,
        "finished_at": time.time(),
        "sent": sum(statuses.values()),
        "statuses": dict(statuses),
        "errors": errors,
        "latency_ms": {
            "p50": _percentile(latencies, 0.5),
            "p95": _percentile(latencies, 0.95),
            "max": max(latencies, default=0.0),
        },
    }


def main(argv: list[str]) -> None:
    spec_path, result_path = Path(argv[0]), Path(argv[1])
    result = run(json.loads(spec_path.read_text()))
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.rename(result_path)  # the test waits for the file: never let it read half of it


if __name__ == "__main__":
    main(sys.argv[1:])
