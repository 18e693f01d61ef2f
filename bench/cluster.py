"""Hosts made of network namespaces, for the tests and the benchmark of what crosses a network: each host has
its own network stack (and host name), joined to the others by a bridge that also carries the caller's own
address. A host can be killed, as a machine losing power (every process in it SIGKILLed), or cut off, as a
pulled cable (its link down: what it sends goes nowhere, with no error to tell), and healed.

Everything is made with iproute2 (`ip netns`, veth pairs, a bridge), needs root, and is removed by `remove()`.
Traffic stays on a /24 of 10.0.0.0/8 that no interface of the machine uses, so two runs can share a machine.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

#: Namespaces and links of a cluster are named after the pid of the process that made them; those of a
#: process that died without removing them are removed by the next cluster.
PREFIX = "ta"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def _remove_leftovers() -> None:
    """Namespaces and bridges of test processes that are gone."""
    for line in ip("netns", "list").stdout.splitlines():
        name = line.split()[0]
        owner = name.removeprefix(f"{PREFIX}-").split("-")[0]
        if name.startswith(f"{PREFIX}-") and owner.isdigit() and not Path(f"/proc/{owner}").exists():
            for pid in ip("netns", "pids", name, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            ip("netns", "del", name, check=False)
    for line in ip("-o", "link", "show", "type", "bridge").stdout.splitlines():
        name = line.split(":")[1].strip()
        owner = name.removeprefix(f"{PREFIX}br")
        if name.startswith(f"{PREFIX}br") and owner.isdigit() and not Path(f"/proc/{owner}").exists():
            ip("link", "del", name, check=False)


def _free_subnet() -> ipaddress.IPv4Network:
    used = [
        ipaddress.ip_interface(word.split()[0]).network
        for word in ip("-o", "-4", "addr", "show").stdout.split(" inet ")[1:]
    ]
    while True:
        subnet = ipaddress.IPv4Network(f"10.{random.randrange(100, 250)}.{random.randrange(256)}.0/24")
        if not any(subnet.overlaps(other) for other in used):
            return subnet


@dataclass
class Host:
    """One machine: a network namespace with one interface on the cluster's bridge."""

    name: str
    namespace: str
    address: str
    #: The bridge's end of the host's cable: down is the cable pulled.
    link: str
    workdir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def command(self, argv: list[str]) -> list[str]:
        """`argv` as run on this host: in its namespace, under its own host name."""
        return [
            "ip", "netns", "exec", self.namespace, "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"',
            self.name, *argv,
        ]  # fmt: skip

    def run(
        self, argv: list[str], env: dict[str, str], check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` on this host to its end."""
        return subprocess.run(
            self.command(argv), env=env, check=check, capture_output=True, text=True, timeout=120
        )

    def start(self, name: str, argv: list[str] | str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start process `name` on this host; its output goes to `<host>-<name>.log` in the workdir."""
        if isinstance(argv, str):
            argv = shlex.split(argv)
        log = open(self.workdir / f"{self.name}-{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            self.command(argv), env=env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        path = self.workdir / f"{self.name}-{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def pids(self) -> list[int]:
        return [int(pid) for pid in ip("netns", "pids", self.namespace, check=False).stdout.split()]

    def kill(self) -> None:
        """Every process of the host SIGKILLed at once, as a machine losing power; returns once all are gone."""
        deadline = time.monotonic() + 30
        while pids := self.pids():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: processes {pids} outlived SIGKILL for 30 s")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        for process in self.processes.values():
            process.wait(30)
        self.processes.clear()

    def cut(self) -> None:
        """The host's cable pulled: nothing it sends arrives, nothing reaches it, and nobody is told."""
        ip("link", "set", self.link, "down")

    def heal(self) -> None:
        ip("link", "set", self.link, "up")


class Cluster:
    """Hosts on one bridge. The test process reaches every host through the bridge's own address."""

    def __init__(self, workdir: Path) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("network-namespace hosts are made as root (ip netns): run the tests as root")
        _remove_leftovers()
        self.workdir = workdir
        self.tag = str(os.getpid())
        self.subnet = _free_subnet()
        self.bridge = f"{PREFIX}br{self.tag}"
        self.hosts: dict[str, Host] = {}
        self._addresses = iter(self.subnet.hosts())
        self.address = str(next(self._addresses))
        ip("link", "add", "name", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.address}/{self.subnet.prefixlen}", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def add_host(self, name: str) -> Host:
        number = len(self.hosts)
        namespace = f"{PREFIX}-{self.tag}-{name}"
        link, peer = f"{PREFIX}{self.tag}v{number}", f"{PREFIX}{self.tag}e{number}"
        address = str(next(self._addresses))
        ip("netns", "add", namespace)
        ip("link", "add", link, "type", "veth", "peer", "name", peer)
        ip("link", "set", peer, "netns", namespace)
        ip("-n", namespace, "link", "set", peer, "name", "eth0")
        ip("-n", namespace, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
        ip("-n", namespace, "link", "set", "lo", "up")
        ip("link", "set", link, "master", self.bridge)
        ip("link", "set", link, "up")
        host = Host(name, namespace, address, link, self.workdir)
        self.hosts[name] = host
        return host

    def remove(self) -> None:
        for host in self.hosts.values():
            host.kill()
            ip("link", "del", host.link, check=False)  # and its peer in the host
            ip("netns", "del", host.namespace, check=False)
        ip("link", "del", self.bridge, check=False)
        self.hosts.clear()
