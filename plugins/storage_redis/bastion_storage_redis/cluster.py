"""The driver's path to a Redis Cluster: each call on the master of its slot, over the same lean wire.

Every key of a domain carries the domain's hash tag, so every call of the
driver — a unit of work, a state operation, a script with all its keys — is
one command or script on **one slot**, and so on one master. The cluster
wire keeps what the one-server :class:`~bastion_storage_redis.wire.Wire`
does (EVALSHA, pooled connections, one round trip, ``WAIT`` for
``wait_replicas``) and adds the routing, for which it uses redis-py's
cluster client, :class:`redis.RedisCluster`:

* **the slot map**: the client discovers the cluster from the URL's nodes
  (``CLUSTER SLOTS``), and the wire sends each call to the master of its
  slot, on a bounded pool of its own for that node (one :class:`Wire` per
  node, ``max_connections`` each);
* **MOVED**: the slot has another master (a resharding, or a failover the
  map does not know yet): the client moves the slot in its map, and the
  call, which did not run, is sent to the new master;
* **ASK**: the slot is being migrated and the keys are already on the other
  node: the call is sent there after ``ASKING``, in the same round trip;
* **failover**: a master that cannot be reached, or a ``CLUSTERDOWN`` or
  ``TRYAGAIN`` answer, fails the call (503, never re-sent: it may have run)
  and makes the client read the slot map again, at most every
  :data:`REFRESH_EVERY` seconds; once a replica has taken over, the next
  calls go to it. No restart is needed.

The cluster client is created at the first call, so that Bastion starts
while the cluster is down (its calls answer 503 until it is up), and it
never re-sends a command itself: its own requests are only ``CLUSTER
SLOTS``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, MovedError, RedisClusterException, TryAgainError

from bastion_storage_redis.wire import BROKEN, NotReplicated, Script, Wire, raise_errors

log = logging.getLogger("bastion.storage_redis")

#: Redirections (MOVED, ASK) one call may follow before it fails as an outage.
REDIRECTS = 5
#: Least seconds between two readings of the slot map after failures.
REFRESH_EVERY = 0.25


def slot_of(key: str) -> int:
    """The Cluster slot of a key (its hash tag's)."""
    return key_slot(key.encode("utf-8"))


def variant(key: str, n: int) -> str:
    """``key`` with ``.n`` appended inside its hash tag: another slot, the same name otherwise."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return f"{key[:end]}.{n}{key[end:]}"


def _move_slot(nodes: Any, moved: MovedError) -> None:
    """Give the slot of a MOVED answer its new master in the slot map."""
    move = getattr(nodes, "move_slot", None)
    if move is not None:
        move(moved)
    else:  # older redis-py keeps it and applies it at its next look-up
        nodes.update_moved_exception(moved)


class ClusterWire:
    """What :class:`Wire` offers, on a Redis Cluster: each call routed to the master of its keys' slot."""

    def __init__(self, make_client: Callable[[], redis.RedisCluster],
                 make_pool: Callable[[str, int], redis.BlockingConnectionPool], label: str, retries: int = 0,
                 wait_replicas: int = 0, wait_timeout: float = 1.0):
        self._make_client = make_client
        self._make_pool = make_pool
        self._label = label
        self._wire_options: dict[str, Any] = {"retries": retries, "wait_replicas": wait_replicas, "wait_timeout": wait_timeout}
        self._client: redis.RedisCluster | None = None
        self._wires: dict[str, Wire] = {}
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()
        self._refreshed = 0.0

    # -- the slot map -----------------------------------------------------------

    @property
    def client(self) -> redis.RedisCluster:
        """redis-py's cluster client (created at first use); an unreachable cluster is a ConnectionError."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    try:
                        self._client = self._make_client()
                    except RedisClusterException as exc:  # no startup node answers: an outage, not a bug
                        raise redis.ConnectionError(f"no node of the cluster answers: {exc}") from None
                client = self._client
        return client

    def _wire(self, host: str, port: int) -> Wire:
        name = f"{host}:{port}"
        wire = self._wires.get(name)
        if wire is None:
            with self._lock:
                wire = self._wires.get(name)
                if wire is None:
                    wire = self._wires[name] = Wire(self._make_pool(host, port), **self._wire_options)
        return wire

    def _master(self, slot: int) -> Wire:
        try:
            node = self.client.nodes_manager.get_node_from_slot(slot)
        except RedisClusterException as exc:  # the slot has no known master
            self._refresh()
            raise ClusterDownError(f"slot {slot} is not served: {exc}") from None
        return self._wire(node.host, node.port)

    def _refresh(self) -> None:
        """Read the slot map again (one thread at a time, at most every REFRESH_EVERY seconds)."""
        if self._client is None or not self._refreshing.acquire(blocking=False):
            return
        try:
            if time.monotonic() - self._refreshed < REFRESH_EVERY:
                return
            try:
                self._client.nodes_manager.initialize()
            except Exception as exc:  # noqa: BLE001 - the cluster is unreachable for now; the next failure tries again
                log.info("redis cluster %s: the slot map could not be read: %s: %s", self._label,
                         type(exc).__name__, exc)
            self._refreshed = time.monotonic()
        finally:
            self._refreshing.release()

    def _routed(self, slot: int, send: Callable[[Wire, bool], Any]) -> Any:
        """``send(wire, asking)`` on the master of ``slot``, following MOVED and ASK (the call did not run)."""
        target: Wire | None = None
        for _ in range(REDIRECTS):
            wire = target or self._master(slot)
            try:
                return send(wire, target is not None)
            except MovedError as exc:
                _move_slot(self.client.nodes_manager, exc)
                target = None
            except AskError as exc:
                target = self._wire(exc.host, exc.port)
            except NotReplicated:
                raise
            except (ClusterDownError, TryAgainError, *BROKEN):
                self._refresh()
                raise
        raise ClusterDownError(f"slot {slot}: more than {REDIRECTS} redirections")

    # -- what the driver sends --------------------------------------------------

    def execute(self, *command: Any) -> Any:
        """Send one command on its key's slot (the command's first argument)."""
        return self._routed(slot_of(command[1]), lambda wire, asking: wire.execute(*command, asking=asking))

    def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send commands on their keys' slots, one pipeline per master; return each reply or error."""
        replies: list[Any] = [None] * len(commands)
        by_wire: dict[int, tuple[Wire, list[int]]] = {}
        for i, command in enumerate(commands):
            wire = self._master(slot_of(command[1]))
            by_wire.setdefault(id(wire), (wire, []))[1].append(i)
        for wire, positions in by_wire.values():
            try:
                answered = wire.pipeline([commands[i] for i in positions])
            except BROKEN:
                self._refresh()
                raise
            for i, reply in zip(positions, answered, strict=True):
                if isinstance(reply, AskError):  # a redirection (MOVED too): that one command again, routed
                    try:
                        reply = self.execute(*commands[i])
                    except redis.ResponseError as exc:
                        reply = exc
                replies[i] = reply
        return replies

    def eval(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a script on its keys' slot (they share one hash tag)."""
        return self._routed(slot_of(keys[0]), lambda wire, asking: wire.eval(script, keys, args, asking=asking))

    def eval_with(self, script: Script, keys: Sequence[str], args: Sequence[Any],
                  extra: Sequence[Sequence[Any]]) -> Any:
        """Run a script, then the idempotent ``extra`` commands on their own slots; return the script's reply."""
        result = self.eval(script, keys, args)
        raise_errors(self.pipeline(extra))
        return result

    def probe(self, key: str, ttl_ms: int) -> None:
        """Write ``ping``'s probe on every master: a variant of ``key`` in a slot each one serves."""
        nodes = self.client.nodes_manager
        masters = {node.name for node in nodes.get_nodes_by_server_type("primary")}
        chosen: dict[str, tuple[str, int]] = {}
        for n in range(64 * max(1, len(masters))):
            probe = key if n == 0 else variant(key, n)
            slot = slot_of(probe)
            try:
                owner = nodes.get_node_from_slot(slot).name
            except RedisClusterException:
                self._refresh()
                raise ClusterDownError(f"slot {slot} is not served") from None
            chosen.setdefault(owner, (probe, slot))
            if masters <= chosen.keys():
                break
        for probe, slot in chosen.values():
            def send(wire: Wire, asking: bool, probe: str = probe) -> None:
                wire.probe(probe, ttl_ms, asking=asking)

            self._routed(slot, send)

    def shards(self) -> list[Wire]:
        """The wire of every master (administration scans each one)."""
        return [self._wire(node.host, node.port) for node in self.client.nodes_manager.get_nodes_by_server_type("primary")]

    def close(self) -> None:
        """Close every connection of every node, and the cluster client's."""
        with self._lock:
            wires, self._wires = list(self._wires.values()), {}
            client, self._client = self._client, None
        for wire in wires:
            wire.close()
            wire.pool.disconnect()
        if client is not None:
            client.close()
