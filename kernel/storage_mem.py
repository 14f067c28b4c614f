"""The kernel's in-process storage driver for ``mem://``: thread-safe, versions enforced, nothing persisted.

It ships with the kernel's distribution (``bastion``), so that Bastion alone
can run ``bastion check`` and ``bastion serve`` on its default storage, and is
registered as the plugin ``storage_mem``, like a third-party driver, by
:data:`kernel.core.plugins.DEFAULT_PLUGINS`: it answers ``bastion_storage_driver``
for ``mem://`` and nothing else. It is written against what the driver
author's facade, :mod:`kernel.drivers`, offers (imported here from the core
modules behind it, as every kernel module does), and driver authors get it
there as ``MemoryDriver``.

Every worker process has its own memory, so gunicorn runs a single worker
process for ``mem://`` (threads are fine). Use it for the tutorial and tests.

Expired state is reclaimed amortised over the writes: a heap holds at most
one entry per key, at the time to look at it again; each write pops a few
entries that are due, dropping what has expired and pushing a key whose
expiry has moved later back at its new time. Memory stays bounded by what is
live, with no full scan on any call.

History is a list per record. The removals of each model in each domain are
numbered in a dictionary kept in removal order (a record removed again moves
to its end); the commit that removes drops the histories of the first ones
its bound leaves out, a few at most, so a domain that adds and removes
records in a loop holds a bounded number of removed histories.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from kernel.core.driver import (
    PAGED_SELECT,
    PROBE_DOMAIN,
    REMOVED_HISTORY_STEP,
    TENANTS,
    Change,
    RecordVersion,
    Scalar,
    StoredRecord,
    TenantCounts,
    TenantRecord,
    WindowEntry,
    check_change,
    check_json,
    check_tenant_record,
    check_text,
    index_token,
    is_record_id,
    state_kind,
)
from kernel.core.errors import RecordNotFound, VersionConflict
from kernel.core.hookspecs import hookimpl
from kernel.core.jsonio import dumps_text, loads_stored, loads_stored_all
from kernel.core.runtime import PROCESS_LOCAL
from kernel.core.urls import StorageURL

#: Most due heap entries one write examines: more than a write can add, so reclamation keeps up.
RECLAIM_STEP = 16


class _Row:
    # ``data`` is kept as JSON text: reading it back makes the caller's own copy.
    __slots__ = ("seq", "vsn", "data", "index")

    def __init__(self, seq: int, vsn: int, data: str, index: dict[str, str]):
        self.seq, self.vsn, self.data, self.index = seq, vsn, data, index


class MemoryDriver:
    """Records and short-lived state in dictionaries, behind one lock."""

    #: Its data lives in this process only: gunicorn serves it with one worker process. It counts live keys
    #: by prefix in one pass over its dictionary (``count_live``), reads one page of a select (``paged_select``)
    #: and moves whole tenants (``tenants``: one pass over its dictionaries, a load swapped in under the lock).
    capabilities = frozenset({PROCESS_LOCAL, "count_live", PAGED_SELECT, TENANTS})

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self._lock = threading.RLock()
        self._seq = itertools.count(1)
        # (domain, model) -> id -> row; dicts keep creation order
        self._records: dict[tuple[str, str], dict[str, _Row]] = {}
        # (domain, model) -> its ids in creation order and each one's place: made by a paged select, dropped
        # by a commit that inserts or deletes one of its records (an update keeps the order).
        self._places: dict[tuple[str, str], tuple[list[str], dict[str, int]]] = {}
        # (domain, model, field, token) -> ids
        self._index: dict[tuple[str, str, str, str], dict[str, None]] = {}
        # (domain, model, id) -> the record's kept versions, oldest first: (JSON text, whether it is a deletion)
        self._history: dict[tuple[str, str, str], list[tuple[str, bool]]] = {}
        # (domain, model) -> removed id -> the number of its latest removal; in that order, oldest first
        self._removals: dict[tuple[str, str], dict[str, int]] = {}
        # (domain, key) -> (value, expires) or {member: (weight, expires)}
        self._state: dict[tuple[str, str], Any] = {}
        # (when, (domain, key)): when to look at a key again; at most one entry per key,
        # the one whose time ``_queued`` holds.
        self._expiries: list[tuple[float, tuple[str, str]]] = []
        self._queued: dict[tuple[str, str], float] = {}

    # -- records ----------------------------------------------------------

    def fetch(self, domain: str, model: str, id: str) -> StoredRecord | None:
        if not is_record_id(id):
            return None
        with self._lock:
            row = self._records.get((domain, model), {}).get(id)
        # Rows are replaced by commits, never changed in place: copying outside the lock is safe.
        return None if row is None else StoredRecord(model, id, row.vsn, loads_stored(row.data))

    def select(self, domain: str, model: str, where: Mapping[str, Scalar] | None = None, *,
               after: str | None = None, limit: int | None = None) -> list[StoredRecord]:
        with self._lock:
            rows = self._records.get((domain, model), {})
            if after is not None and after not in rows:
                raise RecordNotFound(f"no {model} with id {after!r}")
            if where:
                sets = [self._index.get((domain, model, f, index_token(v)), {}) for f, v in where.items()]
                smallest = min(sets, key=len)
                ids = [i for i in smallest if all(i in s for s in sets)]
                picked: Iterable[tuple[str, _Row]] = sorted(((i, rows[i]) for i in ids), key=lambda pair: pair[1].seq)
                if after is not None:
                    start = rows[after].seq
                    picked = itertools.dropwhile(lambda pair: pair[1].seq <= start, picked)
            elif after is not None:
                ids, place = self._places_of(domain, model, rows)
                start = place[after] + 1
                picked = [(i, rows[i]) for i in ids[start:None if limit is None else start + limit]]
            else:
                picked = rows.items()
            # Only the page's rows are decoded, outside the lock (rows are replaced, never changed in place).
            picked = list(picked if limit is None else itertools.islice(picked, limit))
        datas = loads_stored_all([row.data for _, row in picked])
        return [StoredRecord(model, i, row.vsn, data) for (i, row), data in zip(picked, datas, strict=True)]

    def _places_of(self, domain: str, model: str, rows: dict[str, _Row]) -> tuple[list[str], dict[str, int]]:
        """A model's ids in creation order, and each one's place in them (under the lock; kept until a commit
        inserts or deletes one): a page after a record is a slice, whatever the domain holds."""
        places = self._places.get((domain, model))
        if places is None:
            ids = list(rows)  # dicts keep creation order: an update keeps a row's place, a new row goes last
            places = self._places[(domain, model)] = (ids, {id: n for n, id in enumerate(ids)})
        return places

    def commit(self, domain: str, changes: Sequence[Change]) -> None:
        for change in changes:
            check_change(change)
        with self._lock:
            for change in changes:
                row = self._records.get((domain, change.model), {}).get(change.id)
                if change.op == "insert":
                    if row is not None:
                        raise VersionConflict(f"{change.model} {change.id!r} already exists")
                elif row is None or row.vsn != change.vsn:
                    raise VersionConflict("record changed")
            now = None  # the commit's time, read once if some change keeps history
            removals: dict[str, list[Change]] = {}  # by model, in the order of the changes
            for change in changes:
                if change.history:
                    now = self.clock() if now is None else now
                    self._keep(domain, change, now)
                    if change.op == "delete":
                        removals.setdefault(change.model, []).append(change)
                table = self._records.setdefault((domain, change.model), {})
                old = table.get(change.id)
                if old is not None:
                    self._unindex(domain, change.model, change.id, old.index)
                if old is None or change.op == "delete":
                    self._places.pop((domain, change.model), None)  # the creation order changes
                if change.op == "delete":
                    del table[change.id]
                    continue
                tokens = {f: index_token(v) for f, v in (change.index or {}).items()}
                seq = old.seq if old is not None else next(self._seq)
                table[change.id] = _Row(seq, change.new_vsn, dumps_text(change.data or {}), tokens)
                for field, token in tokens.items():
                    self._index.setdefault((domain, change.model, field, token), {})[change.id] = None
            for model, removed in removals.items():
                self._count_removals(domain, model, removed)

    def _keep(self, domain: str, change: Change, now: float) -> None:
        """Append a change to its record's history and drop what is beyond its limit (under the lock)."""
        deletion = change.op == "delete"
        entry = {"vsn": change.history_vsn, "at": now, "by": change.by, "data": None if deletion else change.data}
        versions = self._history.setdefault((domain, change.model, change.id), [])
        versions.append((dumps_text(entry), deletion))
        if len(versions) > change.history:
            del versions[:len(versions) - change.history]

    def _count_removals(self, domain: str, model: str, removed: list[Change]) -> None:
        """Number a commit's removals of ``model`` after the domain's earlier ones, then drop the histories
        their bound leaves out (under the lock, after the commit's writes)."""
        order = self._removals.setdefault((domain, model), {})
        last = next(reversed(order.values()), 0)
        for change in removed:
            last += 1
            order.pop(change.id, None)  # a record removed again counts from its latest removal
            order[change.id] = last
        self._drop_removed(domain, model, order, last - min(change.keep_removed for change in removed),
                           len(removed) + REMOVED_HISTORY_STEP)
        if not order:
            del self._removals[(domain, model)]

    def _drop_removed(self, domain: str, model: str, order: dict[str, int], last_dropped: int, most: int) -> None:
        """Drop the removed histories of the oldest removals numbered up to ``last_dropped``, at most ``most``:
        each record's entries up to its last deletion (all of them, unless it was inserted again since)."""
        while most and order:
            id, number = next(iter(order.items()))
            if number > last_dropped:
                return
            most -= 1
            del order[id]
            key = (domain, model, id)
            versions = self._history.get(key, [])
            ends = [n for n, (_, deletion) in enumerate(versions) if deletion]
            if ends:
                del versions[:ends[-1] + 1]
            if not versions:
                self._history.pop(key, None)

    def history(self, domain: str, model: str, id: str) -> list[RecordVersion]:
        if not is_record_id(id):
            return []
        with self._lock:
            versions = list(self._history.get((domain, model, id), ()))
        return [RecordVersion(**loads_stored(text)) for text, _ in versions]

    def domains(self, model: str) -> list[str]:
        with self._lock:
            return sorted(d for (d, m), rows in self._records.items() if m == model and rows)

    def _unindex(self, domain: str, model: str, id: str, tokens: dict[str, str]) -> None:
        for field, token in tokens.items():
            ids = self._index.get((domain, model, field, token))
            if ids is not None:
                ids.pop(id, None)
                if not ids:
                    del self._index[(domain, model, field, token)]

    # -- short-lived state ------------------------------------------------

    def _live(self, domain: str, key: str, now: float) -> Any:
        entry = self._state.get((domain, key))
        if entry is None:
            return None
        if isinstance(entry, dict):
            for member in [m for m, (_, exp) in entry.items() if exp <= now]:
                del entry[member]
            if not entry:
                del self._state[(domain, key)]
                return None
            return entry
        if entry[1] <= now:
            del self._state[(domain, key)]
            return None
        return entry

    def _put(self, domain: str, key: str, encoded: str, expires: float, now: float) -> None:
        """Store a plain value (under the lock), schedule its reclamation and reclaim a few due keys."""
        skey = (domain, key)
        self._state[skey] = (encoded, expires)
        self._schedule(skey, expires)
        self._reclaim(now)

    def _schedule(self, skey: tuple[str, str], when: float) -> None:
        # A key already queued keeps its entry: if its expiry moved later, the
        # entry is pushed again at the new time when it comes up (lazily).
        if skey not in self._queued:
            self._queued[skey] = when
            heapq.heappush(self._expiries, (when, skey))

    def _reclaim(self, now: float, budget: int = RECLAIM_STEP) -> None:
        """Look at up to ``budget`` keys whose time has come: drop what expired, re-queue what lives on."""
        heap, queued, state = self._expiries, self._queued, self._state
        while budget and heap and heap[0][0] <= now:
            budget -= 1
            _, skey = heapq.heappop(heap)
            del queued[skey]
            entry = state.get(skey)
            if entry is None:
                continue
            if isinstance(entry, dict):
                for member in [m for m, (_, exp) in entry.items() if exp <= now]:
                    del entry[member]
                if entry:
                    self._schedule(skey, min(exp for _, exp in entry.values()))
                else:
                    del state[skey]
            elif entry[1] <= now:
                del state[skey]
            else:
                self._schedule(skey, entry[1])

    def get(self, domain: str, key: str) -> Any:
        with self._lock:
            entry = self._live(domain, key, self.clock())
            if entry is None or isinstance(entry, dict):
                return None
            return loads_stored(entry[0])

    def get_many(self, domain: str, keys: Sequence[str]) -> list[Any]:
        with self._lock:
            now = self.clock()
            entries = [self._live(domain, key, now) for key in keys]
        return [None if e is None or isinstance(e, dict) else loads_stored(e[0]) for e in entries]

    def replace(self, domain: str, key: str, value: Any, ttl: float) -> bool:
        check_json(value)
        encoded = dumps_text(value)
        with self._lock:
            now = self.clock()
            entry = self._live(domain, key, now)
            if entry is None or isinstance(entry, dict):
                return False
            self._put(domain, key, encoded, now + ttl, now)
            return True

    def set(self, domain: str, key: str, value: Any, ttl: float) -> None:
        check_json(value)
        encoded = dumps_text(value)
        with self._lock:
            now = self.clock()
            self._put(domain, key, encoded, now + ttl, now)

    def add(self, domain: str, key: str, value: Any, ttl: float, if_live: str | None = None) -> bool:
        check_json(value)
        encoded = dumps_text(value)
        with self._lock:
            now = self.clock()
            if if_live is not None:
                guard = self._live(domain, if_live, now)
                if guard is None or isinstance(guard, dict):
                    return False
            if self._live(domain, key, now) is not None:
                return False
            self._put(domain, key, encoded, now + ttl, now)
            return True

    def delete(self, domain: str, key: str) -> bool:
        with self._lock:
            live = self._live(domain, key, self.clock()) is not None
            self._state.pop((domain, key), None)
            return live

    def incr(self, domain: str, key: str, amount: int, ttl: float) -> int:
        with self._lock:
            now = self.clock()
            entry = self._live(domain, key, now)
            current = loads_stored(entry[0]) if entry is not None and not isinstance(entry, dict) else None
            if not isinstance(current, int) or isinstance(current, bool):
                current, expires = 0, now + ttl
            else:
                expires = entry[1]
            value = current + amount
            self._put(domain, key, dumps_text(value), expires, now)
            return value

    def window_add(self, domain: str, key: str, member: str, weight: int, ttl: float) -> list[WindowEntry]:
        check_text(member, "window member")
        with self._lock:
            now = self.clock()
            entry = self._live(domain, key, now)
            if not isinstance(entry, dict):
                entry = {}
                self._state[(domain, key)] = entry
            entry[member] = (weight, now + ttl)
            self._schedule((domain, key), now + ttl)
            self._reclaim(now)
            return self._entries(entry)

    def window_entries(self, domain: str, key: str) -> list[WindowEntry]:
        with self._lock:
            entry = self._live(domain, key, self.clock())
            return self._entries(entry) if isinstance(entry, dict) else []

    def window_discard(self, domain: str, key: str, member: str) -> bool:
        with self._lock:
            entry = self._live(domain, key, self.clock())
            if not isinstance(entry, dict) or member not in entry:
                return False
            del entry[member]
            if not entry:
                del self._state[(domain, key)]
            return True

    def state_count(self) -> int:
        """How many plain keys and window members are held, live or awaiting reclamation."""
        with self._lock:
            return sum(len(entry) if isinstance(entry, dict) else 1 for entry in self._state.values())

    def count_live(self, prefix: str) -> int:
        """How many live plain keys start with ``prefix``, in every domain (one pass over the keys)."""
        now = self.clock()
        with self._lock:
            return sum(1 for (domain, key), entry in self._state.items()
                       if key.startswith(prefix) and domain != PROBE_DOMAIN and isinstance(entry, tuple)
                       and entry[1] > now)

    @staticmethod
    def _entries(entry: dict) -> list[WindowEntry]:
        return sorted((WindowEntry(m, w, e) for m, (w, e) in entry.items()), key=lambda x: (x.expires, x.member))

    # -- whole tenants (TENANTS) ------------------------------------------

    def tenants(self) -> dict[str, TenantCounts]:
        """Every domain holding records, kept history or live state, with what it holds (one pass)."""
        found: dict[str, TenantCounts] = {}
        now = self.clock()
        with self._lock:
            for (domain, model), rows in self._records.items():
                if rows:
                    found.setdefault(domain, TenantCounts()).records[model] = len(rows)
            for (domain, model, _), versions in self._history.items():
                if versions:
                    _add(found.setdefault(domain, TenantCounts()).history, model, len(versions))
            for (domain, key) in list(self._state):
                if self._live(domain, key, now) is not None:
                    _add(found.setdefault(domain, TenantCounts()).state, state_kind(key), 1)
        found.pop(PROBE_DOMAIN, None)
        return dict(sorted(found.items()))

    def tenant_counts(self, domain: str) -> TenantCounts:
        """Live records and history entries per model, live state keys per kind."""
        counts = TenantCounts()
        now = self.clock()
        with self._lock:
            for (d, model), rows in self._records.items():
                if d == domain and rows:
                    counts.records[model] = len(rows)
            for (d, model, _), versions in self._history.items():
                if d == domain and versions:
                    _add(counts.history, model, len(versions))
            for (d, key) in [skey for skey in self._state if skey[0] == domain]:
                if self._live(d, key, now) is not None:
                    _add(counts.state, state_kind(key), 1)
        return counts

    def tenant_records(self, domain: str, model: str) -> Iterator[TenantRecord]:
        """The model's records in creation order with their history, then the ids holding only history."""
        with self._lock:  # a snapshot of references: rows and history lists are replaced, never changed in place
            rows = [(id, row.vsn, row.data) for id, row in self._records.get((domain, model), {}).items()]
            kept = {id: list(versions) for (d, m, id), versions in self._history.items()
                    if d == domain and m == model and versions}
            removals = dict(self._removals.get((domain, model), {}))
        for id, vsn, data in rows:
            yield TenantRecord(model, id, vsn, loads_stored(data), _versions(kept.pop(id, ())), removals.get(id))
        for id in sorted(kept):
            yield TenantRecord(model, id, 0, None, _versions(kept[id]), removals.get(id))

    def load_tenant(self, domain: str, records: Iterable[TenantRecord], replace: bool = False) -> int:
        """Check and gather every record first, then swap them in under the lock: all of them or none."""
        staged: list[TenantRecord] = []
        seen: set[tuple[str, str]] = set()
        for record in records:
            check_tenant_record(record)
            if (record.model, record.id) in seen:
                raise ValueError(f"{record.model} {record.id!r} is given twice")
            seen.add((record.model, record.id))
            staged.append(record)
        with self._lock:
            if not replace and self._holds_data(domain):
                raise VersionConflict(f"{domain} already holds records")
            self._drop_domain(domain, state=replace)
            removals: dict[str, list[tuple[int, str]]] = {}
            for record in staged:
                self._load(domain, record)
                if record.removal is not None:
                    removals.setdefault(record.model, []).append((record.removal, record.id))
            for model, numbered in removals.items():
                self._removals[(domain, model)] = {id: n for n, id in sorted(numbered)}
        return len(staged)

    def _load(self, domain: str, record: TenantRecord) -> None:
        """Write one loaded record, its index entries and its history (under the lock)."""
        model, id = record.model, record.id
        if record.history:
            self._history[(domain, model, id)] = [(dumps_text(entry.to_dict()), entry.data is None)
                                                  for entry in record.history]
        if record.data is None:
            return
        tokens = {f: index_token(v) for f, v in (record.index or {}).items()}
        self._records.setdefault((domain, model), {})[id] = _Row(next(self._seq), record.vsn, dumps_text(record.data),
                                                                 tokens)
        self._places.pop((domain, model), None)
        for field, token in tokens.items():
            self._index.setdefault((domain, model, field, token), {})[id] = None

    def _holds_data(self, domain: str) -> bool:
        """Whether the domain holds records or kept history (under the lock)."""
        return (any(d == domain and rows for (d, _), rows in self._records.items())
                or any(d == domain and versions for (d, _, _), versions in self._history.items()))

    def _drop_domain(self, domain: str, state: bool = True) -> bool:
        """Forget every record, index entry, history, removal number (and, with ``state``, state key) of the
        domain (under the lock); return whether it held any."""
        held = False
        for table in (self._records, self._places, self._index, self._history, self._removals,
                      *((self._state,) if state else ())):
            for key in [key for key in table if key[0] == domain]:
                held = held or bool(table[key])
                del table[key]
        return held

    def delete_tenant(self, domain: str) -> bool:
        """Forget everything the domain holds, in one step under the lock."""
        with self._lock:
            return self._drop_domain(domain)

    # -- health -----------------------------------------------------------

    def ping(self) -> None:
        """Write and remove a probe entry: memory always takes writes, but the path is the same as elsewhere."""
        with self._lock:
            self._state[(PROBE_DOMAIN, "ping")] = ("1", self.clock())
            del self._state[(PROBE_DOMAIN, "ping")]

    def close(self) -> None:
        return None


def _add(counts: dict[str, int], name: str, n: int) -> None:
    counts[name] = counts.get(name, 0) + n


def _versions(kept: Iterable[tuple[str, bool]]) -> tuple[RecordVersion, ...]:
    """Kept history entries, as stored (JSON text), back to versions."""
    return tuple(RecordVersion(**loads_stored(text)) for text, _ in kept)


@hookimpl
def bastion_storage_driver(url: StorageURL, clock):
    """Open a :class:`MemoryDriver` for ``mem://`` URLs."""
    if StorageURL(url).scheme == "mem":
        return MemoryDriver(clock=clock)
    return None
