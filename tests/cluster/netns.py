"""Hosts for the cluster tests: Linux network namespaces on one bridge, each with its own files.

A :class:`Network` is a bridge in the root namespace (the test process, the "control" host, has
its first address) and one namespace per host, joined to the bridge by a veth pair. A process
started in a host (:meth:`Host.start`) sees:

* only that host's network (``eth0`` with the host's addresses, and its own loopback);
* the checkout read-only (the same installed code on every host, as an image would be), with
  ``<checkout>/.orderflow`` (the default ``STATE_DIR``) replaced by the host's own directory,
  and a private ``/tmp``: nothing written by one host is visible to another, so a part that
  assumed a shared filesystem fails here instead of passing by accident.

Faults are network-level, as a Jepsen test makes them: :meth:`Host.cut` takes the host's link
down (packets are dropped, connections hang until their timeouts), :meth:`Host.drop_from`
drops what one address of this host sends to another host (a one-way partition of one service),
and ``clock_offset_s`` runs a host's processes under libfaketime.

Everything is stopped by pid and removed in :meth:`Network.close`, which is safe to call after a
failure part-way through :meth:`Network.create`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from settings import PROJECT_ROOT
from workers.procs import Proc

FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")

# Run inside the namespace by ``ip netns exec`` (which gives the process a mount namespace of its
# own): a private /tmp, the checkout read-only, the host's directory over .orderflow; then exec,
# so the pid the test holds is the program's own. The checkout and the host directory are held
# open (fds 3, 4) across the tmpfs mount and bound from there (``-c``: mount must not resolve
# /proc/self/fd/N to a path), so a checkout under /tmp (a CI clone) is still found.
_ISOLATE = """
set -e
exec 3<"$OF_ROOT" 4<"$OF_HOST_DIR"
mount -t tmpfs -o size=512m tmpfs /tmp
mkdir -p "$OF_ROOT"
mount -c --bind /proc/self/fd/3 "$OF_ROOT"
mount -c -o remount,bind,ro "$OF_ROOT"
mount -c --bind /proc/self/fd/4 "$OF_ROOT/.orderflow"
exec 3<&- 4<&-
cd "$OF_ROOT"
exec "$@"
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def missing_requirements() -> str | None:
    """Why the cluster tests cannot run here (None when they can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, mounts)"
    if shutil.which("ip") is None:
        return "needs iproute2's ip"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True)
    if probe.returncode != 0:
        return "ip netns does not work here"
    return None


@dataclass
class Host:
    net: Network
    name: str
    addresses: list[str]
    clock_offset_s: float = 0.0
    procs: list[Proc] = field(default_factory=list)

    @property
    def ns(self) -> str:
        return f"{self.net.prefix}-{self.name}"

    @property
    def link(self) -> str:
        """The veth end on the bridge (root namespace): down means the host is cut off."""
        return f"{self.net.prefix}{self.name}"[:15]

    @property
    def address(self) -> str:
        return self.addresses[0]

    @property
    def dir(self) -> Path:
        return self.net.run_dir / "hosts" / self.name

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        user: str | None = None,
    ) -> Proc:
        """Start ``argv`` in this host with exactly ``env`` (plus PATH and the isolation's own
        variables: nothing leaks from the test process's environment)."""
        log_path = self.net.run_dir / "logs" / f"{self.name}-{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": "/tmp",
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            **env,
            "OF_ROOT": str(PROJECT_ROOT),
            "OF_HOST_DIR": str(self.dir),
        }
        if self.clock_offset_s:
            full_env["LD_PRELOAD"] = str(FAKETIME_LIB)
            full_env["FAKETIME"] = f"{self.clock_offset_s:+.0f}s"
            # Only the wall clock is off: timeouts (monotonic) run at the real rate.
            full_env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
        prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"] if user else []
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, "sh", "-c", _ISOLATE, "sh", *prefix, *argv],
                env=full_env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        proc = Proc(f"{self.name}/{name}", popen, log_path)
        self.procs.append(proc)
        return proc

    def run(
        self, argv: Sequence[str], *, user: str | None = None, env: Mapping[str, str] = {}
    ) -> str:
        """Run a short command in this host (no isolation but the network); return stdout."""
        prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"] if user else []
        done = subprocess.run(
            ["ip", "netns", "exec", self.ns, *prefix, *argv],
            capture_output=True, text=True, check=True, timeout=120, env={**os.environ, **env},
        )  # fmt: skip
        return done.stdout

    def cut(self) -> None:
        """Take the host off the network: its link goes down, packets both ways are dropped."""
        ip("link", "set", self.link, "down")

    def heal(self) -> None:
        ip("link", "set", self.link, "up")

    def drop_from(self, source: str, dest: Host) -> None:
        """Drop every packet this host sends from ``source`` to ``dest`` (replies included): to
        ``dest`` the service on ``source`` goes silent, while this host's others still answer."""
        ip("-n", self.ns, "rule", "add", "from", source, "to", dest.address, "blackhole")

    def undrop_from(self, source: str, dest: Host) -> None:
        ip("-n", self.ns, "rule", "del", "from", source, "to", dest.address, "blackhole")

    def stop_all(self, grace_s: float = 10.0) -> None:
        """Stop every process this host started (by pid, newest first)."""
        stopping = [(p, p.terminate()) for p in reversed(self.procs)]
        deadline = time.monotonic() + grace_s
        for proc, children in stopping:
            proc.finish(children, deadline)
        self.procs.clear()

    def kill_leftovers(self) -> None:
        """SIGKILL any process still in the namespace (one a test's process forked)."""
        out = subprocess.run(
            ["ip", "netns", "pids", self.ns], capture_output=True, text=True
        ).stdout
        for pid in out.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)


