"""A throw-away Redis Cluster: 3 masters + 3 replicas of the system redis-server on loopback.

Every node is a :class:`RedisServer` (own dir, free port, ended by its pid); the cluster bus
gets a free port of its own (``cluster-port``, Redis 7) instead of port + 10000, which may be
taken or past 65535. ``redis-cli --cluster create`` assigns the slots and the replicas.

``tls=`` certificates (``tests.support.tls``) make every node TLS-only (``port 0``,
``tls-port``), with TLS on the cluster bus and on replication as well; ``acl=(user,
password)`` adds that ACL user and turns the password-less ``default`` user off, so every
client, replica and ``redis-cli`` must log in.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from tests.support.redis_server import RedisServer, RedisServerError, free_port
from tests.support.tls import Certificates
from tests.support.waiting import wait_until

# how long a master may be unreachable before its replica takes over: short, for tests
NODE_TIMEOUT_MS = 1000
MASTERS, REPLICAS_PER_MASTER = 3, 1
FORM_GUARD_SECONDS = 60.0
FORM_ATTEMPTS = 2


@dataclass(frozen=True)
class Security:
    """How a node is reached: TLS certificates and an ACL user, each optional."""

    tls: Certificates | None = None
    acl: tuple[str, str] | None = None

    def server_args(self) -> list[str]:
        args: list[str] = []
        if self.tls is not None:
            args += ["--tls-cluster", "yes", "--tls-replication", "yes",
                     "--tls-cert-file", str(self.tls.server_cert),
                     "--tls-key-file", str(self.tls.server_key),
                     "--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "yes",
                     # a node is a client of the others on the bus and on replication
                     "--tls-client-cert-file", str(self.tls.client_cert),
                     "--tls-client-key-file", str(self.tls.client_key)]
        if self.acl is not None:
            user, password = self.acl
            args += ["--user", user, "on", f">{password}", "~*", "&*", "+@all",
                     "--user", "default", "off", "--masteruser", user, "--masterauth", password]
        return args

    def client_options(self) -> dict[str, Any]:
        """redis-py keywords for a client of a node."""
        options: dict[str, Any] = {}
        if self.tls is not None:
            options.update(ssl=True, ssl_ca_certs=str(self.tls.ca),
                           ssl_certfile=str(self.tls.client_cert),
                           ssl_keyfile=str(self.tls.client_key))
        if self.acl is not None:
            options.update(username=self.acl[0], password=self.acl[1])
        return options

    def cli_args(self) -> list[str]:
        """redis-cli's options for the same."""
        args: list[str] = []
        if self.tls is not None:
            args += ["--tls", "--cacert", str(self.tls.ca), "--cert", str(self.tls.client_cert),
                     "--key", str(self.tls.client_key)]
        if self.acl is not None:
            args += ["--user", self.acl[0], "--pass", self.acl[1]]
        return args


