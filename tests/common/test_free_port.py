"""Free ports for the services a test or `up` starts: below the kernel's ephemeral range (a
port from inside it can become an outgoing connection's source port before the service
binds it: CI saw `address already in use` that way), free, and never handed out twice."""

from __future__ import annotations

from cryptex_launcher.ports import PORTS_FROM, _ephemeral_start, free_port


def test_free_ports_come_from_below_the_ephemeral_range_and_are_distinct() -> None:
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(PORTS_FROM <= p < _ephemeral_start() for p in ports)