@dataclass
class Network:
    """A bridge and its hosts; ``prefix`` names every namespace and link this run makes."""

    run_dir: Path
    prefix: str
    subnet: str  # "10.77.N": hosts get 10.77.N.x, the control (test process) 10.77.N.1
    hosts: dict[str, Host] = field(default_factory=dict)

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    @property
    def control_address(self) -> str:
        return f"{self.subnet}.1"

    @classmethod
    def create(cls, run_dir: Path, layout: Mapping[str, Sequence[int]]) -> Network:
        """Make the bridge and one host per ``layout`` entry (name -> last octets)."""
        n = os.getpid() % 200 + 20
        net = cls(run_dir, f"of{n}", f"10.77.{n}")
        try:
            ip("link", "add", net.bridge, "type", "bridge")
            ip("addr", "add", f"{net.control_address}/24", "dev", net.bridge)
            ip("link", "set", net.bridge, "up")
            for name, octets in layout.items():
                net.add_host(name, [f"{net.subnet}.{o}" for o in octets])
        except BaseException:
            net.close()
            raise
        return net

    def add_host(self, name: str, addresses: list[str]) -> Host:
        host = Host(self, name, addresses)
        self.hosts[name] = host
        host.dir.mkdir(parents=True, exist_ok=True)
        (PROJECT_ROOT / ".orderflow").mkdir(exist_ok=True)  # the mount point of host dirs
        ip("netns", "add", host.ns)
        ip("link", "add", host.link, "type", "veth", "peer", "name", "eth0", "netns", host.ns)
        ip("link", "set", host.link, "master", self.bridge, "up")
        for address in addresses:
            ip("-n", host.ns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", host.ns, "link", "set", "eth0", "up")
        ip("-n", host.ns, "link", "set", "lo", "up")
        return host

    def close(self) -> None:
        """Stop every process by pid, then remove every namespace and link this run made."""
        for host in reversed(list(self.hosts.values())):
            with contextlib.suppress(Exception):
                host.stop_all(grace_s=5.0)
        for host in self.hosts.values():
            host.kill_leftovers()
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("link", "del", host.link)
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("netns", "del", host.ns)
        with contextlib.suppress(subprocess.CalledProcessError):
            ip("link", "del", self.bridge)
