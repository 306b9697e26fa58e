"""`cache-edge dev` calls a port busy exactly when its servers could not listen on it
(issue 13, J): a port whose old connections sit in TIME_WAIT after Ctrl-C is free."""

from __future__ import annotations

import socket
import subprocess

import pytest

from cache_edge.devtools.harness import port_in_use


def _time_wait_port() -> int:
    """A port with no listener whose last connection is in TIME_WAIT on this machine.

    The side that closes first keeps TIME_WAIT; a server stopping with its clients still
    connected (Ctrl-C on ``cache-edge dev``) closes first, so the socket is the server's.
    Its listener allowed address reuse, as asyncio's and aiohttp's do (Linux lets a new
    socket bind over TIME_WAIT only when both allow it)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = int(listener.getsockname()[1])
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = listener.accept()
    listener.close()
    served.close()  # the server's side first: TIME_WAIT on 127.0.0.1:port
    client.recv(1)  # the FIN arrived
    client.close()
    return port


def _has_time_wait(port: int) -> bool:
    try:
        out = subprocess.run(
            ["ss", "-Htan", "state", "time-wait", f"( sport = :{port} )"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except FileNotFoundError:
        return True  # without ss, trust the sequence above
    return f":{port}" in out


def test_a_port_with_connections_in_time_wait_is_free() -> None:
    port = _time_wait_port()
    if not _has_time_wait(port):
        pytest.skip("the kernel did not keep the connection in TIME_WAIT")
    assert not port_in_use(port)
    # And the servers could indeed listen there, as asyncio and aiohttp do.
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()


def test_a_port_with_a_listener_is_in_use() -> None:
    port = _time_wait_port()
    with socket.socket() as server:
        # Even one that allows address reuse itself, as asyncio servers do.
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()
        assert port_in_use(port)
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        assert port_in_use(int(plain.getsockname()[1]))
