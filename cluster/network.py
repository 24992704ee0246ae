"""The run's hosts: network namespaces on a private bridge, and the faults of the network kind.

Each host is a network namespace (`ntfc-<name>`) with one veth pair: one end in the host
(its address on 10.213.0.0/24), the other a port of the bridge `ntfc-br` in the root
namespace, which has 10.213.0.1 (the runner itself: it migrates, reads the database and the
provider's record over the bridge). No namespace has a default route, so nothing reaches
beyond the bridge; each has its own loopback.

Faults:
- `cut_off(host, peer)`: blackhole routes both ways between two hosts. A blackhole drops
  packets silently (the sending kernel gets an error and TCP keeps retransmitting), so open
  connections hang as in a partition and survive it if it heals in time; new connections
  fail at once.
- `isolate(host)`: the host's bridge port down: nobody reaches it, nothing gets out.

Everything is named with the prefix, so that `teardown()` (and the next run, after a runner
that died) finds and removes it: every process in the namespaces is killed first, since a
namespace with processes in it outlives its deletion.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass

PREFIX = "ntfc-"
BRIDGE = f"{PREFIX}br"
SUBNET = "10.213.0"
RUNNER_ADDRESS = f"{SUBNET}.1"


@dataclass(frozen=True)
class Host:
    """One test host: its namespace, its address and its bridge port."""

    name: str
    address: str

    @property
    def namespace(self) -> str:
        return f"{PREFIX}{self.name}"

    @property
    def port(self) -> str:
        # The root namespace's end of the veth pair (interface names: at most 15 characters).
        return f"{PREFIX}{self.name}"[:15]

    def argv(self, *command: str) -> list[str]:
        """`command` run inside this host (ip netns exec execs it: the pid is the command's)."""
        return ["ip", "netns", "exec", self.namespace, *command]


# The hosts of a run and their addresses.
HOSTS = {
    "db": "2", "pool": "3", "lb": "4",
    "api1": "11", "api2": "12",
    "disp1": "21", "disp2": "22", "disp3": "23",
    "load": "30",
}


class NetworkError(RuntimeError):
    """The machine cannot make the run's network (not root, no `ip netns`, ...)."""


def preflight() -> None:
    """Raise NetworkError, saying why, when this machine cannot host the run's network."""
    if os.geteuid() != 0:
        raise NetworkError("the cluster run needs root (it creates network namespaces); run it as root")
    try:
        done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    except FileNotFoundError:
        raise NetworkError("the cluster run needs `ip` from iproute2 (Debian package iproute2)") from None
    if done.returncode != 0:
        raise NetworkError(f"`ip netns` does not work here: {done.stderr.strip()}")
    probe = f"{PREFIX}probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
    if made.returncode != 0:
        raise NetworkError(f"cannot create a network namespace: {made.stderr.strip()}")
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)


class Network:
    """The bridge and the hosts of one run. `create()`, then `teardown()` (always)."""

    def __init__(self) -> None:
        self.hosts = {name: Host(name, f"{SUBNET}.{suffix}") for name, suffix in HOSTS.items()}
        self._cuts: set[tuple[str, str]] = set()

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def create(self) -> None:
        teardown()  # what a runner that died left behind
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{RUNNER_ADDRESS}/24", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        for host in self.hosts.values():
            inner = "eth0"
            _ip("netns", "add", host.namespace)
            _ip("link", "add", host.port, "type", "veth", "peer", "name", f"{host.port[:12]}-in")
            _ip("link", "set", f"{host.port[:12]}-in", "netns", host.namespace)
            _ip("link", "set", host.port, "master", BRIDGE, "up")
            _ip("-n", host.namespace, "link", "set", f"{host.port[:12]}-in", "name", inner)
            _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", inner)
            _ip("-n", host.namespace, "link", "set", inner, "up")
            _ip("-n", host.namespace, "link", "set", "lo", "up")

    # --- faults -----------------------------------------------------------------------------------

    def cut_off(self, name: str, peer: str) -> None:
        """No packet between `name` and `peer` in either direction, until `heal_cut`."""
        a, b = self.hosts[name], self.hosts[peer]
        _ip("-n", a.namespace, "route", "add", "blackhole", f"{b.address}/32")
        _ip("-n", b.namespace, "route", "add", "blackhole", f"{a.address}/32")
        self._cuts.add((name, peer))

    def heal_cut(self, name: str, peer: str) -> None:
        a, b = self.hosts[name], self.hosts[peer]
        _ip("-n", a.namespace, "route", "del", "blackhole", f"{b.address}/32")
        _ip("-n", b.namespace, "route", "del", "blackhole", f"{a.address}/32")
        self._cuts.discard((name, peer))

    def isolate(self, name: str) -> None:
        """The host's bridge port down: its peers' packets to it vanish, its own go nowhere."""
        _ip("link", "set", self.hosts[name].port, "down")

    def rejoin(self, name: str) -> None:
        _ip("link", "set", self.hosts[name].port, "up")

    def pids(self, name: str) -> list[int]:
        """Every process running in the host."""
        return namespace_pids(self.hosts[name].namespace)

    def kill_host(self, name: str) -> int:
        """SIGKILL every process of the host at once (a host lost); returns how many."""
        return kill_namespace(self.hosts[name].namespace)


def namespace_pids(namespace: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=10)
    return [int(pid) for pid in done.stdout.split() if pid.isdigit()]


def kill_namespace(namespace: str) -> int:
    pids = namespace_pids(namespace)
    for pid in pids:
        for signum in (signal.SIGCONT, signal.SIGKILL):  # a stopped process dies only once continued
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                break
    return len(pids)


def teardown() -> list[str]:
    """Kill every process in the run's namespaces, delete them and the bridge; returns what was
    removed. Safe to call at any time, any number of times."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    namespaces = [line.split()[0] for line in listed.splitlines() if line.startswith(PREFIX)]
    for namespace in namespaces:
        kill_namespace(namespace)
    deadline = time.monotonic() + 10
    while any(namespace_pids(ns) for ns in namespaces) and time.monotonic() < deadline:
        time.sleep(0.1)
    for namespace in namespaces:
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=10)
    removed = list(namespaces)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=10).stdout
    for line in links.splitlines():
        name = line.split(": ", 2)[1].split("@")[0] if ": " in line else ""
        if name.startswith(PREFIX):  # the bridge, and veth ends whose namespace is gone
            subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=10)
            removed.append(name)
    return removed


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {done.stderr.strip()}")
