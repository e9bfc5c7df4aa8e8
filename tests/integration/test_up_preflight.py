"""`orderflow up` checks every port it will listen on before it starts anything, and names
the port and what moves it (cli/up.py)."""

from __future__ import annotations

import socket

import pytest

from cli.up import check_ports, listeners
from settings import Settings
from workers.procs import free_port, listen_error


@pytest.fixture
def listening() -> socket.socket:
    """A server on a free port of 127.0.0.1, as another program would hold it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield sock
    sock.close()


def test_a_taken_port_is_named_with_the_option_that_moves_it(listening):
    taken = listening.getsockname()[1]
    assert listen_error(taken) is not None
    wanted = listeners(free_port(), taken, Settings(metrics_port=None))
    with pytest.raises(RuntimeError) as refused:
        check_ports(wanted)
    message = str(refused.value)
    assert f"port {taken} (Flower) is already in use" in message
    assert "--flower-port" in message and "nothing was started" in message
    assert "--api-port" not in message  # the free one is not mentioned


def test_the_metrics_listener_and_a_port_set_twice_are_checked_too(listening):
    taken = listening.getsockname()[1]
    api = free_port()
    with pytest.raises(RuntimeError) as refused:
        check_ports(listeners(api, api, Settings(metrics_port=taken)))
    message = str(refused.value)
    assert f"port {api} is set for both the API (--api-port) and Flower (--flower-port)" in message
    assert f"port {taken} (the API's metrics) is already in use" in message
    assert "METRICS_PORT" in message


def test_a_metrics_address_this_host_does_not_have_is_refused_before_the_start():
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: the API's listener could not bind.
    settings = Settings(metrics_port=free_port(), metrics_bind="192.0.2.1")
    with pytest.raises(RuntimeError) as refused:
        check_ports(listeners(free_port(), free_port(), settings))
    assert f"cannot listen on 192.0.2.1:{settings.metrics_port}" in str(refused.value)


def test_free_ports_pass():
    check_ports(listeners(free_port(), free_port(), Settings(metrics_port=None)))
