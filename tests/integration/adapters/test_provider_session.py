"""The provider adapters' HTTP session (``adapters.http.provider_session``) against a simulator
over real HTTP: one keep-alive connection for consecutive calls, and the proxy environment read
once per host yet still honoured."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import requests

from adapters.http import post_classified, provider_session
from domain.errors import ProviderUnavailable
from simulators.kuaidi100 import Kuaidi100Simulator

FORM = {"customer": "C", "param": "{}", "sign": "x"}


@pytest.fixture(scope="module")
def sim() -> Iterator[Kuaidi100Simulator]:
    with Kuaidi100Simulator("C", "key") as sim:
        yield sim


def _query(session: requests.Session, sim: Kuaidi100Simulator) -> None:
    url = f"{sim.url}/poll/query.do"
    assert post_classified(session, "kuaidi100", url, (3.0, 5.0), data=FORM).status_code == 200


def test_consecutive_calls_share_one_connection(sim):
    session = provider_session()
    for _ in range(3):
        _query(session, sim)
    manager = session.get_adapter(sim.url).poolmanager  # type: ignore[attr-defined]
    # urllib3's pool container refuses plain iteration; keys() is its way to list them.
    pools = [manager.pools[key] for key in manager.pools.keys()]  # noqa: SIM118
    assert [(p.num_connections, p.num_requests) for p in pools] == [(1, 3)]


def test_the_environment_is_read_once_per_host(sim, monkeypatch):
    reads: list[str] = []
    real = requests.sessions.get_environ_proxies

    def counting(url: str, no_proxy: str | None = None) -> dict[str, str]:
        reads.append(url)
        return real(url, no_proxy=no_proxy)

    monkeypatch.setattr(requests.sessions, "get_environ_proxies", counting)
    session = provider_session()
    for _ in range(3):
        _query(session, sim)
    assert len(reads) == 1


def test_a_proxy_in_the_environment_is_still_used(sim, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on: the "proxy" refuses connections
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{dead}")
    with pytest.raises(ProviderUnavailable, match="ProxyError"):
        _query(provider_session(), sim)
