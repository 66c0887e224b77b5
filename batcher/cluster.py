"""A queue's client on a Redis Cluster: a plain ``redis.Redis`` pinned to its slot's owner.

Every key of queue ``Q`` carries the hash tag ``{Q}``, so the whole queue lives in one slot,
on one master. Its client is therefore an ordinary ``redis.Redis`` (or ``OomTolerantRedis``)
whose connection pool connects to the node that owns that slot now. Everything built on a
standalone client keeps working as it is and at the same speed: the hand-packed EVALSHA of
the enqueue hot path (``batcher.resp``), the claim's MULTI/EXEC, pipelines, the OOM replay,
scripts touching same-slot keys they do not declare. ``RedisCluster``'s own command path
could carry none of them.

The topology is redis-py's: one ``NodesManager`` per cluster URL and process (slot map,
MOVED updates, re-discovery by CLUSTER SLOTS). A pool follows it:

- a MOVED reply updates the slot map at once (redis-py's ``move_slot``); ASK, TRYAGAIN and
  CLUSTERDOWN (a slot migrating, a failover under way) and a lost connection mark the map
  stale, and the next connection taken re-discovers it (at most every
  ``REFRESH_MIN_SECONDS``);
- each such reply reaches the caller as :class:`SlotMovedError`, a ``ConnectionError``: the
  command did not run (MOVED, ASK, TRYAGAIN and CLUSTERDOWN are refusals), and every caller
  already retries connection errors (``batcher.backoff``), now on the new owner. NOSCRIPT
  on a promoted replica is handled where it always was (scripts load again);
- every fault of a pinned client carries :meth:`SlotPool.until_new_owner`, which the back-off
  waits with (``batcher.backoff.pause``): it looks the slot's owner up every
  ``OWNER_POLL_SECONDS`` and ends the wait as soon as a master other than the one that failed
  serves the slot, so the retry reaches a promoted replica when it is promoted, not a back-off
  step later. While no other master serves the slot the whole back-off is waited.

Imported only for a cluster URL (``batcher.connection.connect``): ``redis.cluster`` is heavy.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import TYPE_CHECKING, Any

import redis
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, MovedError, TryAgainError

from batcher.connection import SOCKET_TIMEOUT_SECONDS, ClusterAddress, parse_cluster_url, redact

if TYPE_CHECKING:
    from redis.cluster import NodesManager

# re-discovery is one CLUSTER SLOTS; this bounds it when many callers fail at once
REFRESH_MIN_SECONDS = 0.1
# while a back-off waits out a pinned client's fault, the slot's owner is looked up this often
# (a re-discovery is one CLUSTER SLOTS, and at most one per REFRESH_MIN_SECONDS per process)
OWNER_POLL_SECONDS = 0.2
# how often a forking worker's parent looks the slot map up again after a job: its horses
# follow a moved slot in their own copy of the map, which dies with them
RECHECK_SECONDS = 2.0
# the attribute of a fault that batcher.backoff.pause waits with (see the module docstring)
WAIT_ATTR = "until_new_owner"
_REDIRECTS = (MovedError, AskError, TryAgainError, ClusterDownError)
_TLS_KWARGS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


class SlotMovedError(redis.ConnectionError):
    """The node refused the command (MOVED, ASK, TRYAGAIN, CLUSTERDOWN): it did not run. The
    slot map is updated or refreshed; send it again (a daemon's back-off does)."""


class ClusterUnavailableError(redis.ConnectionError):
    """No seed node answered CLUSTER SLOTS, or the slot has no master for now."""


class Topology:
    """One cluster's slot map (redis-py's ``NodesManager``), shared by every pinned pool of
    the process; built at first use, so a client is made without touching the network."""

    def __init__(self, url: str, address: ClusterAddress, node_options: dict[str, Any]):
        self.url, self.address, self._node_options = url, address, node_options
        self._nodes: NodesManager | None = None
        self._lock = threading.Lock()
        self.stale = False
        self._refreshed_at = 0.0
        # bumped whenever the map may have changed: a pool compares one int per connection
        self.epoch = 0

    def _manager(self) -> NodesManager:
        nodes = self._nodes
        if nodes is None:
            from redis.cluster import ClusterNode, NodesManager

            with self._lock:
                if self._nodes is None:
                    try:
                        self._nodes = NodesManager(
                            [ClusterNode(h, p)  # type: ignore[no-untyped-call]
                             for h, p in self.address.seeds],
                            require_full_coverage=False, **self._node_options)
                    except redis.exceptions.RedisClusterException as exc:
                        raise ClusterUnavailableError(
                            f"Redis Cluster {redact(self.url)}: {exc}") from None
                    self._refreshed_at = time.monotonic()
                    self.epoch += 1
                nodes = self._nodes
        assert nodes is not None
        if self.stale:
            self._refresh(nodes)
        return nodes

    def _refresh(self, nodes: NodesManager) -> None:
        with self._lock:
            now = time.monotonic()
            if not self.stale or now - self._refreshed_at < REFRESH_MIN_SECONDS:
                return
            self.stale = False
            self._refreshed_at = now
        try:
            nodes.initialize()
        except (redis.exceptions.RedisClusterException, redis.RedisError) as exc:
            self.stale = True
            raise ClusterUnavailableError(f"Redis Cluster {redact(self.url)}: {exc}") from None
        finally:
            self.epoch += 1

    def owner(self, slot: int) -> tuple[str, int]:
        """(host, port) of the master serving ``slot``, re-discovered when the map is stale."""
        nodes = self._manager()
        found = nodes.slots_cache.get(slot)
        if not found:
            self.stale = True
            raise ClusterUnavailableError(f"Redis Cluster {redact(self.url)}: no master "
                                          f"serves slot {slot} (yet)")
        return found[0].host, found[0].port

    def redirected(self, exc: BaseException) -> None:
        """A node refused a command: follow a MOVED at once, re-discover after the rest."""
        nodes = self._nodes
        if isinstance(exc, MovedError) and nodes is not None:
            try:
                nodes.move_slot(exc)
                self.epoch += 1
                return
            except KeyError:  # a slot the map never had: re-discover instead
                pass
        self.stale = True

    def recheck(self, every: float) -> None:
        """Mark the map stale if it was last looked up ``every`` seconds ago or more."""
        if time.monotonic() - self._refreshed_at >= every:
            self.stale = True

    def lost(self) -> None:
        """A connection failed: the node may be dead and its slots on a promoted replica."""
        self.stale = True

    def masters(self) -> list[redis.Redis]:
        """A client of every master (redis-py's per-node clients), for SCAN across the
        cluster: a queue is found on whichever master owns its slot."""
        nodes = self._manager()
        masters = nodes.get_nodes_by_server_type("primary")
        return [n.redis_connection for n in masters if n.redis_connection is not None]


class _Follows:
    """Mixed into a pinned pool's connections: tells the topology what the node said."""

    _slot_pool: SlotPool

    host: str
    port: int

    def connect_check_health(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().connect_check_health(*args, **kwargs)  # type: ignore[misc]
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._lost(exc)
            raise

    def send_packed_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().send_packed_command(*args, **kwargs)  # type: ignore[misc]
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._lost(exc)
            raise

    def _lost(self, exc: BaseException) -> None:
        self._slot_pool.topology.lost()
        self._slot_pool.watch(exc, (self.host, self.port))

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except _REDIRECTS as exc:
            self._slot_pool.topology.redirected(exc)
            # a redirect leaves the connection clean, but the caller's pipeline or packed
            # send may still have replies to read: ConnectionError makes every path drop it
            moved = SlotMovedError(f"{type(exc).__name__} from "
                                   f"{self._slot_pool.shown_owner()}: {exc}")
            self._slot_pool.watch(moved, (self.host, self.port))
            raise moved from exc
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._lost(exc)
            raise
        except redis.ResponseError as exc:
            if str(exc).startswith("UNBLOCKED"):
                # a blocked call (BLPOP) on a master just turned replica: its slot moved
                self._lost(exc)
            raise


class _Connection(_Follows, redis.Connection):
    pass


class _SSLConnection(_Follows, redis.SSLConnection):
    pass


class SlotPool(redis.ConnectionPool):
    """Connections to whichever master owns ``slot`` now; moved when the owner changes."""

    def __init__(self, topology: Topology, slot: int, options: dict[str, Any]):
        self.topology, self.slot = topology, slot
        self._options = options
        self._epoch = -1
        self._siblings: dict[tuple[type[redis.Redis], int], redis.Redis] = {}
        self._carried: set[str | bytes] = set()
        self._scripts_missing = False  # the owner changed since the carried scripts loaded
        host, port = topology.address.seeds[0]  # replaced at the first connection taken
        cls = _SSLConnection if topology.address.tls else _Connection
        super().__init__(connection_class=cls, host=host, port=port,
                         username=topology.address.username,
                         password=topology.address.password, **options)

    def make_connection(self) -> Any:
        conn = super().make_connection()
        conn._slot_pool = self  # type: ignore[attr-defined]
        return conn

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if self._epoch != self.topology.epoch or self.topology.stale:
            try:
                self._follow()
            except ClusterUnavailableError as exc:
                self.watch(exc, self.pinned())
                raise
        conn = super().get_connection()
        if self._scripts_missing:
            self._load_scripts(conn)
        return conn

    def carry_scripts(self, sources: list[str | bytes]) -> None:
        """Scripts to load on each new owner before its first command (``Scripts`` registers
        them). A promoted replica has none: an EVALSHA sent there with its BATCH_REPLICA_ACKS
        WAIT would be refused NOSCRIPT, and the WAIT behind it would still wait its whole
        timeout while the new master has no replica yet, before the script is even loaded."""
        self._carried.update(sources)

    def _load_scripts(self, conn: Any) -> None:
        sources = list(self._carried)
        try:
            conn.send_packed_command(conn.pack_commands([("SCRIPT", "LOAD", s) for s in sources]))
            failed = 0
            for _ in sources:
                try:
                    conn.read_response()
                except redis.ResponseError:  # LOADING and the like: the command meets it too
                    failed += 1
        except BaseException:
            conn.disconnect()  # replies may be left unread
            self.release(conn)
            raise
        self._scripts_missing = failed > 0

    def release(self, connection: Any) -> None:
        kw = self.connection_kwargs
        if (connection.host, connection.port) != (kw["host"], kw["port"]):
            # taken before the slot moved: reconnect to the new owner when next used
            connection.disconnect()
            connection.host, connection.port = kw["host"], kw["port"]
        super().release(connection)

    def disconnect(self, inuse_connections: bool = True) -> None:
        super().disconnect(inuse_connections)
        for sibling in list(self._siblings.values()):
            if sibling.connection_pool is not self:
                sibling.connection_pool.disconnect(inuse_connections)

    def _follow(self) -> None:
        epoch = self.topology.epoch
        host, port = self.topology.owner(self.slot)
        with self._lock:
            self._epoch = max(epoch, self._epoch)
            kw = self.connection_kwargs
            if (kw["host"], kw["port"]) == (host, port):
                return
            kw["host"], kw["port"] = host, port
            self._scripts_missing = bool(self._carried)
            for conn in self._available_connections:
                conn.disconnect()
                conn.host, conn.port = host, port

    def recheck(self) -> None:
        """Follow the slot's owner without sending a command to it, looking the map up again
        at most every ``RECHECK_SECONDS``: for a forking worker's parent, whose horses would
        otherwise each start from the owner before a failover (a MOVED per job or, for a
        host that is gone, a connect timeout). A cluster that cannot say is left to them."""
        self.topology.recheck(RECHECK_SECONDS)
        if self.topology.stale or self._epoch != self.topology.epoch:
            try:
                self._follow()
                if self._scripts_missing:  # loaded here once, not by every horse
                    self.release(self.get_connection())
            except redis.ConnectionError:
                pass

    def pinned(self) -> tuple[str, int]:
        return self.connection_kwargs["host"], self.connection_kwargs["port"]

    def watch(self, exc: BaseException, failed: tuple[str, int]) -> None:
        """Give ``exc`` (a fault of this slot's node ``failed``) the wait that a back-off
        ends early when another master serves the slot; the first node to fail is kept."""
        if getattr(exc, WAIT_ATTR, None) is None:
            setattr(exc, WAIT_ATTR, functools.partial(self.until_new_owner, failed))

    def until_new_owner(self, failed: tuple[str, int], seconds: float,
                        stop: threading.Event | None = None) -> bool:
        """Wait up to ``seconds`` (cut short by ``stop``) for a master other than ``failed``
        to serve this pool's slot; True as soon as one does (a promoted replica, a MOVED
        already followed), False after the whole wait. The map is looked up again every
        ``OWNER_POLL_SECONDS``: it is what the retry would do, sooner, and sends nothing to
        the slot's node, so a cluster still down sees one CLUSTER SLOTS per poll at most."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                if self.topology.owner(self.slot) != failed:
                    return True
            except ClusterUnavailableError:  # no master serves it yet, or no node answered
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if stop is None:
                time.sleep(min(left, OWNER_POLL_SECONDS))
            elif stop.wait(min(left, OWNER_POLL_SECONDS)):
                return False
            self.topology.stale = True  # the map that named ``failed`` may be out of date

    def shown_owner(self) -> str:
        if self._epoch < 0:
            return "a master not looked up yet"
        return f"{self.connection_kwargs['host']}:{self.connection_kwargs['port']}"

    def describe(self) -> str:
        """The cluster URL (no password) and the node serving this pool's slot."""
        return f"{redact(self.topology.url)} (slot {self.slot} on {self.shown_owner()})"

    def client_for_key(self, cls: type[redis.Redis], key: str) -> redis.Redis:
        """A client of class ``cls`` pinned to ``key``'s slot, with this pool's options; one
        per slot and class, kept (a dashboard asks for each queue on every request)."""
        slot = key_slot(key.encode())
        found = self._siblings.get((cls, slot))
        if found is None:
            pool = self if slot == self.slot else SlotPool(self.topology, slot, self._options)
            found = self._siblings[(cls, slot)] = cls(connection_pool=pool)
        return found


_TOPOLOGIES: dict[tuple[str, tuple[tuple[str, str], ...]], Topology] = {}
_TOPOLOGIES_LOCK = threading.Lock()


def topology_for(url: str, options: dict[str, Any]) -> Topology:
    """The process's one topology of ``url`` (per TLS settings): queues share it."""
    tls = tuple(sorted((k, str(v)) for k, v in options.items() if k in _TLS_KWARGS))
    with _TOPOLOGIES_LOCK:
        found = _TOPOLOGIES.get((url, tls))
        if found is None:
            address = parse_cluster_url(url)
            # the topology's own clients (CLUSTER SLOTS, SCAN) never block: plain timeouts
            # (redis-py gives them its own no-retry policy)
            node_options = {k: v for k, v in options.items()
                            if k not in ("health_check_interval", "retry", "retry_on_timeout",
                                         "retry_on_error")}
            node_options["socket_timeout"] = SOCKET_TIMEOUT_SECONDS
            node_options.update(username=address.username, password=address.password)
            if address.tls:
                node_options["ssl"] = True
            found = _TOPOLOGIES[(url, tls)] = Topology(url, address, node_options)
        return found


def pinned_client(url: str, key: str, cls: type[redis.Redis], options: dict[str, Any]
                  ) -> redis.Redis:
    """A ``cls`` client for ``key``'s slot on the cluster ``url`` (see the module docstring).
    Raises ValueError for a malformed URL."""
    topology = topology_for(url, options)
    return cls(connection_pool=SlotPool(topology, key_slot(key.encode()), options))
