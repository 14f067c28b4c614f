"""Helpers of the end-to-end driver tests: deployments on real servers, raw signed requests, thread bursts."""

from __future__ import annotations

import functools
import http.client
import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from kernel.client import Client, Response
from kernel.core import signing
from kernel.testing import GunicornServer

DOMAIN = "localhost"
USERNAME = "alice"
PASSWORD = "password1"


@functools.cache
def cheap_hash() -> str:
    """An argon2id hash of :data:`PASSWORD` cheap enough for tests (the server is told the same costs)."""
    from passlib.hash import argon2

    return argon2.using(type="ID", memory_cost=64, rounds=1).hash(PASSWORD)


def sections(storage: str, state: str = "", **extra: dict[str, object]) -> dict[str, dict[str, object]]:
    """The INI configuration of a deployment on ``storage`` (and ``state``), with one user, alice@localhost."""
    bastion: dict[str, object] = {"development": True, "storage": storage}
    if state:
        bastion["state"] = state
    config: dict[str, dict[str, object]] = {
        "bastion": bastion,
        "auth": {
            "argon2_memory_cost": 64,
            "argon2_time_cost": 1,
            # Every request comes from 127.0.0.1: 49 replays weigh 147 and would ban the origin
            # mid-burst (429 Abusive instead of ReplayedCall) and for every later test.
            "abuse_max": 0,
            "demo_user": False,
        },
        "users": {f"{USERNAME}@{DOMAIN}": cheap_hash()},
    }
    for name, values in extra.items():
        config.setdefault(name, {}).update(values)
    return config


@dataclass
class Deployment:
    """Bastion behind 4 gunicorn workers on one storage configuration, and how to take its backend down."""

    name: str
    server: GunicornServer
    #: Takes the backend down (None: this configuration has no server to stop).
    stop_backend: Callable[[], None] | None = None
    #: Brings it back on the same address and data.
    start_backend: Callable[[], None] | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def client(self) -> Client:
        """A new client of the deployment, logged in as alice."""
        client = Client(self.server.url, host=DOMAIN)
        client.login(USERNAME, PASSWORD)
        return client

    def get(self, path: str) -> Response:
        """One plain GET (``/healthz``)."""
        return raw_request(self.server.host, self.server.port, "GET", path, b"", {"Host": DOMAIN})

    def worker_pids(self) -> set[int]:
        """The pids of gunicorn's worker processes right now."""
        assert self.server.process is not None
        return children(self.server.process.pid)


def raw_request(host: str, port: int, method: str, path: str, body: bytes, headers: dict[str, str],
                timeout: float = 30.0) -> Response:
    """Send one request on a new connection and return the raw answer."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body or None, headers=headers)
        answer = conn.getresponse()
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read())
    finally:
        conn.close()


@dataclass(frozen=True)
class SignedRequest:
    """One signed call frozen into bytes: sending it twice sends the very same request."""

    path: str
    body: bytes
    headers: dict[str, str]
    nonce: str
    key: bytes

    def answer_is_signed(self, response: Response) -> bool:
        """Whether the answer carries the session's MAC over this request's nonce."""
        mac = signing.parse_server_authorization(response.headers.get("server-authorization"))
        expected = signing.response_mac(self.key, self.nonce, response.status, response.body)
        return mac is not None and signing.macs_equal(mac, expected)


def freeze_call(client: Client, service: str, *args: Any) -> SignedRequest:
    """Sign a call to ``service`` once with the client's session, as :mod:`kernel.core.signing` defines it."""
    assert client.session is not None, "log in first"
    path = f"/api/{service}"
    body = json.dumps({"args": list(args)}, separators=(",", ":")).encode("utf-8")
    ts = str(int(client.clock() + client.offset))
    nonce = signing.new_nonce()
    mac = signing.request_mac(client.session.key, ts, nonce, path, client.domain, body)
    headers = {"Host": client.host, "Content-Type": "application/json",
               "Authorization": signing.authorization(client.session.sid, ts, nonce, mac)}
    return SignedRequest(path, body, headers, nonce, client.session.key)


def send_all_at_once(host: str, port: int, request: SignedRequest, copies: int) -> list[Response]:
    """Send ``copies`` identical requests from as many threads, released together once all are connected."""
    barrier = threading.Barrier(copies, timeout=30)

    def send(_: int) -> Response:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        try:
            conn.connect()
            barrier.wait()
            conn.request("POST", request.path, body=request.body, headers=request.headers)
            answer = conn.getresponse()
            return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read())
        finally:
            conn.close()

    with ThreadPoolExecutor(copies) as pool:
        return list(pool.map(send, range(copies)))


def post_all_at_once(host: str, port: int, requests: list[tuple[str, bytes, dict[str, str], str]]) -> list[Response]:
    """POST every ``(path, body, headers, source address)`` from its own connection, released together."""
    barrier = threading.Barrier(len(requests), timeout=30)

    def send(i: int) -> Response:
        path, body, headers, source = requests[i]
        conn = http.client.HTTPConnection(host, port, timeout=60, source_address=(source, 0))
        try:
            conn.connect()
            barrier.wait()
            conn.request("POST", path, body=body, headers=headers)
            answer = conn.getresponse()
            return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read())
        finally:
            conn.close()

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(send, range(len(requests))))


def in_threads(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` for i in range(count), each in its own thread; return the results in order.

    The first exception of any thread is raised here, after every thread ended.
    """
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(work, range(count)))


def children(pid: int) -> set[int]:
    """The direct children of a process, read from /proc (Linux)."""
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode("ascii", "replace")
        except OSError:
            continue
        # Field 4 (ppid) follows the command name, which may hold spaces: split after its ')'.
        if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
            found.add(int(name))
    return found


def poll_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait until ``condition()`` holds (bounded polling of a server coming back); AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)  # a server restarting gives no event to wait on


@contextmanager
def timed(record: dict[str, float], name: str) -> Iterator[None]:
    """Record how long the block took under ``name`` (for the report printed with -s)."""
    start = time.monotonic()
    try:
        yield
    finally:
        record[name] = round(time.monotonic() - start, 2)


class Repeating:
    """Call ``step(i)`` over and over in ``count`` threads for as long as the ``with`` block runs.

    Each call returns a label (an HTTP status); :attr:`seen` counts them once the
    block has exited. An exception in a thread ends that thread and is raised
    when the block exits (unless the block itself is raising).
    """

    def __init__(self, count: int, step: Callable[[int], Any]):
        self.count = count
        self.step = step
        self.seen: Counter = Counter()
        self._over = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list = []

    def _loop(self, i: int) -> Counter:
        seen: Counter = Counter()
        while not self._over.is_set():
            seen[self.step(i)] += 1
        return seen

    def __enter__(self) -> Repeating:
        self._pool = ThreadPoolExecutor(self.count)
        self._futures = [self._pool.submit(self._loop, i) for i in range(self.count)]
        return self

    def __exit__(self, exc_type, *rest: object) -> None:
        self._over.set()
        assert self._pool is not None
        self._pool.shutdown()
        if exc_type is None:
            for future in self._futures:
                self.seen += future.result()


def _proc_net_sockets(port: int) -> dict[int, int]:
    """Established TCP connections to 127.0.0.1:``port`` on this machine: the client's port -> the socket inode."""
    found = {}
    with open("/proc/net/tcp", encoding="ascii") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            if state != "01" or not inode:  # 01: ESTABLISHED
                continue
            local_ip, local_port = local.split(":")
            if local_ip == "0100007F" and int(local_port, 16) == port:
                found[int(remote.split(":")[1], 16)] = inode
    return found


def worker_serving(connection: http.client.HTTPConnection, port: int, workers: set[int]) -> int | None:
    """The pid of the gunicorn worker holding the server side of a kept-alive ``connection``, or None.

    Read from /proc: the server's socket of the connection (``/proc/net/tcp``)
    and which worker process has it open (``/proc/<pid>/fd``).
    """
    assert connection.sock is not None, "send a request on the connection first"
    inode = _proc_net_sockets(port).get(connection.sock.getsockname()[1])
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in workers:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
            except OSError:
                continue
    return None


def connections_per_worker(host: str, port: int, workers: set[int], each: int, burst: int = 8,
                           bursts: int = 50) -> dict[int, list[http.client.HTTPConnection]]:
    """Open kept-alive connections until every worker holds ``each`` of them; return them by worker pid.

    Connections are opened in bursts, each sending one ``GET /healthz`` at
    once so that the workers compete for them (one after the other, the
    same idle worker tends to win every accept); the ones not needed are
    closed. AssertionError if ``bursts`` bursts do not reach every worker.
    """
    pinned: dict[int, list[http.client.HTTPConnection]] = {pid: [] for pid in workers}

    def open_one(_: int) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.request("GET", "/healthz", headers={"Host": DOMAIN})
        conn.getresponse().read()
        return conn

    for _ in range(bursts):
        if all(len(conns) >= each for conns in pinned.values()):
            return pinned
        with ThreadPoolExecutor(burst) as pool:
            opened = list(pool.map(open_one, range(burst)))
        for conn in opened:
            pid = worker_serving(conn, port, workers)
            if pid is not None and len(pinned[pid]) < each:
                pinned[pid].append(conn)
            else:
                conn.close()
    for conns in pinned.values():
        for conn in conns:
            conn.close()
    raise AssertionError(f"could not open {each} connections to each of the workers {sorted(workers)}: "
                         f"{ {pid: len(conns) for pid, conns in pinned.items()} }")


def send_on(connection: http.client.HTTPConnection, request: SignedRequest) -> Response:
    """Send a frozen signed call on an open (kept-alive) connection and read the answer."""
    connection.request("POST", request.path, body=request.body, headers=request.headers)
    answer = connection.getresponse()
    return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read())


def storage_of(request, name: str, tmp_path_factory, label: str, redis_db: int) -> str:
    """The storage URL of a module's deployment on ``name`` (``sqlite``, ``postgresql`` or ``redis``): a SQLite file,
    a PostgreSQL database (the ``postgres_server`` fixture) or a Redis DB number (``redis_server``) of its own."""
    if name == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp(label)}/bastion.sqlite3"
    if name == "postgresql":
        return request.getfixturevalue("postgres_server").create_database(f"{label}_{uuid.uuid4().hex[:12]}")
    return request.getfixturevalue("redis_server").url.rsplit("/", 1)[0] + f"/{redis_db}"
