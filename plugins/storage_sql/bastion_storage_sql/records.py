"""Versioned records: reads by id or by index, and atomic, version-checked commits.

Statements are compiled once (select's per number of filters, paged or not). fetch, select,
history and domains are one SELECT each, outside any transaction; commit is
one transaction (on PostgreSQL: BEGIN, one statement per change plus the index
writes, plus two for each change that keeps history — the new entry and the
trim of the oldest beyond the limit — COMMIT).

A commit that removes records of a model that keeps history (deletes with
``history``) also numbers those removals and drops the histories its bound
leaves out (:class:`kernel.core.driver.Change`), per model: one ``executemany``
upsert of ``bastion_history_removed``, one DELETE ... RETURNING of the
oldest numbers beyond the bound (at most one per removal plus
``REMOVED_HISTORY_STEP``, an index range), and, when it returned any, one
``executemany`` that deletes their history up to their last deletion. On
PostgreSQL the transaction first takes an advisory lock per (domain, model)
it removes from, so that two commits never take the same number; SQLite's
writers are serialised already.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from bastion_storage_sql.executor import READ, TRANSACTION, SqlExecutor
from bastion_storage_sql.schema import MAX_TOKEN, history, index_entries, records, removals
from bastion_storage_sql.sql import Sql, all_rows, first_row, row_count
from kernel import (
    REMOVED_HISTORY_STEP,
    Change,
    RecordNotFound,
    RecordVersion,
    Scalar,
    StoredRecord,
    VersionConflict,
    check_change,
    check_scalar,
    dumps_text,
    index_token,
    is_record_id,
    loads_stored,
    loads_stored_all,
)


def stored_token(value: Scalar) -> str:
    """Return the index token stored for ``value``.

    Long tokens, and tokens with NUL (which PostgreSQL text refuses), become a
    digest: equal values still give equal tokens, and ``#`` starts no plain
    token, so a digest never equals a short value's token.
    """
    token = index_token(value)
    if len(token) > MAX_TOKEN or "\x00" in token:
        return "#" + hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
    return token


#: Most distinct shapes of select (its number of filters, whether it pages) whose statement is kept compiled.
MAX_COMPILED_SELECTS = 64

#: The first key of the PostgreSQL advisory locks that serialise the removals of one model in one domain
#: ("bhrv" in ASCII); the second is a digest of the pair (two-key locks never meet the migration's one-key lock).
REMOVALS_LOCK = int.from_bytes(b"bhrv", "big")

_p = sa.bindparam


def removals_lock_key(domain: str, model: str) -> int:
    """The second key of the advisory lock of a (domain, model)'s removals: a signed 32-bit digest of the pair."""
    digest = hashlib.blake2b(f"{domain}\x00{model}".encode("utf-8", "surrogatepass"), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


def _write_order(change: Change) -> tuple:
    """Where a change goes in its commit: updates and deletes by (model, id), then inserts as they came."""
    return (True,) if change.op == "insert" else (False, change.model, change.id)


def _removed_by_model(changes: Sequence[Change]) -> dict[str, list[Change]]:
    """The deletes of ``changes`` that keep history, by model, in the order of the changes: the removals the
    commit numbers (see :class:`kernel.core.driver.Change`)."""
    removed: dict[str, list[Change]] = {}
    for change in changes:
        if change.history and change.op == "delete":
            removed.setdefault(change.model, []).append(change)
    return removed


class SqlRecords:
    """The records of the SQL driver (:class:`kernel.core.driver.RecordStore`): ``SqlRecords(executor, clock)``.

    It builds the statements and says what each call runs; the
    :class:`~bastion_storage_sql.executor.SqlExecutor` it is given runs them
    (connections, retries, the write gate), and may serve a state store too.
    ``clock`` dates the history entries.
    """

    def __init__(self, executor: SqlExecutor, clock: Callable[[], float] = time.time):
        self.clock = clock
        self._run = executor.run
        self._compile = executor.compile
        self._postgresql = executor.postgresql
        self._integrity_error = executor.integrity_error
        self._build_statements(executor)

    def _build_statements(self, executor: SqlExecutor) -> None:
        r, i = records.c, index_entries.c
        record_is = sa.and_(r.domain == _p("d"), r.model == _p("m"), r.id == _p("id"))
        compile_ = self._compile
        self._fetch_sql = compile_(sa.select(r.vsn, r.data).where(record_is))
        self._select_sql: dict[tuple[int, bool, bool], Sql] = {}
        self._domains_sql = compile_(sa.select(r.domain).where(r.model == _p("m")).distinct().order_by(r.domain))
        values: dict[str, sa.ColumnElement[Any]] = {
            "domain": _p("d"), "model": _p("m"), "id": _p("id"), "vsn": sa.literal_column("1"), "data": _p("data")}
        if not self._postgresql:
            # SQLite has no sequences; its writers hold the database lock, so max + 1 is race-free.
            values["seq"] = (sa.select(sa.func.coalesce(sa.func.max(r.seq), 0) + 1)
                             .where(r.domain == _p("d"), r.model == _p("m")).scalar_subquery())
        self._insert_sql = compile_(records.insert().values(values))
        self._update_sql = compile_(records.update().where(record_is, r.vsn == _p("vsn"))
                                    .values(vsn=_p("new_vsn"), data=_p("data")))
        self._delete_sql_record = compile_(records.delete().where(record_is, r.vsn == _p("vsn")))
        self._unindex_sql = compile_(index_entries.delete().where(
            i.domain == _p("d"), i.model == _p("m"), i.id == _p("id")))
        self._index_sql = compile_(index_entries.insert().values(
            domain=_p("d"), model=_p("m"), field=_p("field"), token=_p("token"), id=_p("id")))
        # History: entries numbered per record in commit order. Writers of one record are serialised by
        # the record's own compare-and-set (its row lock or primary key), so max + 1 is race-free.
        h = history.c
        entries_of = sa.and_(h.domain == _p("d"), h.model == _p("m"), h.id == _p("id"))
        # An alias, so that the trim's subquery reads the table rather than correlating with the row deleted.
        latest = history.alias("latest").c
        last = (sa.select(sa.func.max(latest.n))
                .where(latest.domain == _p("d"), latest.model == _p("m"), latest.id == _p("id")).scalar_subquery())
        self._history_sql = compile_(sa.select(h.vsn, h.committed_at, h.committed_by, h.data)
                                     .where(entries_of).order_by(h.n))
        self._keep_sql = compile_(history.insert().inline().values(
            domain=_p("d"), model=_p("m"), id=_p("id"), n=sa.func.coalesce(last, 0) + 1, vsn=_p("hvsn"),
            committed_at=_p("at"), committed_by=_p("by"), data=_p("data")))
        self._trim_sql = compile_(history.delete().where(entries_of, h.n <= last - _p("keep")))
        # Removals: the next number of a (domain, model) is one past its highest (the newest removal is never
        # dropped by a bound of 1 or more; with 0 every number goes, and counting starts again, as it may).
        x = removals.c
        numbered = sa.select(sa.func.coalesce(sa.func.max(x.n), 0) + 1).where(
            x.domain == _p("d"), x.model == _p("m")).scalar_subquery()
        upsert = executor.insert(removals).values(domain=_p("d"), model=_p("m"), id=_p("id"), n=numbered)
        self._removal_sql = compile_(upsert.on_conflict_do_update(
            index_elements=[x.domain, x.model, x.id], set_={"n": upsert.excluded.n}))
        newest = removals.alias("newest").c
        oldest = removals.alias("oldest").c
        beyond = (sa.select(oldest.id)
                  .where(oldest.domain == _p("d"), oldest.model == _p("m"), oldest.n <= sa.select(
                      sa.func.max(newest.n)).where(newest.domain == _p("d"), newest.model == _p("m"))
                      .scalar_subquery() - _p("keep"))
                  .order_by(oldest.n).limit(_p("most")))
        self._drop_removed_sql = compile_(removals.delete().where(x.domain == _p("d"), x.model == _p("m"),
                                                                 x.id.in_(beyond)).returning(x.id))
        # A dropped record's entries up to its last deletion: all of them, unless it was inserted again since.
        deletions = history.alias("deletions").c
        last_deletion = (sa.select(sa.func.max(deletions.n))
                         .where(deletions.domain == _p("d"), deletions.model == _p("m"), deletions.id == _p("id"),
                                deletions.data.is_(None)).scalar_subquery())
        self._forget_sql = compile_(history.delete().where(entries_of, h.n <= last_deletion))
        self._lock_removals_sql = compile_(sa.select(sa.func.pg_advisory_xact_lock(
            sa.literal_column(str(REMOVALS_LOCK)), _p("key")))) if self._postgresql else None

    def fetch(self, domain: str, model: str, id: str) -> StoredRecord | None:
        """Return the record, or None when the domain has no such record (or ``id`` breaks the record-id rule)."""
        if not is_record_id(id):
            return None  # it cannot be stored, and PostgreSQL text would refuse a NUL
        values = {"d": domain, "m": model, "id": id}
        row = self._run(READ, lambda connection: first_row(connection, self._fetch_sql, values))
        return None if row is None else StoredRecord(model, id, row[0], loads_stored(row[1]))

    def select(self, domain: str, model: str, where: Mapping[str, Scalar] | None = None, *,
               after: str | None = None, limit: int | None = None) -> list[StoredRecord]:
        """Return the model's records whose index entries equal every ``where`` item, oldest first.

        ``after`` and ``limit`` (``paged_select``) go into the statement: a
        page is one index range on ``seq`` past the ``after`` record's own,
        and at most ``limit`` rows are read.
        """
        sql, values = self._select_query(domain, model, where, after, limit)
        rows = self._run(READ, lambda connection: all_rows(connection, sql, values))
        if after is not None and not rows and self.fetch(domain, model, after) is None:
            raise RecordNotFound(f"no {model} with id {after!r}")  # an empty page, or no such record: asked apart
        datas = loads_stored_all([row[2] for row in rows])
        return [StoredRecord(model, id, vsn, data) for (id, vsn, _), data in zip(rows, datas, strict=True)]

    def _select_query(self, domain: str, model: str, where: Mapping[str, Scalar] | None,
                      after: str | None = None, limit: int | None = None) -> tuple[Sql, dict]:
        """The statement :meth:`select` runs, and its parameters."""
        values: dict[str, Any] = {"d": domain, "m": model}
        for n, (field, value) in enumerate((where or {}).items()):
            check_scalar(value, f"where {field}")
            values[f"f{n}"] = field
            values[f"t{n}"] = stored_token(value)
        if after is not None:
            values["after"] = after
        if limit is not None:
            values["n"] = limit
        shape = (len(where or ()), after is not None, limit is not None)
        sql = self._select_sql.get(shape)
        if sql is None:
            count = shape[0]
            r = records.c
            query = sa.select(r.id, r.vsn, r.data).where(r.domain == _p("d"), r.model == _p("m"))
            if after is not None:
                start = records.alias("start").c
                query = query.where(r.seq > sa.select(start.seq).where(
                    start.domain == _p("d"), start.model == _p("m"), start.id == _p("after")).scalar_subquery())
            if limit is not None:
                query = query.limit(_p("n"))
            for n in range(count):
                # One join per filter, each an equality range on the index's primary key.
                entry = index_entries.alias(f"i{n}")
                query = query.join(entry, sa.and_(
                    entry.c.domain == _p("d"), entry.c.model == _p("m"), entry.c.field == _p(f"f{n}"),
                    entry.c.token == _p(f"t{n}"), entry.c.id == r.id))
            # With a filter, "seq + 0" hides the creation-order index from the
            # planner: SQLite would otherwise walk the whole domain in seq order
            # to skip a sort, rather than start from the index entries.
            sql = self._compile(query.order_by(r.seq + 0 if count else r.seq))
            if len(self._select_sql) < MAX_COMPILED_SELECTS:
                self._select_sql[shape] = sql
        return sql, values

    def history(self, domain: str, model: str, id: str) -> list[RecordVersion]:
        """Return the kept versions of a record, oldest first (empty for an id that breaks the record-id rule)."""
        if not is_record_id(id):
            return []
        values = {"d": domain, "m": model, "id": id}
        rows = self._run(READ, lambda connection: all_rows(connection, self._history_sql, values))
        return [RecordVersion(vsn, at, by, None if data is None else loads_stored(data)) for vsn, at, by, data in rows]

    def domains(self, model: str) -> list[str]:
        """Return the domains holding records of ``model``."""
        rows = self._run(READ, lambda connection: all_rows(connection, self._domains_sql, {"m": model}))
        return [row[0] for row in rows]

    def commit(self, domain: str, changes: Sequence[Change]) -> None:
        """Check every change's version and apply them all in one transaction, or raise VersionConflict."""
        for change in changes:
            check_change(change)
        if not changes:
            return
        # Encode before the transaction opens: the write lock is held for less time.
        # A fixed order of row locks keeps two PostgreSQL transactions from deadlocking: updates and
        # deletes go first, by model and id. Inserts follow in the order of the changes, which is the
        # records' creation order (their seq); two transactions inserting one id both wait on the primary
        # key, and the one PostgreSQL rolls back is a VersionConflict, as it would be without the wait.
        ordered = [(change, None if change.op == "delete" else dumps_text(change.data or {}))
                   for change in sorted(changes, key=_write_order)]
        at = self.clock() if any(change.history for change in changes) else None  # the commit's time
        removed = _removed_by_model(changes)
        self._run(TRANSACTION, lambda connection: self._apply(connection, domain, ordered, removed, at), conflicts=True)

    def _apply(self, connection: Any, domain: str, ordered: list[tuple[Change, str | None]],
               removed: dict[str, list[Change]], at: float | None) -> None:
        """The statements of one commit, within its transaction: the changes in ``ordered``, each with its
        encoded data, then the numbering of the ``removed`` records of each model."""
        lock = self._lock_removals_sql
        if removed and lock is not None:
            self._lock_removals(connection, lock, domain, removed)
        for change, data in ordered:
            values = {"d": domain, "m": change.model, "id": change.id, "vsn": change.vsn, "data": data}
            if change.op == "insert":
                self._insert_record(connection, values, change)
            elif change.op == "update":
                self._update_record(connection, values, change)
            else:
                self._delete_record(connection, values)
            if change.history:
                self._keep(connection, values, change, at)
        for model, changes_of_model in removed.items():
            self._count_removals(connection, domain, model, changes_of_model)

    @staticmethod
    def _lock_removals(connection: Any, lock: Sql, domain: str, removed: dict[str, list[Change]]) -> None:
        """PostgreSQL: take the advisory lock of each (domain, model) the commit removes from, so that two commits
        never give a removal the same number. Taken before any row lock, in one order: a commit waiting here holds
        nothing another needs."""
        for key in sorted({removals_lock_key(domain, model) for model in removed}):
            connection.execute(lock.text, lock.params({"key": key})).fetchall()

    # -- one change each, as compare-and-set statements --------------------

    def _insert_record(self, connection: Any, values: dict, change: Change) -> None:
        try:
            # The primary key decides between racing inserts, across processes.
            connection.execute(self._insert_sql.text, self._insert_sql.params(values))
        except self._integrity_error:
            raise VersionConflict(f"{change.model} {change.id!r} already exists") from None
        self._index(connection, values, change)

    def _update_record(self, connection: Any, values: dict, change: Change) -> None:
        values["new_vsn"] = change.vsn + 1
        if row_count(connection, self._update_sql, values) != 1:
            raise VersionConflict("record changed")
        connection.execute(self._unindex_sql.text, self._unindex_sql.params(values))
        self._index(connection, values, change)

    def _delete_record(self, connection: Any, values: dict) -> None:
        # The index entries go with the record (ON DELETE CASCADE).
        if row_count(connection, self._delete_sql_record, values) != 1:
            raise VersionConflict("record changed")

    def _keep(self, connection: Any, values: dict, change: Change, at: float | None) -> None:
        """Append the change to its record's history, then drop the entries beyond its limit."""
        entry = {**values, "hvsn": change.history_vsn, "at": at, "by": change.by, "keep": change.history}
        connection.execute(self._keep_sql.text, self._keep_sql.params(entry))
        connection.execute(self._trim_sql.text, self._trim_sql.params(entry))

    def _count_removals(self, connection: Any, domain: str, model: str, removed: list[Change]) -> None:
        """Number a commit's removals of ``model`` after the domain's earlier ones, then drop the histories
        their bound leaves out, oldest removal first (see :class:`kernel.core.driver.Change`)."""
        upsert = self._removal_sql
        connection.cursor().executemany(upsert.text, [upsert.params({"d": domain, "m": model, "id": change.id})
                                                      for change in removed])
        bound = {"d": domain, "m": model, "keep": min(change.keep_removed for change in removed),
                 "most": len(removed) + REMOVED_HISTORY_STEP}
        gone = all_rows(connection, self._drop_removed_sql, bound)
        if gone:
            forget = self._forget_sql
            connection.cursor().executemany(forget.text, [forget.params({"d": domain, "m": model, "id": row[0]})
                                                          for row in gone])

    def _index(self, connection: Any, values: dict, change: Change) -> None:
        sql = self._index_sql
        rows = [sql.params({**values, "field": field, "token": stored_token(value)})
                for field, value in (change.index or {}).items()]
        if rows:
            connection.cursor().executemany(sql.text, rows)
