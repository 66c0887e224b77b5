"""Test hosts made of network namespaces: one LAN, private to the test, that reaches nothing else.

A hub namespace holds a bridge with the LAN's first address (and runs Redis); every host is
its own namespace joined to the bridge by a veth pair created straight into the two
namespaces, so no interface or address ever appears in the machine's own namespace and no
route leads out. Cutting a host off takes its port on the bridge down: the host keeps its
address and routes, its packets just stop arriving, as when a switch port or cable dies.

Needs root (``ip netns add``); a missing right or binary is an error, never a skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from types import TracebackType

import redis

from tests.support.redis_server import RedisServer

# a private range nothing on these machines uses; the namespaces' own, so no clash with a
# concurrent run either (each run has its own namespaces)
SUBNET = "10.231.18"
HUB_ADDRESS = f"{SUBNET}.1"


class NetnsError(RuntimeError):
    """An ``ip`` command failed (not root, no iproute2, a kernel without veth or bridge)."""


def _ip(*args: str) -> None:
    binary = shutil.which("ip")
    if binary is None:
        raise NetnsError("no `ip` binary: install iproute2 (./.ci/run does)")
    done = subprocess.run([binary, *args], capture_output=True, text=True, timeout=30,
                          check=False)
    if done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}"
                         " (network namespaces need root)")


@dataclass(frozen=True)
class Host:
    """One test host: a namespace with one interface on the LAN."""

    name: str
    netns: str
    address: str
    port_on_hub: str

    def argv(self, *command: str) -> list[str]:
        """``command`` run inside this host (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.netns, *command]


class Lan:
    """A hub namespace with a bridge, and hosts added to it; ``close()`` removes all of it."""

    def __init__(self, tag: str | None = None) -> None:
        # unique per run: namespaces are machine-wide names
        self.tag = tag or f"b18-{os.getpid()}"
        self.hub = Host("hub", f"{self.tag}-hub", HUB_ADDRESS, "br0")
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []

    def open(self) -> Lan:
        self._add_namespace(self.hub.netns)
        _ip("-n", self.hub.netns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub.netns, "addr", "add", f"{HUB_ADDRESS}/24", "dev", "br0")
        _ip("-n", self.hub.netns, "link", "set", "br0", "up")
        return self

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def add_host(self, name: str) -> Host:
        """A new namespace joined to the bridge, at the next address of the LAN."""
        host = Host(name, f"{self.tag}-{name}", f"{SUBNET}.{10 + len(self.hosts)}", f"p-{name}")
        self._add_namespace(host.netns)
        _ip("link", "add", host.port_on_hub, "netns", self.hub.netns, "type", "veth",
            "peer", "name", "eth0", "netns", host.netns)
        _ip("-n", self.hub.netns, "link", "set", host.port_on_hub, "master", "br0")
        _ip("-n", self.hub.netns, "link", "set", host.port_on_hub, "up")
        _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        self.hosts[name] = host
        return host

    def sysctl(self, host: Host, name: str, value: str) -> None:
        """Set a per-namespace sysctl (``net.*``) inside ``host`` only."""
        path = "/proc/sys/" + name.replace(".", "/")
        _ip("netns", "exec", host.netns, "sh", "-c", f'echo "$1" > {path}', "sh", value)

    def cut(self, host: Host) -> None:
        """Take the host's port on the bridge down: nothing reaches it or leaves it."""
        _ip("-n", self.hub.netns, "link", "set", host.port_on_hub, "down")

    def restore(self, host: Host) -> None:
        _ip("-n", self.hub.netns, "link", "set", host.port_on_hub, "up")

    def close(self) -> None:
        """Kill anything still running in the LAN's namespaces, then delete them.

        A namespace outlives ``ip netns del`` while a process is in it; every process in
        these namespaces was started by the test, so each is ended by its pid.
        """
        for name in reversed(self._namespaces):
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True,
                                  text=True, timeout=30, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30,
                           check=False)
        self._namespaces.clear()

    def __enter__(self) -> Lan:
        try:
            return self.open()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class HubRedisServer(RedisServer):
    """A redis-server in the hub namespace, on the LAN's address and a unix socket.

    Hosts reach it at :attr:`url`; the test process itself talks to it through the socket
    (:meth:`client`), so the test needs no link into the LAN.
    """

    def __init__(self, lan: Lan) -> None:
        super().__init__()
        self.lan = lan
        self.socket_path = self.dir / "redis.sock"

    @property
    def url(self) -> str:
        return f"redis://{HUB_ADDRESS}:{self.port}/0"

    def command(self) -> list[str]:
        # later duplicates win: this --bind replaces the loopback one. Protected mode refuses
        # every address but loopback when there is no password: this LAN is the test's own.
        return self.lan.hub.argv(*super().command(), "--bind", HUB_ADDRESS,
                                 "--protected-mode", "no",
                                 "--unixsocket", str(self.socket_path),
                                 "--unixsocketperm", "700")

    def __enter__(self) -> HubRedisServer:
        self.start()
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=10)

    def _probe_client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=1)
