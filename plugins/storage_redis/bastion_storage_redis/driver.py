"""The Redis driver: records and short-lived state, one round trip per call.

Every call is a single command or a single Lua script (see
:mod:`bastion_storage_redis.scripts`), so each is atomic on its own and costs
one round trip; only ``domains`` (administration) takes two. Commands go
through :class:`bastion_storage_redis.wire.Wire` (EVALSHA, hiredis packing,
a lean pool) rather than redis-py's client layer; on a Redis Cluster
(``redis+cluster://``) through :class:`bastion_storage_redis.cluster.ClusterWire`,
the same path to the master of each call's slot. Times to live
follow the injected clock: scripts receive ``now`` and compare it with the
absolute expiry stored beside each value, while a native TTL derived from the
caller's ``ttl`` lets Redis reclaim memory by itself.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis
from redis.exceptions import ClusterDownError, OutOfMemoryError, ReadOnlyError, TryAgainError

from bastion_storage_redis import scripts
from bastion_storage_redis.cluster import ClusterWire
from bastion_storage_redis.keys import Keys
from bastion_storage_redis.settings import (
    CLUSTER_SCHEMES,
    SCHEMES,
    defaults,
    make_cluster_client,
    make_node_pool,
    make_pool,
    parse_cluster_url,
    redact,
    scheme_of,
)
from bastion_storage_redis.tenants import RedisTenants
from bastion_storage_redis.wire import Script, Wire
from kernel.drivers import (
    PAGED_SELECT,
    PROBE_DOMAIN,
    REMOVED_HISTORY_STEP,
    TENANTS,
    Change,
    RecordNotFound,
    RecordVersion,
    Scalar,
    ServiceUnavailable,
    StoredRecord,
    TenantCounts,
    TenantRecord,
    VersionConflict,
    WindowEntry,
    check_change,
    check_json,
    check_scalar,
    check_text,
    dumps_text,
    index_token,
    is_record_id,
    loads_stored,
)

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
            raise ServiceUnavailable("storage unavailable", backend="redis") from exc

    return call  # type: ignore[return-value]


_loads = loads_stored


#: Native TTL of the probe key ping writes.
PROBE_TTL_MS = 10_000


def _ttl_ms(ttl: float) -> int:
    """The native TTL of a ``ttl`` in seconds: whole milliseconds, at least one."""
    return max(1, math.ceil(ttl * 1000))


class RedisDriver:
    """A :class:`kernel.core.driver.Driver` on one Redis server or a Redis Cluster.

    ``url`` is ``redis://[:password@]host:port/db``, ``rediss://...`` (TLS),
    ``unix:///path/to/redis.sock?db=0``, or ``redis+cluster://[:password@]host:port[,host:port...]``
    (``rediss+cluster://`` with TLS); ``options`` overrides keys of the
    ``[storage_redis]`` section (see :data:`bastion_storage_redis.settings.SCHEMA`);
    ``clock`` returns Unix seconds and decides every expiry.
    """

    #: Its data is shared by every process and node using the URL, and outlives them (as Redis keeps it); it
    #: moves whole tenants (``tenants``: a load staged under the tenant's tag, swapped in by one script).
    capabilities = frozenset({"persistent", PAGED_SELECT, TENANTS})

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
        waits = {"wait_replicas": settings["wait_replicas"], "wait_timeout": settings["wait_timeout"]}
        self._pool: redis.BlockingConnectionPool | None = None
        self._redis: redis.Redis | None = None
        self._wire: Wire | ClusterWire
        if scheme_of(url) in CLUSTER_SCHEMES:
            cluster = parse_cluster_url(url)
            self._wire = ClusterWire(lambda: make_cluster_client(cluster, settings),
                                     lambda host, port: make_node_pool(cluster, host, port, settings),
                                     self.label, settings["retries"], **waits)
        else:
            self._pool = make_pool(url, settings)
            # The client is for tests and administration; every driver call goes through the wire.
            self._redis = redis.Redis(connection_pool=self._pool)
            self._wire = Wire(self._pool, settings["retries"], **waits)
        self._get = Script(scripts.GET, writes=False)
        self._get_many = Script(scripts.GET_MANY, writes=False)
        self._set = Script(scripts.SET)
        self._replace = Script(scripts.REPLACE)
        self._add = Script(scripts.ADD)
        self._delete = Script(scripts.DELETE)
        self._incr = Script(scripts.INCR)
        self._window_add = Script(scripts.WINDOW_ADD)
        self._window_entries = Script(scripts.WINDOW_ENTRIES, writes=False)
        self._window_discard = Script(scripts.WINDOW_DISCARD)
        self._select = Script(scripts.SELECT, writes=False)
        self._commit = Script(scripts.COMMIT)
        #: Whole tenants (:class:`bastion_storage_redis.tenants.RedisTenants`).
        self.tenant_store = RedisTenants(self._wire, self.keys, clock)

    @property
    def client(self) -> redis.Redis | redis.RedisCluster:
        """The redis-py client, or cluster client (for tests and administration; calls through it are not translated)."""
        return self._redis if self._redis is not None else self._wire.client  # type: ignore[union-attr]

    def __repr__(self) -> str:
        return f"RedisDriver({self.label!r})"

    # -- records ----------------------------------------------------------

    @_translated
    def fetch(self, domain: str, model: str, id: str) -> StoredRecord | None:
        """Return the record, or None when the domain has no such record (or ``id`` breaks the record-id rule)."""
        if not is_record_id(id):
            return None
        vsn, data = self._wire.execute("HMGET", self.keys.record(domain, model, id), "v", "d")
        if vsn is None:
            return None
        return StoredRecord(model, id, int(vsn), _loads(data))

    @_translated
    def select(self, domain: str, model: str, where: Mapping[str, Scalar] | None = None, *,
               after: str | None = None, limit: int | None = None) -> list[StoredRecord]:
        """Return the model's records whose index entries equal every ``where`` item, oldest first.

        With ``where``, the index sets of its items are intersected on the
        server; without, the creation-ordered set is read. Never a scan. A
        page (``after``, ``limit``: ``paged_select``) without ``where`` is a
        range of the creation order, and only its records are read.
        """
        k = self.keys
        for field, value in (where or {}).items():
            check_scalar(value, f"where {field}")
        index_keys = [k.index(domain, model, field, index_token(value)) for field, value in (where or {}).items()]
        flat = self._wire.eval(self._select, (k.order(domain, model),),
                               (k.record_prefix(domain, model), after or "", limit or 0, *index_keys))
        if flat == 0:
            raise RecordNotFound(f"no {model} with id {after!r}")
        if not flat:
            return []
        # One decode for every record: the stored texts are JSON values written by commit.
        datas = _loads("[" + ",".join(flat[2::3]) + "]")
        return [StoredRecord(model, id, int(vsn), data) for id, vsn, data in zip(flat[::3], flat[1::3], datas, strict=True)]

    @_translated
    def commit(self, domain: str, changes: Sequence[Change]) -> None:
        """Check every change's version and apply them all atomically, or raise VersionConflict and apply none."""
        if not changes:
            return
        for change in changes:
            check_change(change)
        k = self.keys
        args: list[Any] = [k.domain(domain), len(changes)]
        kept: list[Any] = []  # history entries: list key, how many it keeps, the JSON entry
        removals: dict[str, list[Change]] = {}  # deletes that keep history, by model, in the order of the changes
        now = None
        for change in changes:
            index = (change.index or {}) if change.op != "delete" else {}
            index_keys = [k.index_suffix(change.model, field, index_token(value)) for field, value in index.items()]
            data = dumps_text(change.data or {})
            args += [
                change.op,
                k.record(domain, change.model, change.id),
                k.order(domain, change.model),
                change.id,
                change.vsn,
                change.new_vsn,
                data,
                dumps_text(index_keys),
            ]
            if change.history:
                now = self.clock() if now is None else now  # the commit's time, read once
                # The data encoded above goes into the entry as it is, rather than encoded a second time.
                head = dumps_text({"vsn": change.history_vsn, "at": now, "by": change.by})[:-1]
                entry = f'{head},"data":{"null" if change.op == "delete" else data}}}'
                kept += [k.history(domain, change.model, change.id), change.history, entry]
                if change.op == "delete":
                    removals.setdefault(change.model, []).append(change)
        if kept:
            args += [len(kept) // 3, *kept]
        if removals:
            args.append(len(removals))
            for model, removed in removals.items():
                args += [k.removals(domain, model), k.history_prefix(domain, model),
                         min(change.keep_removed for change in removed), len(removed) + REMOVED_HISTORY_STEP,
                         len(removed), *(change.id for change in removed)]
        inserted = sorted({c.model for c in changes if c.op == "insert"})
        if inserted:
            # The registry key lies outside the domain's hash tag, so the script
            # cannot write it on a Cluster: its SADD is pipelined beside the
            # script instead (one round trip). A registration whose commit
            # conflicted is harmless: ``domains`` only reports domains that
            # still hold records.
            conflict = self._wire.eval_with(self._commit, (k.seq(domain),), args,
                                            [("SADD", k.registry(model), domain) for model in inserted])
        else:
            conflict = self._wire.eval(self._commit, (k.seq(domain),), args)
        if conflict:
            change = changes[int(conflict) - 1]
            if change.op == "insert":
                raise VersionConflict(f"{change.model} {change.id!r} already exists")
            raise VersionConflict("record changed")

    @_translated
    def history(self, domain: str, model: str, id: str) -> list[RecordVersion]:
        """Return the kept versions of a record, oldest first: one LRANGE (none for an id that breaks the rule)."""
        if not is_record_id(id):
            return []
        entries = self._wire.execute("LRANGE", self.keys.history(domain, model, id), 0, -1)
        if not entries:
            return []
        return [RecordVersion(**entry) for entry in _loads("[" + ",".join(entries) + "]")]

    @_translated
    def domains(self, model: str) -> list[str]:
        """Return the domains holding records of ``model`` (administration only: names, never data)."""
        candidates = sorted(self._wire.execute("SMEMBERS", self.keys.registry(model)))
        if not candidates:
            return []
        held = self._wire.pipeline([("EXISTS", self.keys.order(domain, model)) for domain in candidates])
        for reply in held:
            if isinstance(reply, Exception):
                raise reply
        return [domain for domain, n in zip(candidates, held, strict=True) if n]

    # -- whole tenants (kernel.core.driver.TenantStore): RedisTenants does the work ------

    @_translated
    def tenants(self) -> dict[str, TenantCounts]:
        return self.tenant_store.tenants()

    @_translated
    def tenant_counts(self, domain: str) -> TenantCounts:
        return self.tenant_store.tenant_counts(domain)

    def tenant_records(self, domain: str, model: str) -> Iterator[TenantRecord]:
        # A generator: the outage translation applies to each page as it is read.
        records = self.tenant_store.tenant_records(domain, model)
        while True:
            try:
                record = self._next(records)
            except StopIteration:
                return
            yield record

    @_translated
    def _next(self, records: Iterator[TenantRecord]) -> TenantRecord:
        return next(records)

    @_translated
    def load_tenant(self, domain: str, records: Iterable[TenantRecord], replace: bool = False) -> int:
        return self.tenant_store.load_tenant(domain, records, replace)

    @_translated
    def delete_tenant(self, domain: str) -> bool:
        return self.tenant_store.delete_tenant(domain)

    # -- short-lived state ------------------------------------------------

    def _state_keys(self, domain: str, key: str) -> tuple[str, str]:
        prefix = self.keys.domain(domain)
        return prefix + "s:" + key, prefix + "w:" + key

    @_translated
    def get(self, domain: str, key: str) -> Any:
        """Return the live value of a key, or None."""
        raw = self._wire.eval(self._get, (self.keys.state(domain, key),), (self.clock(),))
        return None if raw is None else _loads(raw)

    @_translated
    def get_many(self, domain: str, keys: Sequence[str]) -> list[Any]:
        """Return the live values of several keys (None for each absent one), in one round trip.

        One script reads every key; they share the domain's hash tag, so it
        runs on one Cluster slot. No keys: no round trip.
        """
        if not keys:
            return []
        prefix = self.keys.domain(domain) + "s:"
        raws = self._wire.eval(self._get_many, [prefix + key for key in keys], (self.clock(),))
        return [None if raw is None else _loads(raw) for raw in raws]

    @_translated
    def set(self, domain: str, key: str, value: Any, ttl: float) -> None:
        """Store a value that expires ``ttl`` seconds from now."""
        check_json(value)
        self._wire.eval(self._set, self._state_keys(domain, key), (dumps_text(value), self.clock() + ttl, _ttl_ms(ttl)))

    @_translated
    def replace(self, domain: str, key: str, value: Any, ttl: float) -> bool:
        """Store a value only if the key is live; return whether it was stored. Atomic.

        One script checks the stored expiry against ``now`` and writes only a
        live plain key, so a key deleted meanwhile is never brought back.
        """
        check_json(value)
        now = self.clock()
        stored = self._wire.eval(self._replace, (self.keys.state(domain, key),),
                                 (now, dumps_text(value), now + ttl, _ttl_ms(ttl)))
        return bool(stored)

    @_translated
    def add(self, domain: str, key: str, value: Any, ttl: float, if_live: str | None = None) -> bool:
        """Store a value only if the key is absent or expired; return whether it was stored. Atomic.

        With ``if_live``, the same script also checks that this other key of
        the domain (same hash tag) is a live plain key.
        """
        check_json(value)
        now = self.clock()
        keys: tuple[str, ...] = self._state_keys(domain, key)
        if if_live is not None:
            keys = (*keys, self.keys.state(domain, if_live))
        stored = self._wire.eval(self._add, keys, (now, dumps_text(value), now + ttl, _ttl_ms(ttl)))
        return bool(stored)

    @_translated
    def delete(self, domain: str, key: str) -> bool:
        """Remove a key or window; return whether a live one existed."""
        return bool(self._wire.eval(self._delete, self._state_keys(domain, key), (self.clock(),)))

    @_translated
    def incr(self, domain: str, key: str, amount: int, ttl: float) -> int:
        """Add ``amount`` to a counter and return the new value. Atomic; the first increment fixes the expiry."""
        now = self.clock()
        return int(self._wire.eval(self._incr, self._state_keys(domain, key),
                                   (now, int(amount), now + ttl, _ttl_ms(ttl))))

    @_translated
    def window_add(self, domain: str, key: str, member: str, weight: int, ttl: float) -> list[WindowEntry]:
        """Add (or replace) a member expiring ``ttl`` seconds from now; return the live entries, oldest first."""
        check_text(member, "window member")
        now = self.clock()
        flat = self._wire.eval(self._window_add, self._state_keys(domain, key),
                               (now, member, int(weight), now + ttl, _ttl_ms(ttl)))
        return _entries(flat)

    @_translated
    def window_entries(self, domain: str, key: str) -> list[WindowEntry]:
        """Return the live entries of a window, oldest expiry first."""
        return _entries(self._wire.eval(self._window_entries, self._state_keys(domain, key), (self.clock(),)))

    @_translated
    def window_discard(self, domain: str, key: str, member: str) -> bool:
        """Remove one member; return whether it was live."""
        return bool(self._wire.eval(self._window_discard, self._state_keys(domain, key), (self.clock(), member)))

    # -- health -----------------------------------------------------------

    @_translated
    def state_count(self) -> int:
        """How many plain keys and window members the deployment holds (administration: a SCAN of its prefix).

        Keys whose native TTL has passed are skipped (SCAN reclaims them);
        a window's members are counted whatever their logical expiry.
        """
        prefix = self.keys.prefix + ":{"
        total = 0
        for wire in self._wire.shards():  # on a Cluster, each master holds its own slots' keys
            seen: set[str] = set()
            cursor = "0"
            while True:
                cursor, batch = wire.execute("SCAN", cursor, "MATCH", prefix + "*", "COUNT", 1000)
                names = [name for name in batch if name not in seen and _is_state_key(name, len(prefix))]
                seen.update(names)
                if names:
                    kinds = wire.pipeline([("TYPE", name) for name in names])
                    total += sum(kind == "hash" for kind in kinds)
                    windows = [name for name, kind in zip(names, kinds, strict=True) if kind == "zset"]
                    if windows:
                        total += sum(n for n in wire.pipeline([("ZCARD", name) for name in windows]) if isinstance(n, int))
                if str(cursor) == "0":
                    break
        return total

    @_translated
    def ping(self) -> None:
        """Return when Redis accepts a write; raise ServiceUnavailable otherwise.

        The write is a ``SET`` of a probe key with a 10-second native TTL,
        under the deployment's prefix in a domain no tenant can have
        (:data:`kernel.core.driver.PROBE_DOMAIN`): a Redis out of memory, a
        read-only replica or a lost connection fails it. With
        ``wait_replicas``, the probe waits for the replicas as every write
        does; on a Cluster, every master gets a probe.
        """
        self._wire.probe(self.keys.domain(PROBE_DOMAIN) + "ping", PROBE_TTL_MS)

    def close(self) -> None:
        """Close every pooled connection."""
        self._wire.close()
        if self._redis is not None:
            self._redis.close()
            self._pool.disconnect()  # type: ignore[union-attr]


def _is_state_key(name: str, start: int) -> bool:
    """Whether a key of the deployment is a plain state key or a window (``<prefix>:{<domain>}:s:...``)."""
    # Domains are escaped, so the first closing brace ends the hash tag.
    end = name.find("}", start)
    return end >= 0 and name.startswith(":s:", end + 1)


def _entries(flat: list[str]) -> list[WindowEntry]:
    """Decode a script's flat ``member, expiry, weight`` list."""
    return [WindowEntry(flat[i], int(flat[i + 2]), float(flat[i + 1])) for i in range(0, len(flat), 3)]
