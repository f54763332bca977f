"""Network namespaces as hosts for tests (ip netns and veth from iproute2; needs root,
which the test machines and CI have): each "host" gets its own network stack and
address on a bridge in the test's namespace, so services talk across addresses, not
just ports. Everything created is removed on exit."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass(frozen=True)
class Host:
    namespace: str
    address: str

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run inside this host's network namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]


@contextmanager
def hosts(count: int, subnet: str = "10.77.0") -> Iterator[list[Host]]:
    """`count` hosts at subnet.2, .3, …, reachable from here at subnet.1."""
    tag = uuid.uuid4().hex[:5]
    bridge = f"imbr{tag}"
    created: list[str] = []
    try:
        ip("link", "add", bridge, "type", "bridge")
        ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
        ip("link", "set", bridge, "up")
        made = []
        for index in range(count):
            namespace, outside, inside = f"im{tag}{index}", f"imv{tag}{index}", f"imp{tag}{index}"
            ip("netns", "add", namespace)
            created.append(namespace)
            ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            ip("link", "set", outside, "master", bridge)
            ip("link", "set", outside, "up")
            ip("link", "set", inside, "netns", namespace)
            address = f"{subnet}.{index + 2}"
            ip("-n", namespace, "addr", "add", f"{address}/24", "dev", inside)
            ip("-n", namespace, "link", "set", inside, "up")
            ip("-n", namespace, "link", "set", "lo", "up")
            made.append(Host(namespace, address))
        yield made
    finally:
        for namespace in created:  # its end of each veth goes with it
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
