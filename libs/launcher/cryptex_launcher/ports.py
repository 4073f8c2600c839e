"""Loopback ports for local servers and services, never handed out twice by this process.

Ports come from below the kernel's ephemeral range: a port from inside it (what binding port
0 gives) can become some outgoing connection's source port before the service binds it.
`reserve` marks ports another part of the launcher chose (a Redis Cluster's nodes and their
bus ports, found in its data directory) so `free_port` never hands them out.
"""

from __future__ import annotations

import contextlib
import random
import socket
import time
from collections.abc import Iterable
from pathlib import Path

PORTS_FROM = 20_000  # free ports are picked from here up to the kernel's ephemeral range
_given_ports: set[int] = set()


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def reserve(ports: Iterable[int]) -> None:
    """Never hand these ports out (they are taken by something this process started)."""
    _given_ports.update(ports)


def free_port() -> int:
    """A loopback port nothing listens on, never handed out twice by this process. It comes
    from below the kernel's ephemeral range: a port from inside it (what binding port 0
    gives) can become some outgoing connection's source port before the service binds it."""
    top = _ephemeral_start() - 1
    for _ in range(500):
        port = random.randint(PORTS_FROM, top) if top > PORTS_FROM else 0
        if port in _given_ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = int(s.getsockname()[1])
        _given_ports.add(port)
        return port
    raise RuntimeError("no free port found")


def free_port_pair(offset: int) -> int:
    """A free port p whose p + `offset` is free too (a Redis Cluster node's bus port is
    its port + 10000), both below the ephemeral range and both never handed out again."""
    top = _ephemeral_start() - 1 - offset
    for _ in range(500):
        port = random.randint(PORTS_FROM, top) if top > PORTS_FROM else PORTS_FROM
        if port in _given_ports or port + offset in _given_ports:
            continue
        if not all(_bindable(p) for p in (port, port + offset)):
            continue
        _given_ports.update((port, port + offset))
        return port
    raise RuntimeError("no free port pair found")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for_port(port: int, timeout_s: float = 30.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_s}s")


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something holds the port (a bind with SO_REUSEADDR fails only then)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False
