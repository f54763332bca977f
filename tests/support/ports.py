"""Ports for servers a test starts as separate processes (in-process gRPC servers bind
port 0 instead: support.serving)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, below the kernel's ephemeral range: a port the kernel
    picked (bind to 0) can be taken again by an outgoing connection before the service
    that was meant to have it binds (seen: the registry failing to start)."""
    low, _ = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    for _ in range(1000):
        port = random.randrange(10000, low)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")
