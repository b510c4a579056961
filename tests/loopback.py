"""Loopback ports for servers the tests start as real processes (``concierge serve``, PostgreSQL)."""

from __future__ import annotations

import random
import socket
from pathlib import Path


def free_port() -> int:
    """A free loopback port below the ephemeral range, for a server restarted on the same port.

    A port from ``bind(0)`` would come out of the ephemeral range, where any of the many client
    sockets of the suite (and of parallel workers) may take it while the server is down between
    a kill and its restart (or between our check and the server's own bind); below that range
    only an explicit bind can.
    """
    low = _ephemeral_low()
    rng = random.Random()
    for _ in range(200 if low > 21_000 else 0):
        port = rng.randrange(20_000, low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # no room below the ephemeral range on this machine
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default