class ClusterNode(RedisServer):
    def __init__(self, node_timeout_ms: int = NODE_TIMEOUT_MS,
                 security: Security = Security()) -> None:
        self.bus_port = free_port()
        self.security = security
        super().__init__(extra_args=[
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms), *security.server_args(),
        ])

    def pick_ports(self) -> None:
        super().pick_ports()
        self.bus_port = free_port()

    def command(self) -> list[str]:
        command = [*super().command(), "--cluster-port", str(self.bus_port)]
        if self.security.tls is None:
            return command
        # later duplicates win: the plain port closed, the node's port is its TLS port
        return [*command, "--port", "0", "--tls-port", str(self.port)]

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5,
                           **self.security.client_options())

    def _probe_client(self) -> redis.Redis:
        return self.client()

    def pause(self) -> None:
        """SIGSTOP the node: it falls behind its master, as on a slow link or a busy host."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def info(self, section: str) -> dict[str, object]:
        client = self.client()
        try:
            return dict(client.info(section))
        finally:
            client.close()

    def cluster_info(self) -> dict[str, str]:
        client = self.client()
        try:
            raw = client.execute_command("CLUSTER", "INFO")
        finally:
            client.close()
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return dict(line.split(":", 1) for line in text.split() if ":" in line)


def find_redis_cli() -> str:
    found = shutil.which("redis-cli")
    if found is None:
        raise RedisServerError("no redis-cli on PATH: install redis-tools (./.ci/run does)")
    return found


class RedisClusterFixture:
    """Six nodes; ``start()`` forms the cluster and waits for ``cluster_state:ok`` on all."""

    def __init__(self, node_timeout_ms: int = NODE_TIMEOUT_MS, *,
                 tls: Certificates | None = None, acl: tuple[str, str] | None = None) -> None:
        self.security = Security(tls, acl)
        self.node_timeout_ms = node_timeout_ms
        self.nodes = self._new_nodes()

    def start(self) -> RedisClusterFixture:
        """Form the cluster; if it never reaches ``cluster_state:ok``, form a new one from
        fresh nodes once more, then fail showing what every node reported both times (stop
        24's CI: two nodes given one port, a cluster of five; free_port and the start-up
        check now rule that out, this stays as the net)."""
        reports: list[str] = []
        for attempt in range(FORM_ATTEMPTS):
            try:
                self._form()
                return self
            except AssertionError:
                reports.append(self.describe())
                self.close()
                if attempt + 1 == FORM_ATTEMPTS:
                    raise AssertionError("never formed: cluster_state:ok, 3 masters with a "
                                         "replica each, on every node\n"
                                         + "\n".join(reports)) from None
                # not warnings.warn: the suite turns warnings into errors
                print("cluster never formed, forming a new one:\n" + reports[-1],
                      file=sys.stderr)
                self.nodes = self._new_nodes()
            except BaseException:
                self.close()
                raise
        return self

    def _new_nodes(self) -> list[ClusterNode]:
        return [ClusterNode(self.node_timeout_ms, self.security)
                for _ in range(MASTERS * (1 + REPLICAS_PER_MASTER))]

    def _form(self) -> None:
        for node in self.nodes:
            node.start()
        create = subprocess.run(
            [find_redis_cli(), *self.security.cli_args(), "--cluster", "create",
             *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", str(REPLICAS_PER_MASTER), "--cluster-yes"],
            capture_output=True, text=True, timeout=120, check=False)
        if create.returncode != 0:
            raise RedisServerError(f"redis-cli --cluster create: {create.stdout[-2000:]}"
                                   f"{create.stderr[-2000:]}")
        wait_until(lambda: self._formed(self.nodes), "cluster_state:ok, 3 masters with "
                   "a replica each, on every node", guard_seconds=FORM_GUARD_SECONDS)

    def describe(self) -> str:
        """One line per node: its port, state, role and replication link, for a failure."""
        lines = []
        for node in self.nodes:
            try:
                info, repl = node.cluster_info(), node.info("replication")
                lines.append(f"  {node.port}: state={info.get('cluster_state')} "
                             f"size={info.get('cluster_size')} "
                             f"known={info.get('cluster_known_nodes')} "
                             f"role={repl.get('role')} master_port={repl.get('master_port')} "
                             f"link={repl.get('master_link_status')}")
                if info.get("cluster_state") != "ok" or repl.get("master_link_status") == "down":
                    lines.append(f"    log: {node.log_tail(600)!r}")
            except (redis.RedisError, OSError) as exc:
                lines.append(f"  {node.port}: unreachable ({exc!r}); log: {node.log_tail()}")
        return "\n".join(lines)

    def _formed(self, nodes: list[ClusterNode]) -> bool:
        for node in nodes:
            info = node.cluster_info()
            if info.get("cluster_state") != "ok" or info.get("cluster_size") != str(MASTERS):
                return False
        # a replica that never synced its master would refuse to take over (its data counts
        # as too old), so formed means every replica's link is up
        replicas = [self.replica_of(m) for m in self.masters()]
        return len(replicas) == MASTERS and all(
            r is not None and r.info("replication").get("master_link_status") == "up"
            for r in replicas)

    @property
    def running(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.running]

    def role(self, node: ClusterNode) -> str:
        return str(node.info("replication").get("role"))

    def masters(self) -> list[ClusterNode]:
        return [n for n in self.running if self.role(n) == "master"]

    def replica_of(self, master: ClusterNode) -> ClusterNode | None:
        """The running node that replicates ``master`` (by its port)."""
        for node in self.running:
            info = node.info("replication")
            if info.get("role") == "slave" and int(str(info.get("master_port"))) == master.port:
                return node
        return None

    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", n.port) for n in self.running]

    def url(self, seeds: int = 2) -> str:
        """BATCH_REDIS_URL for this cluster: ``redis+cluster://`` (``rediss+cluster://`` with
        TLS), the ACL user if any, and a few seed nodes."""
        scheme = "redis+cluster" if self.security.tls is None else "rediss+cluster"
        user = "" if self.security.acl is None else "{}:{}@".format(*self.security.acl)
        return f"{scheme}://{user}" + ",".join(f"{h}:{p}"
                                                for h, p in self.startup_nodes()[:seeds])

    def owner_of(self, key: str) -> ClusterNode:
        """The running master that serves ``key``'s slot (CLUSTER SLOTS of a live master)."""
        return self.owner_of_slot(key_slot(key.encode()))

    def queues_on_distinct_masters(self, count: int, prefix: str = "q") -> list[str]:
        """``count`` queue names whose slots live on ``count`` different masters."""
        chosen: dict[int, str] = {}
        for i in range(1000):
            name = f"{prefix}{i}"
            chosen.setdefault(self.owner_of(f"batcher:{{{name}}}:state").port, name)
            if len(chosen) == count:
                return list(chosen.values())
        raise RedisServerError(f"no {count} queues on distinct masters")

    def move_slot(self, slot: int, target: ClusterNode) -> None:
        """Migrate ``slot`` with its keys to ``target`` as ``redis-cli --cluster reshard``
        does (IMPORTING / MIGRATING, MIGRATE the keys, SETSLOT NODE on every master)."""
        source = self.owner_of_slot(slot)
        src, dst = source.client(), target.client()
        try:
            src_id, dst_id = src.execute_command("CLUSTER", "MYID"), dst.execute_command(
                "CLUSTER", "MYID")
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000,
                                    "KEYS", *keys)
            for node in [target, source, *(m for m in self.masters()
                                             if m not in (target, source))]:
                client = node.client()
                try:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
                finally:
                    client.close()
        finally:
            src.close()
            dst.close()

    def owner_of_slot(self, slot: int) -> ClusterNode:
        client = self.masters()[0].client()
        try:
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return next(n for n in self.running if n.port == int(master[1]))
        finally:
            client.close()
        raise RedisServerError(f"no master serves slot {slot}")

    def client(self, **options: object) -> RedisCluster:
        """A redis-py cluster client (bytes replies, as the batcher's clients)."""
        from redis.cluster import ClusterNode as Startup

        kwargs = {**self.security.client_options(), **options}
        return RedisCluster(startup_nodes=[Startup(h, p) for h, p in self.startup_nodes()],
                            decode_responses=False, **kwargs)

    def kill_master(self, master: ClusterNode) -> ClusterNode:
        """SIGKILL ``master``; wait until its replica is a master and every survivor is ok.

        Returns the promoted node.
        """
        replica = self.replica_of(master)
        assert replica is not None, f"master on {master.port} has no replica"
        master.kill()
        wait_until(lambda: self.role(replica) == "master", f"replica {replica.port} promoted",
                   guard_seconds=FORM_GUARD_SECONDS)
        wait_until(lambda: all(n.cluster_info().get("cluster_state") == "ok"
                               for n in self.running),
                   "cluster_state:ok on every survivor", guard_seconds=FORM_GUARD_SECONDS)
        return replica

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> RedisClusterFixture:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

