"""Short-lived state: keys with a time to live, counters and windows, all on the driver's clock.

Every expiry is stored as an absolute time from the driver's clock and
compared with it, never with the database's own time, so a test clock moves
expiry without sleeping. An expired row counts as absent; rows are purged a
bounded batch at a time through the expiry indexes, never by a full scan.
Each process purges after every ``PURGE_EVERY`` state writes, or when
``PURGE_INTERVAL`` seconds have passed, and again at its next write whenever a
purge deleted a full batch: the tables stay bounded by what is live, however
long the load lasts, without a DELETE on every write.

Statements are compiled once, when the driver opens
(``SqlState._build_statements``), and run by the executor it is given
(:mod:`.executor`). Round trips per call, PostgreSQL: one for get, get_many,
set, replace, add, incr, delete, window_entries, window_discard and ping
(each a single statement in autocommit mode); window_add is a transaction.
SQLite has no round trips; its single statements run in autocommit mode too,
window_add within BEGIN IMMEDIATE ... COMMIT.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from bastion_storage_sql.executor import READ, STATEMENT, TRANSACTION, SqlExecutor
from bastion_storage_sql.schema import state, windows
from bastion_storage_sql.sql import Sql, all_rows, first_row, row_count
from kernel import PROBE_DOMAIN, ServiceUnavailable, WindowEntry, check_json, check_text, dumps_text, loads_stored

#: Seconds of the driver's clock after which one process purges expired state at its next write.
PURGE_INTERVAL = 60.0

#: State writes of one process after which it purges, whatever the clock says.
PURGE_EVERY = 100

#: Most rows of each table one purge deletes: a purge stays one short transaction.
#: A purge that deletes a full batch of either table is followed by another at the next write.
PURGE_BATCH = 1000

_BIGINT = range(-(2**63), 2**63)


#: Most distinct key counts of get_many whose statement is kept compiled.
MAX_COMPILED_COUNTS = 64


def _columns(value: Any, values: dict[str, Any]) -> dict[str, Any]:
    """Split a JSON value into the ``v`` and ``n`` parameters: integers live in ``n``, so SQL can add to them."""
    if type(value) is int and value in _BIGINT:
        values["v"], values["n"] = None, value
    else:
        values["v"], values["n"] = dumps_text(value), None
    return values


def _load(value: str | None, n: int | None) -> Any:
    return n if value is None else loads_stored(value)


_p = sa.bindparam


def _lock_key(domain: str, key: str) -> int:
    digest = hashlib.blake2b(f"{domain}\x00{key}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class SqlState:
    """The short-lived state of the SQL driver (:class:`kernel.core.driver.StateStore`), and its health probe:
    ``SqlState(executor, clock)``.

    It builds the statements and says what each call runs; the
    :class:`~bastion_storage_sql.executor.SqlExecutor` it is given runs them
    (connections, retries, the write gate), and may serve a record store too.
    Every expiry is a time of ``clock``.

    Plain keys and windows share one namespace: ``set`` and ``window_add``
    replace a key of the other kind, ``delete`` removes either. ``get``,
    ``get_many``, ``add``, ``replace`` and ``incr`` only ever read or write the
    keys' table.
    """

    def __init__(self, executor: SqlExecutor, clock: Callable[[], float] = time.time):
        self.clock = clock
        self._executor = executor
        self._run = executor.run
        self._compile = executor.compile
        self._postgresql = executor.postgresql
        self._purge_lock = threading.Lock()
        self._next_purge = float("-inf")
        self._writes_since_purge = 0
        self._probes = itertools.count(1)
        self._build_statements(executor)

    def _build_statements(self, executor: SqlExecutor) -> None:
        insert_into = executor.insert
        c, w = state.c, windows.c
        key_is = sa.and_(c.domain == _p("d"), c.key == _p("k"))
        window_is = sa.and_(w.domain == _p("d"), w.key == _p("k"))
        compile_ = self._compile
        self._get_sql = compile_(sa.select(c.value, c.n).where(key_is, c.expires > _p("now")))
        self._get_many_sql: dict[int, Sql] = {}

        insert = insert_into(state).values(domain=_p("d"), key=_p("k"), value=_p("v"), n=_p("n"), expires=_p("e"))
        overwrite = {"value": insert.excluded.value, "n": insert.excluded.n, "expires": insert.excluded.expires}
        upsert = insert.on_conflict_do_update(index_elements=[c.domain, c.key], set_=overwrite)
        drop_window = windows.delete().where(window_is)
        if self._postgresql:
            # One statement: the upsert and the removal of a window of that name.
            self._set_sql: tuple[Sql, ...] = (compile_(upsert.add_cte(drop_window.cte("dropped_window"))),)
        else:
            self._set_sql = (compile_(upsert), compile_(drop_window))
        # Insert, or take over the row only if it has expired. Whether it was stored is the statement's
        # rowcount: sqlite3 and psycopg both count the row an upsert inserted or took over (1), and none when
        # the conflict's WHERE kept the live row (0). Not RETURNING: on SQLite it makes the statement gather its
        # rows in a temporary table first (~15 µs of every call's nonce; docs/benchmarks.md, "the run of 2026-12-07 23:30").
        self._add_sql = compile_(insert.on_conflict_do_update(
            index_elements=[c.domain, c.key], set_=overwrite, where=c.expires <= _p("now")))
        # The same, only while the guard key is live: one INSERT ... SELECT ... WHERE EXISTS,
        # so that the guard is read and the row written in one atomic statement. (The
        # WHERE also keeps SQLite from reading ON CONFLICT as a join's ON.)
        guard = state.alias("guard")
        guard_is_live = sa.exists().where(guard.c.domain == _p("d"), guard.c.key == _p("g"), guard.c.expires > _p("now"))
        row = sa.select(_p("d", type_=sa.String), _p("k", type_=sa.String), _p("v", type_=sa.Text),
                        _p("n", type_=sa.BigInteger), _p("e", type_=sa.Double)).where(guard_is_live)
        guarded = insert_into(state).from_select([c.domain, c.key, c.value, c.n, c.expires], row)
        self._add_if_live_sql = compile_(guarded.on_conflict_do_update(
            index_elements=[c.domain, c.key],
            set_={"value": guarded.excluded.value, "n": guarded.excluded.n, "expires": guarded.excluded.expires},
            where=c.expires <= _p("now")))
        # Set-if-live in one statement: a concurrent delete wins (the row is gone).
        self._replace_sql = compile_(state.update().where(key_is, c.expires > _p("now"))
                                     .values(value=_p("v"), n=_p("n"), expires=_p("e")))
        counter = insert_into(state).values(domain=_p("d"), key=_p("k"), value=None, n=_p("n"), expires=_p("e"))
        restart = sa.or_(c.expires <= _p("now"), c.n.is_(None))
        self._incr_sql = compile_(counter.on_conflict_do_update(
            index_elements=[c.domain, c.key],
            set_={
                "n": sa.case((restart, counter.excluded.n), else_=c.n + counter.excluded.n),
                "expires": sa.case((restart, counter.excluded.expires), else_=c.expires),
                "value": None,
            },
        ).returning(c.n))
        delete_key = state.delete().where(key_is).returning(c.expires)
        delete_window = windows.delete().where(window_is).returning(w.expires)
        if self._postgresql:
            gone_key, gone_window = delete_key.cte("gone_key"), delete_window.cte("gone_window")
            both = sa.union_all(sa.select(gone_key.c.expires), sa.select(gone_window.c.expires)).subquery()
            self._delete_sql: tuple[Sql, ...] = (compile_(sa.select(sa.func.max(both.c.expires))),)
        else:
            self._delete_sql = (compile_(delete_key), compile_(delete_window))

        self._window_lock_sql = compile_(sa.select(sa.func.pg_advisory_xact_lock(_p("lock", type_=sa.BigInteger))))
        self._delete_key_sql = compile_(state.delete().where(key_is))
        self._drop_expired_members_sql = compile_(windows.delete().where(window_is, w.expires <= _p("now")))
        member = insert_into(windows).values(domain=_p("d"), key=_p("k"), member=_p("m"), weight=_p("weight"),
                                             expires=_p("e"))
        self._window_upsert_sql = compile_(member.on_conflict_do_update(
            index_elements=[w.domain, w.key, w.member],
            set_={"weight": member.excluded.weight, "expires": member.excluded.expires}))
        self._entries_sql = compile_(sa.select(w.member, w.weight, w.expires)
                                     .where(window_is, w.expires > _p("now")).order_by(w.expires, w.member))
        self._discard_sql = compile_(windows.delete().where(window_is, w.member == _p("m")).returning(w.expires))
        self._purge_sql: dict[int, tuple[Sql, ...]] = {}
        keys = sa.select(sa.func.count()).select_from(state).where(c.domain != _p("probe")).scalar_subquery()
        members = sa.select(sa.func.count()).select_from(windows).scalar_subquery()
        self._count_sql = compile_(sa.select(keys + members))
        self._count_live_sql: dict[str, Sql] = {}
        # ping writes this probe row (expired at once, so no call ever sees it) in a domain no tenant has.
        probe = insert_into(state).values(domain=_p("d"), key=_p("k"), value=None, n=_p("n"), expires=_p("e"))
        self._probe_sql = compile_(probe.on_conflict_do_update(
            index_elements=[c.domain, c.key], set_={"n": probe.excluded.n, "expires": probe.excluded.expires}))

    # -- plain keys -------------------------------------------------------

    def get(self, domain: str, key: str) -> Any:
        """Return the live value of a key, or None."""
        values = {"d": domain, "k": key, "now": self.clock()}
        row = self._run(READ, lambda connection: first_row(connection, self._get_sql, values))
        return None if row is None else _load(row[0], row[1])

    def get_many(self, domain: str, keys: Sequence[str]) -> list[Any]:
        """Return the live values of several keys (None for each absent one): one SELECT."""
        keys = list(keys)
        if not keys:
            return []
        unique = list(dict.fromkeys(keys))
        sql = self._get_many_statement(len(unique))
        values = {"d": domain, "now": self.clock(), **{f"k{i}": key for i, key in enumerate(unique)}}
        rows = self._run(READ, lambda connection: all_rows(connection, sql, values))
        found = {row[0]: _load(row[1], row[2]) for row in rows}
        if len(unique) == len(keys):
            return [found.get(key) for key in keys]
        # A key asked twice gets two equal values, not one shared object.
        return [loads_stored(dumps_text(found[key])) if key in found else None for key in keys]

    def _get_many_statement(self, count: int) -> Sql:
        sql = self._get_many_sql.get(count)
        if sql is None:
            c = state.c
            sql = self._compile(sa.select(c.key, c.value, c.n).where(
                c.domain == _p("d"), c.key.in_([_p(f"k{i}") for i in range(count)]), c.expires > _p("now")))
            if len(self._get_many_sql) < MAX_COMPILED_COUNTS:
                self._get_many_sql[count] = sql
        return sql

    def set(self, domain: str, key: str, value: Any, ttl: float) -> None:
        """Store a value that expires ``ttl`` seconds from now (replacing a window of that name)."""
        check_json(value)
        now = self.clock()
        values = _columns(value, {"d": domain, "k": key, "e": now + ttl})

        def work(connection):
            for sql in self._set_sql:
                connection.execute(sql.text, sql.params(values))

        self._run(STATEMENT if len(self._set_sql) == 1 else TRANSACTION, work)
        self._purge_if_due(now)

    def replace(self, domain: str, key: str, value: Any, ttl: float) -> bool:
        """Store a value only if the key is live; return whether it was stored. One UPDATE."""
        check_json(value)
        now = self.clock()
        values = _columns(value, {"d": domain, "k": key, "e": now + ttl, "now": now})
        return self._run(STATEMENT, lambda connection: row_count(connection, self._replace_sql, values)) == 1

    def add(self, domain: str, key: str, value: Any, ttl: float, if_live: str | None = None) -> bool:
        """Store a value only if the key is absent or expired (and ``if_live`` is live); return whether it was stored.

        One statement either way, so atomic: an upsert that takes over only an
        expired row, and with ``if_live`` an ``INSERT ... SELECT ... WHERE
        EXISTS`` of the live guard row (a window is not in this table, so it
        counts as absent).
        """
        check_json(value)
        now = self.clock()
        values = _columns(value, {"d": domain, "k": key, "e": now + ttl, "now": now})
        sql = self._add_sql
        if if_live is not None:
            values["g"] = if_live
            sql = self._add_if_live_sql
        stored = self._run(STATEMENT, lambda connection: row_count(connection, sql, values)) == 1
        self._purge_if_due(now)
        return stored

    def incr(self, domain: str, key: str, amount: int, ttl: float) -> int:
        """Add ``amount`` to a counter and return the new value; a missing or expired one starts a new window."""
        now = self.clock()
        values = {"d": domain, "k": key, "n": amount, "e": now + ttl, "now": now}
        row = self._run(STATEMENT, lambda connection: first_row(connection, self._incr_sql, values))
        self._purge_if_due(now)
        return int(row[0])

    def delete(self, domain: str, key: str) -> bool:
        """Remove a key or window; return whether a live one existed."""
        now = self.clock()
        values = {"d": domain, "k": key}

        def work(connection):
            return [row[0] for sql in self._delete_sql for row in all_rows(connection, sql, values)]

        expiries = self._run(STATEMENT if len(self._delete_sql) == 1 else TRANSACTION, work)
        return any(expires is not None and expires > now for expires in expiries)

    # -- windows ----------------------------------------------------------

    def window_add(self, domain: str, key: str, member: str, weight: int, ttl: float) -> list[WindowEntry]:
        """Add (or replace) a member expiring ``ttl`` seconds from now; return the live entries. Atomic."""
        check_text(member, "window member")
        now = self.clock()
        values = {"d": domain, "k": key, "m": member, "weight": weight, "e": now + ttl, "now": now,
                  "lock": _lock_key(domain, key)}

        def work(connection):
            if self._postgresql:
                # Serialise the adders of one window, so that the last sees every
                # member (SQLite's BEGIN IMMEDIATE already serialises all writers).
                first_row(connection, self._window_lock_sql, values)
            for sql in (self._delete_key_sql, self._drop_expired_members_sql, self._window_upsert_sql):
                connection.execute(sql.text, sql.params(values))
            return all_rows(connection, self._entries_sql, values)

        entries = self._entries(self._run(TRANSACTION, work))
        self._purge_if_due(now)
        return entries

    def window_entries(self, domain: str, key: str) -> list[WindowEntry]:
        """Return the live entries of a window, oldest expiry first."""
        values = {"d": domain, "k": key, "now": self.clock()}
        return self._entries(self._run(READ, lambda connection: all_rows(connection, self._entries_sql, values)))

    def window_discard(self, domain: str, key: str, member: str) -> bool:
        """Remove one member; return whether it was live."""
        now = self.clock()
        values = {"d": domain, "k": key, "m": member}
        rows = self._run(STATEMENT, lambda connection: all_rows(connection, self._discard_sql, values))
        return any(row[0] > now for row in rows)

    @staticmethod
    def _entries(rows: list) -> list[WindowEntry]:
        return [WindowEntry(member, int(weight), float(expires)) for member, weight, expires in rows]

    # -- purging and counting ---------------------------------------------

    def purge_expired(self, limit: int = PURGE_BATCH) -> int:
        """Delete up to ``limit`` expired rows of each state table; return how many went."""
        return sum(self._purge(limit))

    def _purge(self, limit: int) -> tuple[int, ...]:
        """Delete up to ``limit`` expired rows of each state table; return how many went from each."""
        statements = self._purge_sql.get(limit)
        if statements is None:
            compiled: list[Sql] = []
            for table, key in ((state, (state.c.domain, state.c.key)),
                               (windows, (windows.c.domain, windows.c.key, windows.c.member))):
                victims = sa.select(*key).where(table.c.expires <= _p("now")).limit(limit)
                if self._postgresql:
                    # Processes purging at once take different rows instead of queueing on the same ones.
                    victims = victims.with_for_update(skip_locked=True)
                # The outer test re-checks each row, so a key refreshed since the
                # sub-select (a new nonce under an old name) is never deleted.
                compiled.append(self._compile(
                    table.delete().where(table.c.expires <= _p("now"), sa.tuple_(*key).in_(victims))))
            statements = self._purge_sql[limit] = tuple(compiled)
        values = {"now": self.clock()}

        def work(connection):
            return tuple(max(row_count(connection, sql, values), 0) for sql in statements)

        return self._run(TRANSACTION, work)

    def _purge_if_due(self, now: float) -> None:
        self._writes_since_purge += 1
        if (now < self._next_purge and self._writes_since_purge < PURGE_EVERY) or not self._purge_lock.acquire(blocking=False):
            return
        try:
            self._writes_since_purge = 0
            self._next_purge = now + PURGE_INTERVAL
            if max(self._purge(PURGE_BATCH)) >= PURGE_BATCH:
                self._next_purge = float("-inf")  # a backlog: the next write purges again
        except ServiceUnavailable:
            pass  # the next write tries again; the caller's own write has succeeded
        finally:
            self._purge_lock.release()

    def count_live(self, prefix: str) -> int:
        """How many live plain keys start with ``prefix``, in every domain: one SELECT (a scan of the keys' table,
        done by the database)."""
        sql = self._count_live_sql.get(prefix)
        if sql is None:
            c = state.c
            sql = self._compile(sa.select(sa.func.count()).select_from(state).where(
                c.key.startswith(prefix, autoescape=True), c.expires > _p("now"), c.domain != _p("probe")))
            if len(self._count_live_sql) < MAX_COMPILED_COUNTS:
                self._count_live_sql[prefix] = sql
        values = {"now": self.clock(), "probe": PROBE_DOMAIN}
        return int(self._run(READ, lambda connection: first_row(connection, sql, values))[0])

    def state_count(self) -> int:
        """How many state rows (plain keys and window members, live or expired) the database holds; one SELECT."""
        sql = self._count_sql
        return int(self._run(READ, lambda connection: first_row(connection, sql, {"probe": PROBE_DOMAIN}))[0])

    # -- health -----------------------------------------------------------

    def ping(self) -> None:
        """Return when the database accepts a write; raise ServiceUnavailable otherwise.

        The write is one upsert of a probe row in a domain no tenant can have
        (:data:`kernel.core.driver.PROBE_DOMAIN`), expired as soon as written: a
        full disk, a read-only database or a lock held too long fails it. On
        SQLite it waits at the write gate at most a moment
        (:data:`~bastion_storage_sql.executor.PING_WAIT`).
        """
        values = {"d": PROBE_DOMAIN, "k": "ping", "n": next(self._probes), "e": self.clock()}
        sql = self._probe_sql
        self._executor.ping(lambda connection: connection.execute(sql.text, sql.params(values)))
