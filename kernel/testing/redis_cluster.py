"""A throw-away Redis Cluster for tests: masters with replicas on loopback, made as an operator makes one.

::

    from kernel.testing import RedisClusterServer

    with RedisClusterServer() as cluster:           # 3 masters, 1 replica each
        url = cluster.url                            # redis+cluster://127.0.0.1:<port>,127.0.0.1:<port>,...
        master = cluster.master_of("bastion:{alpha.example}:seq")
        new = cluster.fail_over(master)              # SIGKILL it, wait until its replica has taken over
        master.start(); cluster.wait_healthy()       # back as a replica of the new master

Each node is a :class:`~kernel.testing.RedisServer` (127.0.0.1, a free port,
no persistence, its own folder) started with ``--cluster-enabled yes``; the
cluster is then made with ``redis-cli --cluster create``, and
:meth:`RedisClusterServer.wait_healthy` waits (polling, with a deadline:
the servers give no event) until every node agrees that every slot is
served, every master has its replicas, and none is failing. A node killed
keeps its port and folder (its ``nodes.conf``), so started again it rejoins
the cluster.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable

from kernel.testing.ports import free_port
from kernel.testing.redis import RedisServer, RedisServerError, _resp, find_redis_server

#: Slots of a Redis Cluster.
SLOTS = 16384
#: A node's cluster bus listens on its port plus this.
BUS_OFFSET = 10000

INSTALL_HINT = "install it (Debian: apt-get install redis-server, which brings redis-tools) or set BASTION_REDIS_CLI"


class ReplyError(RedisServerError):
    """A node answered an error."""


def find_redis_cli() -> str:
    """Return the redis-cli binary: ``$BASTION_REDIS_CLI``, PATH, /usr/bin, or next to redis-server."""
    candidates = [os.environ.get("BASTION_REDIS_CLI"), shutil.which("redis-cli"), "/usr/bin/redis-cli"]
    try:
        candidates.append(os.path.join(os.path.dirname(find_redis_server()), "redis-cli"))
    except RedisServerError:
        pass
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RedisServerError(f"redis-cli not found; {INSTALL_HINT}")


def command(port: int, *args: str | int, password: str | None = None, timeout: float = 5.0):
    """Send one command to the node on 127.0.0.1:``port`` and return its decoded reply (ReplyError for an error)."""
    payload = _resp(*(str(a) for a in args))
    if password:
        payload = _resp("AUTH", password) + payload
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock, sock.makefile("rb") as reader:
        sock.sendall(payload)
        if password:
            _read(reader)
        return _read(reader)


def _read(reader):
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("the node closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise ReplyError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else reader.read(size + 2)[:-2].decode(errors="replace")
    if kind == b"*":
        size = int(rest)
        return None if size < 0 else [_read(reader) for _ in range(size)]
    raise ConnectionError(f"unexpected reply {line[:40]!r}")


class RedisClusterServer:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each, on 127.0.0.1.

    ``node_timeout`` (seconds) is ``cluster-node-timeout``: how long a master
    may be silent before the others declare it failed and a replica takes
    over (Redis's default is 15; a test wants it short). ``password`` sets
    ``requirepass`` (and ``masterauth``) on every node.
    """

    def __init__(self, masters: int = 3, replicas: int = 1, node_timeout: float = 1.5, password: str | None = None,
                 startup_timeout: float = 60.0, binary: str | None = None, cli: str | None = None):
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self.masters_count = masters
        self.replicas_count = replicas
        self.node_timeout = node_timeout
        self.password = password
        self.startup_timeout = startup_timeout
        self.binary = binary
        self.cli = cli
        self.nodes: list[RedisServer] = []

    # -- addresses -------------------------------------------------------------

    @property
    def url(self) -> str:
        """``redis+cluster://[:password@]127.0.0.1:<port>,...``: every node, as startup nodes."""
        if not self.nodes:
            raise RedisServerError("the cluster was never started")
        auth = f":{self.password}@" if self.password else ""
        return "redis+cluster://" + auth + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    # -- life cycle --------------------------------------------------------------

    def start(self) -> RedisClusterServer:
        """Start the nodes, make the cluster, and wait until it is healthy."""
        if self.nodes:
            return self
        cli = self.cli or find_redis_cli()
        binary = self.binary or find_redis_server()
        options = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                   "--cluster-node-timeout", str(int(self.node_timeout * 1000)),
                   # A replica always stands for election, however long it was apart (tests restart nodes).
                   "--cluster-replica-validity-factor", "0",
                   # A master syncs a replica at once, not after waiting 5 s for others to sync with them.
                   "--repl-diskless-sync-delay", "0"]
        try:
            for _ in range(self.masters_count * (1 + self.replicas_count)):
                self.nodes.append(self._start_node(binary, options))
            create = [cli, "--cluster", "create", *(f"127.0.0.1:{node.port}" for node in self.nodes),
                      "--cluster-replicas", str(self.replicas_count), "--cluster-yes"]
            if self.password:
                create += ["-a", self.password, "--no-auth-warning"]
            result = subprocess.run(create, capture_output=True, text=True, timeout=self.startup_timeout)
            if result.returncode != 0:
                raise RedisServerError(f"redis-cli --cluster create failed: {result.stdout[-2000:]} {result.stderr[-2000:]}")
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node and remove its folder."""
        for node in self.nodes:
            node.stop()
        self.nodes = []

    def __enter__(self) -> RedisClusterServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- state -------------------------------------------------------------------

    def command(self, node: RedisServer, *args: str | int):
        """One command to ``node``; its reply."""
        assert node.port is not None
        return command(node.port, *args, password=self.password)

    def running(self) -> list[RedisServer]:
        """The nodes whose process runs."""
        return [node for node in self.nodes if node.process is not None and node.process.poll() is None]

    def role(self, node: RedisServer) -> str:
        """``master`` or ``slave``, as the node says."""
        return self.command(node, "ROLE")[0]

    def masters(self) -> list[RedisServer]:
        """The running nodes that are masters."""
        return [node for node in self.running() if self.role(node) == "master"]

    def owner(self, slot: int, asked: RedisServer | None = None) -> RedisServer:
        """The master of ``slot``, as ``asked`` (by default, any running node) sees it."""
        asked = asked or self.running()[0]
        for start, end, master, *_ in self.command(asked, "CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return self._node(int(master[1]))
        raise RedisServerError(f"slot {slot} is not served")

    def slot_of(self, key: str) -> int:
        """The slot of ``key``."""
        return self.command(self.running()[0], "CLUSTER", "KEYSLOT", key)

    def master_of(self, key: str) -> RedisServer:
        """The master that serves ``key``."""
        return self.owner(self.slot_of(key))

    def replicas_of(self, master: RedisServer) -> list[RedisServer]:
        """The connected replicas of a master."""
        return [self._node(int(port)) for _, port, _ in self.command(master, "ROLE")[2]]

    def healthy(self) -> bool:
        """Whether every node runs, agrees that all slots are served and no node fails, and every master has its replicas."""
        try:
            if len(self.running()) != len(self.nodes):
                return False
            for node in self.nodes:
                info = dict(line.split(":", 1) for line in self.command(node, "CLUSTER", "INFO").split() if ":" in line)
                if (info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS)
                        or info.get("cluster_known_nodes") != str(len(self.nodes))):
                    return False
                if any("fail" in line.split()[2] for line in self.command(node, "CLUSTER", "NODES").splitlines()):
                    return False
            masters = self.masters()
            if len(masters) != self.masters_count:
                return False
            for master in masters:
                if len(self.replicas_of(master)) != self.replicas_count:
                    return False
            for node in self.nodes:
                role = self.command(node, "ROLE")
                if role[0] == "slave" and role[3] != "connected":
                    return False
            return True
        except (OSError, ReplyError):
            return False

    def wait_healthy(self, timeout: float | None = None) -> None:
        """Wait until :meth:`healthy` (RedisServerError after ``timeout``, by default the start-up timeout)."""
        self._poll(self.healthy, timeout or self.startup_timeout, "the cluster did not become healthy")

    def fail_over(self, master: RedisServer, timeout: float | None = None) -> RedisServer:
        """Kill ``master`` (SIGKILL) and wait until a replica serves its slots; return the new master.

        The killed node keeps its port and folder: :meth:`RedisServer.start` brings it back, as a replica.
        """
        slots = [start for start, _, owner, *_ in self.command(master, "CLUSTER", "SLOTS") if int(owner[1]) == master.port]
        master.kill()
        found: list[RedisServer] = []

        def taken_over() -> bool:
            try:
                others = self.running()
                owners = {self.owner(slot, asked).port for slot in slots for asked in others}
                if len(owners) == 1 and master.port not in owners:
                    owner = owners.pop()
                    assert owner is not None  # a running node has its port
                    found.append(self._node(owner))
                    return True
            except (OSError, ReplyError, RedisServerError):
                pass
            return False

        self._poll(taken_over, timeout or self.startup_timeout, f"no replica took over from 127.0.0.1:{master.port}")
        return found[-1]

    def move_slot(self, slot: int, target: RedisServer, during: Callable[[], None] | None = None) -> None:
        """Move ``slot`` and its keys to the master ``target``, as a resharding does.

        ``during`` runs once every key has moved but before the slot is given to
        ``target``: a client then meets ASK, after it MOVED.
        """
        source = self.owner(slot)
        source_id = self.command(source, "CLUSTER", "MYID")
        target_id = self.command(target, "CLUSTER", "MYID")
        self.command(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        self.command(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        assert target.port is not None  # a running node has its port
        while keys := self.command(source, "CLUSTER", "GETKEYSINSLOT", slot, 100):
            auth = ["AUTH", self.password] if self.password else []
            self.command(source, "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, *auth, "KEYS", *keys)
        if during is not None:
            during()
        for node in self.masters():
            self.command(node, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        self._poll(lambda: all(self.owner(slot, node).port == target.port for node in self.running()),
                   self.startup_timeout, f"slot {slot} did not move")

    # -- internals ---------------------------------------------------------------

    def _start_node(self, binary: str, options: list[str]) -> RedisServer:
        """A node on a port whose cluster bus port (plus 10000) is free too; another pair if one was taken meanwhile."""
        for attempt in range(5):
            node = RedisServer(self.password, binary=binary, extra_args=options, port=free_port(bus_offset=BUS_OFFSET))
            try:
                return node.start()
            except RedisServerError:
                node.stop()
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _node(self, port: int) -> RedisServer:
        for node in self.nodes:
            if node.port == port:
                return node
        raise RedisServerError(f"no node of this cluster on port {port}")

    def _poll(self, condition: Callable[[], bool], timeout: float, failure: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise RedisServerError(f"{failure} within {timeout} s")
            time.sleep(0.05)  # cluster gossip gives the client no event to wait on
