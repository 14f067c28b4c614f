"""The Redis driver: records and short-lived state, one round trip per call.

Every call is a single command or a single Lua script (see
:mod:`bastion_storage_redis.scripts`), so each is atomic on its own and costs
one round trip; only ``domains`` (administration) takes two. Times to live
follow the injected clock: scripts receive ``now`` and compare it with the
absolute expiry stored beside each value, while a native TTL derived from the
caller's ``ttl`` lets Redis reclaim memory by itself.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis
from redis.exceptions import ClusterDownError, NoScriptError, OutOfMemoryError, ReadOnlyError, TryAgainError

from bastion_storage_redis import scripts
from bastion_storage_redis.keys import Keys
from bastion_storage_redis.settings import SCHEMES, defaults, make_pool, redact, scheme_of
from kernel.driver import Change, Scalar, StoredRecord, WindowEntry, check_json, dumps, index_token
from kernel.errors import ServiceUnavailable, VersionConflict

log = logging.getLogger("bastion.storage_redis")

#: Errors that mean "Redis cannot serve now", as opposed to a bug in a call.
#: ConnectionError covers refused connections, authentication, loading data
#: and an exhausted pool; the response errors are a read-only replica after a
#: failover, a full memory and a cluster in the middle of resharding.
OUTAGES: tuple[type[Exception], ...] = (
    redis.ConnectionError, redis.TimeoutError, ReadOnlyError, OutOfMemoryError, ClusterDownError, TryAgainError,
)

F = TypeVar("F", bound=Callable[..., Any])


def _translated(method: F) -> F:
    """Turn a Redis outage into ServiceUnavailable, with no driver detail in its message."""

    @functools.wraps(method)
    def call(self: RedisDriver, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except OUTAGES as exc:
            # The log names the server (never its password); the error does not.
            log.warning("redis %s unavailable in %s: %s: %s", self.label, method.__name__, type(exc).__name__, exc)
            raise ServiceUnavailable("storage unavailable") from exc

    return call  # type: ignore[return-value]


def _ttl_ms(ttl: float) -> int:
    """The native TTL of a ``ttl`` in seconds: whole milliseconds, at least one."""
    return max(1, math.ceil(ttl * 1000))


class RedisDriver:
    """A :class:`kernel.driver.Driver` on one Redis server (or a Cluster-compatible key layout).

    ``url`` is ``redis://[:password@]host:port/db``, ``rediss://...`` (TLS) or
    ``unix:///path/to/redis.sock?db=0``; ``options`` overrides keys of the
    ``[storage_redis]`` section (see :data:`bastion_storage_redis.settings.SCHEMA`);
    ``clock`` returns Unix seconds and decides every expiry.
    """

    def __init__(self, url: str, clock: Callable[[], float] = time.time, options: Mapping[str, Any] | None = None):
        if scheme_of(url) not in SCHEMES:
            raise ValueError(f"not a Redis URL: {redact(url)!r}; expected one of {', '.join(SCHEMES)}://")
        if scheme_of(url) == "unix" and not urlsplit(url).path:
            raise ValueError(f"invalid Redis URL {redact(url)!r}: a unix:// URL names the socket's path")
        settings = defaults()
        settings.update(options or {})
        self.clock = clock
        self.label = redact(url)
        self.keys = Keys(settings["key_prefix"])
        self._pool = make_pool(url, settings)
        self._redis = redis.Redis(connection_pool=self._pool)
        register = self._redis.register_script
        self._get = register(scripts.GET)
        self._set = register(scripts.SET)
        self._add = register(scripts.ADD)
        self._delete = register(scripts.DELETE)
        self._incr = register(scripts.INCR)
        self._window_add = register(scripts.WINDOW_ADD)
        self._window_entries = register(scripts.WINDOW_ENTRIES)
        self._window_discard = register(scripts.WINDOW_DISCARD)
        self._select = register(scripts.SELECT)
        self._commit = register(scripts.COMMIT)

    @property
    def client(self) -> redis.Redis:
        """The redis-py client (for tests and administration; calls through it are not translated)."""
        return self._redis

    def __repr__(self) -> str:
        return f"RedisDriver({self.label!r})"

    # -- records ----------------------------------------------------------

    @_translated
    def fetch(self, domain: str, model: str, id: str) -> StoredRecord | None:
        """Return the record, or None when the domain has no such record."""
        vsn, data = self._redis.hmget(self.keys.record(domain, model, id), "v", "d")
        if vsn is None:
            return None
        return StoredRecord(model, id, int(vsn), _loads(data))

    @_translated
    def select(self, domain: str, model: str, where: Mapping[str, Scalar] | None = None) -> list[StoredRecord]:
        """Return the model's records whose index entries equal every ``where`` item, oldest first.

        With ``where``, the index sets of its items are intersected on the
        server; without, the creation-ordered set is read. Never a scan.
        """
        k = self.keys
        index_keys = [k.index(domain, model, field, index_token(value)) for field, value in (where or {}).items()]
        flat = self._select(keys=[k.order(domain, model)], args=[k.record_prefix(domain, model), *index_keys])
        return [StoredRecord(model, flat[i], int(flat[i + 1]), _loads(flat[i + 2])) for i in range(0, len(flat), 3)]

    @_translated
    def commit(self, domain: str, changes: Sequence[Change]) -> None:
        """Check every change's version and apply them all atomically, or raise VersionConflict and apply none."""
        if not changes:
            return
        k = self.keys
        args: list[Any] = [k.domain(domain), len(changes)]
        for change in changes:
            check_json(change.data, f"{change.model} {change.id}")
            index = (change.index or {}) if change.op != "delete" else {}
            index_keys = [k.index_suffix(change.model, field, index_token(value)) for field, value in index.items()]
            args += [
                change.op,
                k.record(domain, change.model, change.id),
                k.order(domain, change.model),
                change.id,
                change.vsn,
                change.new_vsn,
                dumps(change.data or {}),
                dumps(index_keys),
            ]
        inserted = sorted({c.model for c in changes if c.op == "insert"})
        if inserted:
            conflict = self._commit_registering(domain, args, inserted)
        else:
            conflict = self._commit(keys=[k.seq(domain)], args=args)
        if conflict:
            change = changes[int(conflict) - 1]
            if change.op == "insert":
                raise VersionConflict(f"{change.model} {change.id!r} already exists")
            raise VersionConflict("record changed")

    def _commit_registering(self, domain: str, args: list[Any], models: list[str]) -> int:
        """Run the commit script and add the domain to each model's registry, in one round trip.

        The registry key lies outside the domain's hash tag, so it cannot be
        written by the script on a Cluster; it is pipelined beside it instead.
        A registration whose commit conflicted is harmless: ``domains`` only
        reports domains that still hold records.
        """
        for attempt in (1, 2):
            pipe = self._redis.pipeline(transaction=False)
            pipe.evalsha(self._commit.sha, 1, self.keys.seq(domain), *args)
            for model in models:
                pipe.sadd(self.keys.registry(model), domain)
            result = pipe.execute(raise_on_error=False)[0]
            if isinstance(result, NoScriptError) and attempt == 1:
                # Redis restarted or flushed its script cache; nothing ran, so run again.
                self._commit.sha = self._redis.script_load(scripts.COMMIT)
                continue
            if isinstance(result, Exception):
                raise result
            return int(result)
        raise AssertionError("unreachable")  # pragma: no cover

    @_translated
    def domains(self, model: str) -> list[str]:
        """Return the domains holding records of ``model`` (administration only: names, never data)."""
        candidates = sorted(self._redis.smembers(self.keys.registry(model)))
        if not candidates:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for domain in candidates:
            pipe.exists(self.keys.order(domain, model))
        return [domain for domain, held in zip(candidates, pipe.execute(), strict=True) if held]

    # -- short-lived state ------------------------------------------------

    def _state_keys(self, domain: str, key: str) -> list[str]:
        return [self.keys.state(domain, key), self.keys.weights(domain, key)]

    @_translated
    def get(self, domain: str, key: str) -> Any:
        """Return the live value of a key, or None."""
        raw = self._get(keys=[self.keys.state(domain, key)], args=[self.clock()])
        return None if raw is None else _loads(raw)

    @_translated
    def set(self, domain: str, key: str, value: Any, ttl: float) -> None:
        """Store a value that expires ``ttl`` seconds from now."""
        check_json(value)
        self._set(keys=self._state_keys(domain, key), args=[dumps(value), self.clock() + ttl, _ttl_ms(ttl)])

    @_translated
    def add(self, domain: str, key: str, value: Any, ttl: float) -> bool:
        """Store a value only if the key is absent or expired; return whether it was stored. Atomic."""
        check_json(value)
        now = self.clock()
        stored = self._add(keys=self._state_keys(domain, key), args=[now, dumps(value), now + ttl, _ttl_ms(ttl)])
        return bool(stored)

    @_translated
    def delete(self, domain: str, key: str) -> bool:
        """Remove a key or window; return whether a live one existed."""
        return bool(self._delete(keys=self._state_keys(domain, key), args=[self.clock()]))

    @_translated
    def incr(self, domain: str, key: str, amount: int, ttl: float) -> int:
        """Add ``amount`` to a counter and return the new value. Atomic; the first increment fixes the expiry."""
        now = self.clock()
        return int(self._incr(keys=self._state_keys(domain, key), args=[now, int(amount), now + ttl, _ttl_ms(ttl)]))

    @_translated
    def window_add(self, domain: str, key: str, member: str, weight: int, ttl: float) -> list[WindowEntry]:
        """Add (or replace) a member expiring ``ttl`` seconds from now; return the live entries, oldest first."""
        now = self.clock()
        flat = self._window_add(keys=self._state_keys(domain, key),
                                args=[now, member, int(weight), now + ttl, _ttl_ms(ttl)])
        return _entries(flat)

    @_translated
    def window_entries(self, domain: str, key: str) -> list[WindowEntry]:
        """Return the live entries of a window, oldest expiry first."""
        return _entries(self._window_entries(keys=self._state_keys(domain, key), args=[self.clock()]))

    @_translated
    def window_discard(self, domain: str, key: str, member: str) -> bool:
        """Remove one member; return whether it was live."""
        return bool(self._window_discard(keys=self._state_keys(domain, key), args=[self.clock(), member]))

    # -- health -----------------------------------------------------------

    @_translated
    def ping(self) -> None:
        """Return when Redis answers; raise ServiceUnavailable otherwise."""
        self._redis.ping()

    def close(self) -> None:
        """Close every pooled connection."""
        self._redis.close()
        self._pool.disconnect()


def _loads(text: str) -> Any:
    return json.loads(text)


def _entries(flat: list[str]) -> list[WindowEntry]:
    """Decode a script's flat ``member, expiry, weight`` list."""
    return [WindowEntry(flat[i], int(flat[i + 2]), float(flat[i + 1])) for i in range(0, len(flat), 3)]
