"""The driver's own path to Redis: pooled connections, packed commands, EVALSHA.

Each driver call is one command or one script, so the driver does not need
what ``redis.Redis.execute_command`` adds around a command (per-command
metrics, response callbacks, a retry closure, pool bookkeeping): measured on
loopback, that client path costs about three times the CPU of the command
itself. :class:`Wire` keeps the parts that matter:

* connections are redis-py ``Connection`` objects built by the driver's
  ``BlockingConnectionPool`` (same URL, TLS, timeouts, health checks,
  client name, hiredis parser), at most ``max_connections`` of them; a caller
  waits up to ``pool_timeout`` for a free one, then fails as an outage;
* a pooled connection is checked before use, as redis-py's pool does, so one
  that died while idle (a Redis restart) is replaced instead of failing;
* a connection whose command broke is disconnected and, with ``retries``,
  the command is re-sent on a fresh socket;
* scripts run with EVALSHA only; after ``NOSCRIPT`` (a restarted or flushed
  Redis) the script is loaded on the same connection and run again;
* with ``wait_replicas``, a writing script (and the probe of ``ping``) is
  followed by ``WAIT`` in the same round trip: the call is acknowledged only
  once that many replicas have the write, so a failover cannot lose it;
* after a fork the child starts with no connections of its own.

On a Redis Cluster (:mod:`bastion_storage_redis.cluster`) there is one
``Wire`` per master, and ``asking`` sends ``ASKING`` first, in the same round
trip, for a slot being migrated.

Commands are packed by hiredis in one C call when it is installed (by
redis-py's packer otherwise); replies are parsed by the connection's parser
(hiredis when installed) and decoded to ``str``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue
from typing import Any

import redis
from redis.exceptions import NoScriptError, ResponseError

_hiredis_pack: Callable[..., bytes] | None
try:  # pragma: no cover - depends on the installed extra
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover
    _hiredis_pack = None

#: What a broken connection raises (and what ``retries`` re-sends after).
BROKEN = (redis.ConnectionError, redis.TimeoutError)

ASKING = ("ASKING",)


class NotReplicated(redis.TimeoutError):
    """Fewer replicas than ``wait_replicas`` acknowledged a write within ``wait_timeout``: its outcome is not safe."""


@dataclass(eq=False)
class Script:
    """A Lua script and its SHA1, run with EVALSHA; ``writes``: whether it may write (then it may be followed by WAIT)."""

    text: str
    writes: bool = True
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        self.sha = hashlib.sha1(self.text.encode()).hexdigest()


class Wire:
    """A bounded pool of connections that sends single commands, pipelines and scripts."""

    def __init__(self, pool: redis.BlockingConnectionPool, retries: int = 0, wait_replicas: int = 0,
                 wait_timeout: float = 1.0):
        self._pool = pool
        self._max = pool.max_connections
        self._timeout = pool.timeout
        self._retries = retries
        self._replicas = wait_replicas
        self._wait = ("WAIT", wait_replicas, max(1, round(wait_timeout * 1000)))
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._idle: SimpleQueue = SimpleQueue()
        self._created = 0

    # -- connections --------------------------------------------------------

    def _checkout(self) -> Any:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._reset()  # the parent's sockets stay the parent's
        try:
            conn = self._idle.get_nowait()
        except Empty:
            conn = self._new_or_wait()
        try:
            if not conn.is_connected:
                conn.connect()
            else:
                try:
                    stale = conn.can_read()  # data left over, or closed by the server
                except BROKEN:
                    stale = True
                if stale:
                    conn.disconnect()
                    conn.connect()
        except BaseException:
            self._idle.put(conn)
            raise
        return conn

    def _new_or_wait(self) -> Any:
        with self._lock:
            create = self._created < self._max
            if create:
                self._created += 1
        if create:
            try:
                # The pool builds it (and lists it, so pool.disconnect() closes it too).
                return self._pool.make_connection()
            except BaseException:
                with self._lock:
                    self._created -= 1
                raise
        try:
            return self._idle.get(timeout=self._timeout)
        except Empty:
            raise redis.ConnectionError("No connection available.") from None

    def _pack(self, conn: Any, command: Sequence[Any]) -> list[bytes]:
        if _hiredis_pack is not None:
            return [_hiredis_pack(tuple(command))]
        return conn.pack_command(*command)  # pragma: no cover

    # -- commands -----------------------------------------------------------

    def _round_trip(self, pack: Callable[[Any], Any], read: Callable[[Any], Any]) -> Any:
        """Send what ``pack(conn)`` builds and return ``read(conn)``; re-send on a fresh socket with ``retries``."""
        conn = self._checkout()
        try:
            packed = pack(conn)
            attempt = 0
            while True:
                try:
                    conn.send_packed_command(packed)
                    return read(conn)
                except BROKEN:
                    conn.disconnect()
                    if attempt >= self._retries:
                        raise
                    attempt += 1
        finally:
            self._idle.put(conn)

    def execute(self, *command: Any, asking: bool = False) -> Any:
        """Send one command and return its reply (an error reply raises)."""
        if asking:
            return raise_errors(self.pipeline([ASKING, command]))[1]
        return self._round_trip(lambda conn: self._pack(conn, command), lambda conn: conn.read_response())

    def probe(self, key: str, ttl_ms: int, asking: bool = False) -> None:
        """Write ``key`` (``ping``'s probe), acknowledged as every write is (``wait_replicas``)."""
        command = ("SET", key, "1", "PX", ttl_ms)
        if not self._replicas:
            self.execute(*command, asking=asking)
            return
        replies = raise_errors(self.pipeline([*((ASKING,) if asking else ()), command, self._wait]))
        self._replicated(replies[-1])

    def shards(self) -> list[Wire]:
        """The wires of every master: this one (administration scans each shard)."""
        return [self]

    @property
    def pool(self) -> redis.BlockingConnectionPool:
        """The pool that builds this wire's connections."""
        return self._pool

    def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send several commands in one round trip; return each reply, or the error it answered with."""

        def pack(conn: Any) -> list[bytes]:
            packed: list[bytes] = []
            for command in commands:
                packed += self._pack(conn, command)
            return packed

        def read(conn: Any) -> list[Any]:
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except ResponseError as exc:  # the connection stays in step
                    replies.append(exc)
            return replies

        return self._round_trip(pack, read)

    def eval(self, script: Script, keys: Sequence[str], args: Sequence[Any], asking: bool = False) -> Any:
        """Run a script with EVALSHA; load it once if Redis does not know it, and run it again."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        if asking or (script.writes and self._replicas):
            return self._eval_pipelined(script, command, (), asking)
        try:
            return self.execute(*command)
        except NoScriptError:
            # Redis restarted or flushed its scripts; nothing ran.
            self.execute("SCRIPT", "LOAD", script.text)
            return self.execute(*command)

    def eval_with(self, script: Script, keys: Sequence[str], args: Sequence[Any],
                  extra: Sequence[Sequence[Any]], asking: bool = False) -> Any:
        """Run a script and pipeline idempotent ``extra`` commands beside it; return the script's reply."""
        return self._eval_pipelined(script, ("EVALSHA", script.sha, len(keys), *keys, *args), extra, asking)

    def _eval_pipelined(self, script: Script, command: Sequence[Any], extra: Sequence[Sequence[Any]],
                        asking: bool) -> Any:
        """The script (after ``ASKING``), ``extra``, then ``WAIT`` for a writing script: one round trip."""
        first = 1 if asking else 0
        waits = script.writes and self._replicas
        commands = [*((ASKING,) if asking else ()), command, *extra, *((self._wait,) if waits else ())]
        for attempt in (1, 2):
            replies = self.pipeline(commands)
            result = replies[first]
            if isinstance(result, NoScriptError) and attempt == 1:
                # Redis restarted, failed over or flushed its scripts; nothing ran.
                self.execute("SCRIPT", "LOAD", script.text)
                continue
            raise_errors(replies)
            if waits:
                self._replicated(replies[-1])
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _replicated(self, acknowledged: Any) -> None:
        if int(acknowledged) < self._replicas:
            raise NotReplicated(f"{acknowledged} of {self._replicas} replicas acknowledged the write in time")

    def close(self) -> None:
        """Close every idle connection (the pool closes the others)."""
        while True:
            try:
                conn = self._idle.get_nowait()
            except Empty:
                break
            conn.disconnect()
        with self._lock:
            self._created = 0


def raise_errors(replies: list[Any]) -> list[Any]:
    """Raise the first error a pipeline answered; else return its replies."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies
