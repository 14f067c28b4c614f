"""Whole tenants on Redis and Redis Cluster (the ``tenants`` capability): list, count, stream, load, delete.

Every key of a domain lies under ``<prefix>:{<domain>}:`` (one hash tag, so
one Cluster slot: :mod:`bastion_storage_redis.keys`), so:

* ``tenants`` is one ``SCAN`` of the deployment's prefix on every master
  (each holds its own slots' keys), reading each key's domain from its tag,
  with pipelined ``LLEN`` for history lists and the stored expiry of each
  state key;
* ``tenant_records`` reads a model's creation order (``o:<model>``) a page
  of :data:`PAGE` ids at a time, and each page's records, history lists and
  removal numbers in one pipeline; then the ids whose history is kept without
  a record (a ``SCAN`` of the model's history keys), in id order;
* ``load_tenant`` writes every key **staged** under ``<prefix>:{<domain>}:~``
  (a name no reader ever asks for), listing each staged name first in the
  list ``<prefix>:{<domain>}:~~staged``; then one Lua script (atomic, and
  propagated to replicas and the AOF as one transaction) removes what the
  domain held when replacing it (names listed, by a ``SCAN``, in
  ``...:~~old``) and renames every staged key to its real name. A process
  killed before the script leaves only staged keys, which nothing reads, no
  listing counts, and the next load or deletion of the domain removes; the
  script itself runs whole or not at all. All of it is in the domain's slot;
* ``delete_tenant`` lists the domain's keys (a ``SCAN``) and removes them in
  the same script, at once; and takes the domain out of the registry of
  domains per model (outside every tag).

The ``SCAN`` of a domain's keys reads the whole keyspace of the master that
holds its slot (Redis has no index by tag): these are administration
commands, never on a request's path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from bastion_storage_redis.keys import Keys, unescape
from bastion_storage_redis.wire import Script, Wire, raise_errors
from kernel.drivers import (
    PROBE_DOMAIN,
    RecordVersion,
    TenantCounts,
    TenantRecord,
    VersionConflict,
    check_tenant_record,
    dumps_text,
    index_token,
    loads_stored,
    state_kind,
)

#: Records per page of a stream and per pipeline of a load; keys per SCAN step and per listing push.
PAGE = 500

#: What a staged key's name has after its domain's prefix, before its real suffix.
STAGED = "~"

#: The script that ends a load or a deletion (KEYS: the staged list, the old list, the domain's ``seq``;
#: ARGV: the domain's prefix, the highest creation number loaded). It removes every key listed as old, renames
#: every staged key listed to its real name, raises ``seq`` to the highest number loaded, and drops both lists.
COMMIT_TENANT = """
local step = 1000
local prefix, loaded = ARGV[1], tonumber(ARGV[2])
local removed = 0
local n = redis.call('LLEN', KEYS[2])
for i = 0, n - 1, step do
  for _, name in ipairs(redis.call('LRANGE', KEYS[2], i, i + step - 1)) do
    removed = removed + redis.call('UNLINK', name)
  end
end
local cut = #prefix + 2
n = redis.call('LLEN', KEYS[1])
for i = 0, n - 1, step do
  for _, staged in ipairs(redis.call('LRANGE', KEYS[1], i, i + step - 1)) do
    if redis.call('EXISTS', staged) == 1 then
      redis.call('RENAME', staged, prefix .. string.sub(staged, cut))
    end
  end
end
if loaded > 0 then
  local seq = tonumber(redis.call('GET', KEYS[3]) or '0')
  if seq < loaded then redis.call('SET', KEYS[3], loaded) end
end
redis.call('DEL', KEYS[1], KEYS[2])
return removed
"""

_GLOB = str.maketrans({c: "\\" + c for c in "*?[]\\"})


def glob_escape(text: str) -> str:
    """``text`` as a literal in a SCAN ``MATCH`` pattern."""
    return text.translate(_GLOB)


class RedisTenants:
    """The tenants of the Redis driver (:class:`kernel.core.driver.TenantStore`).

    ``RedisTenants(wire, keys, clock)``: the driver's wire (one server's, or
    the Cluster's), its key names, its clock (what is live).
    """

    def __init__(self, wire: Any, keys: Keys, clock: Callable[[], float]):
        self._wire = wire
        self.keys = keys
        self.clock = clock
        self._commit = Script(COMMIT_TENANT)

    # -- scanning ------------------------------------------------------------

    def _scan(self, match: str) -> Iterator[tuple[Wire, list[str]]]:
        """Every master's keys matching ``match``, a SCAN step at a time (a key may come twice: callers cope)."""
        for wire in self._wire.shards():
            cursor = "0"
            while True:
                cursor, batch = wire.execute("SCAN", cursor, "MATCH", match, "COUNT", 1000)
                if batch:
                    yield wire, batch
                if str(cursor) == "0":
                    break

    def _split(self, name: str) -> tuple[str, str] | None:
        """``(domain, suffix)`` of a key of the deployment's domains; None for another key (or a staged one)."""
        start = len(self.keys.prefix) + 2
        end = name.find("}", start)  # domains are escaped: the first closing brace ends the tag
        if end < 0 or not name.startswith(":", end + 1) or name.startswith(STAGED, end + 2):
            return None
        tag = name[start:end]
        return ("" if tag == "%" else unescape(tag)), name[end + 2:]

    def _census(self, match: str) -> dict[str, TenantCounts]:
        """What each domain whose keys match ``match`` holds: one SCAN, pipelined reads of lengths and expiries."""
        found: dict[str, TenantCounts] = {}
        now = self.clock()
        for wire, batch in self._scan(match):
            seen = {name: parts for name in set(batch) if (parts := self._split(name)) is not None}
            self._count_records(found, seen)
            self._count_history(found, wire, seen)
            self._count_state(found, wire, seen, now)
        found.pop(PROBE_DOMAIN, None)
        return {domain: counts for domain, counts in sorted(found.items()) if not counts.empty}

    @staticmethod
    def _count_records(found: dict[str, TenantCounts], seen: dict[str, tuple[str, str]]) -> None:
        for domain, suffix in seen.values():
            if suffix.startswith("r:"):
                model = unescape(suffix[2:].partition(":")[0])
                counts = found.setdefault(domain, TenantCounts())
                counts.records[model] = counts.records.get(model, 0) + 1

    @staticmethod
    def _count_history(found: dict[str, TenantCounts], wire: Wire, seen: dict[str, tuple[str, str]]) -> None:
        lists = [(name, parts) for name, parts in seen.items() if parts[1].startswith("h:")]
        if not lists:
            return
        lengths = wire.pipeline([("LLEN", name) for name, _ in lists])
        for (_, (domain, suffix)), n in zip(lists, lengths, strict=True):
            if isinstance(n, int) and n:
                model = unescape(suffix[2:].partition(":")[0])
                counts = found.setdefault(domain, TenantCounts())
                counts.history[model] = counts.history.get(model, 0) + n

    @staticmethod
    def _count_state(found: dict[str, TenantCounts], wire: Wire, seen: dict[str, tuple[str, str]],
                     now: float) -> None:
        """Plain keys (a hash whose ``e`` is to come) and windows (a zset with a member to come) that are live."""
        keys = [(name, parts) for name, parts in seen.items() if parts[1].startswith("s:")]
        if not keys:
            return
        kinds = wire.pipeline([("TYPE", name) for name, _ in keys])
        reads = [("HGET", name, "e") if kind == "hash" else ("ZCOUNT", name, f"({now}", "+inf")
                 for (name, _), kind in zip(keys, kinds, strict=True)]
        for (_, (domain, suffix)), reply in zip(keys, wire.pipeline(reads), strict=True):
            live = reply > 0 if isinstance(reply, int) else (isinstance(reply, str) and float(reply) > now)
            if live:
                state = found.setdefault(domain, TenantCounts()).state
                kind = state_kind(suffix[2:])
                state[kind] = state.get(kind, 0) + 1

    def tenants(self) -> dict[str, TenantCounts]:
        """Every domain holding records, history or live state, sorted, with what it holds: one SCAN per master."""
        return self._census(glob_escape(self.keys.prefix + ":{") + "*")

    def tenant_counts(self, domain: str) -> TenantCounts:
        """What one domain holds: a SCAN of its keys."""
        return self._census(self._match(domain)).get(domain, TenantCounts())

    def _match(self, domain: str) -> str:
        return glob_escape(self.keys.domain(domain)) + "*"

    # -- streaming -----------------------------------------------------------

    def tenant_records(self, domain: str, model: str) -> Iterator[TenantRecord]:
        """A page of ids of the creation order at a time, with their records and history; then history only."""
        order, removals = self.keys.order(domain, model), self.keys.removals(domain, model)
        after = "-inf"
        while True:
            flat = self._wire.execute("ZRANGEBYSCORE", order, after, "+inf", "WITHSCORES", "LIMIT", 0, PAGE)
            if not flat:
                break
            pairs = flat if isinstance(flat[0], (list, tuple)) else list(zip(flat[::2], flat[1::2], strict=True))
            ids = [id for id, _ in pairs]
            after = f"({pairs[-1][1]}"
            yield from self._page(domain, model, ids, removals, live=True)
        kept = sorted(self._history_only(domain, model))
        for start in range(0, len(kept), PAGE):
            yield from self._page(domain, model, kept[start:start + PAGE], removals, live=False)

    def _page(self, domain: str, model: str, ids: list[str], removals: str, live: bool) -> Iterator[TenantRecord]:
        """Records (or, not ``live``, history-only ids) with their history and removal numbers: one pipeline."""
        k = self.keys
        commands: list[tuple] = []
        for id in ids:
            if live:
                commands.append(("HMGET", k.record(domain, model, id), "v", "d"))
            commands += [("LRANGE", k.history(domain, model, id), 0, -1), ("ZSCORE", removals, id)]
        replies = raise_errors(self._wire.pipeline(commands))
        width = 3 if live else 2
        for n, id in enumerate(ids):
            reply = replies[n * width:(n + 1) * width]
            if live:
                (vsn, data), entries, removal = reply
                if vsn is None:  # removed since the page was read
                    continue
                vsn, data = int(vsn), loads_stored(data)
            else:
                entries, removal = reply
                vsn, data = 0, None
            history = tuple(RecordVersion(**entry) for entry in loads_stored("[" + ",".join(entries) + "]"))
            yield TenantRecord(model, id, vsn, data, history, None if removal is None else int(float(removal)))

    def _history_only(self, domain: str, model: str) -> set[str]:
        """The ids of ``model`` whose history is kept without a live record."""
        prefix = self.keys.history_prefix(domain, model)
        ids: set[str] = set()
        for _, batch in self._scan(glob_escape(prefix) + "*"):
            candidates = sorted({name[len(prefix):] for name in batch})
            held = raise_errors(self._wire.pipeline([("EXISTS", self.keys.record(domain, model, id))
                                                     for id in candidates]))
            ids.update(id for id, n in zip(candidates, held, strict=True) if not n)
        return ids

    # -- loading and deleting ------------------------------------------------

    def load_tenant(self, domain: str, loaded: Iterable[TenantRecord], replace: bool = False) -> int:
        """Stage every key, then swap them in with one script (see the module's docstring)."""
        prefix = self.keys.domain(domain)
        staged_list, old_list = prefix + STAGED + "~staged", prefix + STAGED + "~old"
        self._discard_staged(staged_list, old_list)
        if not replace and self._holds_data(domain):
            raise VersionConflict(f"{domain} already holds records")
        try:
            count, created = self._stage(domain, loaded, staged_list)
            if replace:
                self._list_keys(domain, old_list)
        except BaseException:
            self._discard_staged(staged_list, old_list)
            raise
        self._wire.eval(self._commit, (staged_list, old_list, self.keys.seq(domain)), (prefix, created))
        return count

    def _holds_data(self, domain: str) -> bool:
        """Whether the domain holds records or history. A domain that never had a record has no creation counter
        (one EXISTS, not a SCAN: loading ten thousand new tenants reads the keyspace no more than once each)."""
        if not self._wire.execute("EXISTS", self.keys.seq(domain)):
            return False
        return self.tenant_counts(domain).holds_data

    def _stage(self, domain: str, loaded: Iterable[TenantRecord], staged_list: str) -> tuple[int, int]:
        """Write every record under staged names, a page per pipeline; return how many, and the last creation
        number given."""
        seen: set[tuple[str, str]] = set()
        models: set[str] = set()
        count = created = 0
        page: list[TenantRecord] = []
        for record in loaded:
            check_tenant_record(record)
            if (record.model, record.id) in seen:
                raise ValueError(f"{record.model} {record.id!r} is given twice")
            seen.add((record.model, record.id))
            page.append(record)
            if len(page) == PAGE:
                created = self._stage_page(domain, page, staged_list, created, models)
                count += len(page)
                page = []
        created = self._stage_page(domain, page, staged_list, created, models)
        if models:  # the registry lies outside the domain's tag; an entry without records is harmless
            raise_errors(self._wire.pipeline([("SADD", self.keys.registry(model), domain) for model in sorted(models)]))
        return count + len(page), created

    def _stage_page(self, domain: str, page: list[TenantRecord], staged_list: str, created: int,
                    models: set[str]) -> int:
        """One pipeline: the staged names listed first, then their keys written (each write may be sent again)."""
        k, prefix = self.keys, self.keys.domain(domain)
        names: dict[str, None] = {}
        writes: list[tuple] = []

        def staged(name: str) -> str:
            name = prefix + STAGED + name[len(prefix):]
            names[name] = None
            return name

        for record in page:
            model, id = record.model, record.id
            if record.data is not None:
                created += 1
                models.add(model)
                suffixes = [k.index_suffix(model, field, index_token(value))
                            for field, value in (record.index or {}).items()]
                writes.append(("HSET", staged(k.record(domain, model, id)), "v", record.vsn,
                               "d", dumps_text(record.data), "x", dumps_text(suffixes)))
                writes.append(("ZADD", staged(k.order(domain, model)), created, id))
                writes += [("SADD", staged(prefix + suffix), id) for suffix in suffixes]
            if record.history:
                name = staged(k.history(domain, model, id))
                writes += [("DEL", name), ("RPUSH", name, *(dumps_text(entry.to_dict()) for entry in record.history))]
            if record.removal is not None:
                writes.append(("ZADD", staged(k.removals(domain, model)), record.removal, id))
        if writes:
            raise_errors(self._wire.pipeline([("RPUSH", staged_list, *names), *writes]))
        return created

    def _list_keys(self, domain: str, old_list: str) -> int:
        """Push the name of every key the domain holds (staged ones aside) to ``old_list``; return how many."""
        prefix = self.keys.domain(domain)
        listed = 0
        for _, batch in self._scan(self._match(domain)):
            names = sorted({name for name in batch if not name.startswith(prefix + STAGED)})
            if names:
                self._wire.execute("RPUSH", old_list, *names)
                listed += len(names)
        return listed

    def _discard_staged(self, staged_list: str, old_list: str) -> None:
        """Remove what an earlier load left staged (it was killed before its script), and both lists."""
        while True:
            names = self._wire.execute("LRANGE", staged_list, 0, PAGE - 1)
            if not names:
                break
            self._wire.execute("UNLINK", *names)
            self._wire.execute("LTRIM", staged_list, len(names), -1)
        self._wire.execute("UNLINK", staged_list, old_list)

    def delete_tenant(self, domain: str) -> bool:
        """List every key of the domain, remove them all in one script, then leave the registry of its models."""
        prefix = self.keys.domain(domain)
        staged_list, old_list = prefix + STAGED + "~staged", prefix + STAGED + "~old"
        self._discard_staged(staged_list, old_list)
        listed = self._list_keys(domain, old_list)
        removed = self._wire.eval(self._commit, (staged_list, old_list, self.keys.seq(domain)), (prefix, 0))
        registries = [name for _, batch in self._scan(glob_escape(self.keys.prefix + ":domains:") + "*")
                      for name in batch]
        if registries:
            raise_errors(self._wire.pipeline([("SREM", name, domain) for name in sorted(set(registries))]))
        return bool(listed and removed)


__all__ = ["COMMIT_TENANT", "PAGE", "RedisTenants", "glob_escape"]
