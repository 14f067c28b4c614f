"""Whole tenants on SQL (the ``tenants`` capability): list, count, stream, load and delete a domain.

* ``tenants`` is one ``SELECT ... UNION ...`` of the domains of the records,
  history and live state tables (each read through an index that starts with
  the domain);
* ``tenant_counts`` is a ``GROUP BY model`` on the records and on the history,
  and the live state keys of the domain;
* ``tenant_records`` reads :data:`PAGE` records at a time in creation order
  (an index range on ``seq``), then their history and removal numbers (one
  statement each, looking the page's ids up by primary key: ``= ANY`` of an
  array on PostgreSQL, ``IN json_each`` on SQLite, so that no plan depends
  on the tables' statistics); then the ids whose record is gone but whose
  history is kept, in id order;
* ``load_tenant`` is **one transaction** on a connection of its own (no
  statement deadline: a large tenant takes as long as it takes): the check
  that the domain holds no data (or the deletion of what it holds, with
  ``replace``), then the records, index entries, history and removal numbers,
  :data:`PAGE` records at a time (one ``INSERT ... SELECT FROM unnest`` of
  arrays per table on PostgreSQL, an ``executemany`` on SQLite), then COMMIT. A process killed
  halfway never sent the COMMIT: the database rolls the whole load back, and
  the domain holds what it held before. On SQLite the transaction holds the
  write lock from its first statement (``BEGIN IMMEDIATE``) to its end;
* ``delete_tenant`` is one transaction of six DELETEs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from bastion_storage_sql.executor import READ, TRANSACTION, SqlExecutor
from bastion_storage_sql.records import stored_token
from bastion_storage_sql.schema import history, index_entries, records, removals, state, windows
from bastion_storage_sql.sql import Sql, all_rows
from kernel import (
    PROBE_DOMAIN,
    RecordVersion,
    TenantCounts,
    TenantRecord,
    VersionConflict,
    check_tenant_record,
    dumps_text,
    loads_stored,
    state_kind,
)
from kernel.drivers import ServiceUnavailable

#: Records per page of a stream, and per ``executemany`` of a load.
PAGE = 500


def _unnest(table: str, columns: dict[str, tuple[str, str]], ordered: bool = False) -> tuple[str, tuple[str, ...]]:
    """A PostgreSQL INSERT of a page of rows given as one array per column (``{parameter: (column, type)}``),
    the domain as ``%(d)s``; ``ordered``: in the arrays' order (the identity ``seq`` follows it)."""
    names = ", ".join(column for column, _ in columns.values())
    arrays = ", ".join(f"%({parameter})s::{kind}[]" for parameter, (_, kind) in columns.items())
    aliases = ", ".join(f"c_{column}" for column, _ in columns.values())
    text = (f"INSERT INTO {table} (domain, {names}) SELECT %(d)s, {aliases} FROM unnest({arrays}) "
            f"WITH ORDINALITY AS t({aliases}, ordinal)" + (" ORDER BY ordinal" if ordered else ""))
    return text, tuple(columns)


#: The PostgreSQL statements of a load's pages, by table.
UNNEST = {
    records.name: _unnest(records.name, {"m": ("model", "varchar"), "id": ("id", "varchar"),
                                         "vsn": ("vsn", "integer"), "data": ("data", "text")}, ordered=True),
    index_entries.name: _unnest(index_entries.name, {"m": ("model", "varchar"), "field": ("field", "varchar"),
                                                     "token": ("token", "varchar"), "id": ("id", "varchar")}),
    history.name: _unnest(history.name, {"m": ("model", "varchar"), "id": ("id", "varchar"), "n": ("n", "bigint"),
                                         "vsn": ("vsn", "integer"), "at": ("committed_at", "float8"),
                                         "by": ("committed_by", "varchar"), "data": ("data", "text")}),
    removals.name: _unnest(removals.name, {"m": ("model", "varchar"), "id": ("id", "varchar"),
                                           "n": ("n", "bigint")}),
}

_p = sa.bindparam


class SqlTenants:
    """The tenants of the SQL driver (:class:`kernel.core.driver.TenantStore`): ``SqlTenants(executor, clock)``."""

    def __init__(self, executor: SqlExecutor, clock: Callable[[], float] = time.time):
        self.clock = clock
        self._executor = executor
        self._run = executor.run
        self._postgresql = executor.postgresql
        self._build_statements(executor.compile)

    def _build_statements(self, compile_: Callable[[Any], Sql]) -> None:
        r, h, s, w = records.c, history.c, state.c, windows.c
        self._tenants_sql = compile_(sa.union(
            sa.select(r.domain), sa.select(h.domain), sa.select(s.domain).where(s.expires > _p("now")),
            sa.select(w.domain).where(w.expires > _p("now"))))
        self._census_records_sql = compile_(sa.select(r.domain, r.model, sa.func.count()).group_by(r.domain, r.model))
        self._census_history_sql = compile_(sa.select(h.domain, h.model, sa.func.count()).group_by(h.domain, h.model))
        self._census_state_sql = compile_(sa.union(
            sa.select(s.domain, s.key).where(s.expires > _p("now")),
            sa.select(w.domain, w.key).where(w.expires > _p("now"))))
        self._count_records_sql = compile_(sa.select(r.model, sa.func.count()).where(r.domain == _p("d"))
                                           .group_by(r.model))
        self._count_history_sql = compile_(sa.select(h.model, sa.func.count()).where(h.domain == _p("d"))
                                           .group_by(h.model))
        self._state_keys_sql = compile_(sa.union(
            sa.select(s.key).where(s.domain == _p("d"), s.expires > _p("now")),
            sa.select(w.key).where(w.domain == _p("d"), w.expires > _p("now"))))
        self._build_reads(compile_)
        self._build_writes(compile_)

    def _in_ids(self, column: Any) -> Any:
        """``column`` is one of the ids given as the parameter ``ids`` (:meth:`_ids`): ``= ANY`` of an array on
        PostgreSQL, ``IN`` the values of a JSON array on SQLite. One statement for any number of ids, an index
        lookup per id whatever the planner's statistics say."""
        if self._postgresql:
            return column == sa.func.any(sa.bindparam("ids", type_=postgresql.ARRAY(sa.String)))
        return column.in_(sa.select(sa.literal_column("value")).select_from(sa.func.json_each(_p("ids"))))

    def _ids(self, ids: list[str]) -> Any:
        return ids if self._postgresql else dumps_text(ids)

    def _build_reads(self, compile_: Callable[[Any], Sql]) -> None:
        r, h, x = records.c, history.c, removals.c
        of_model = (h.domain == _p("d"), h.model == _p("m"))
        self._page_sql = compile_(sa.select(r.id, r.vsn, r.data, r.seq)
                                  .where(r.domain == _p("d"), r.model == _p("m"), r.seq > _p("after"))
                                  .order_by(r.seq).limit(_p("n")))
        self._history_of_sql = compile_(sa.select(h.id, h.vsn, h.committed_at, h.committed_by, h.data)
                                        .where(*of_model, self._in_ids(h.id)).order_by(h.id, h.n))
        self._removals_of_sql = compile_(sa.select(x.id, x.n).where(x.domain == _p("d"), x.model == _p("m"),
                                                                   self._in_ids(x.id)))
        self._live_of_sql = compile_(sa.select(r.id).where(r.domain == _p("d"), r.model == _p("m"),
                                                           self._in_ids(r.id)))
        # The ids holding history, a page at a time in the index's own order (never sorted by the database).
        self._held_sql = compile_(sa.select(h.id).where(*of_model, h.id > _p("after")).group_by(h.id)
                                  .order_by(h.id).limit(_p("n")))

    def _build_writes(self, compile_: Callable[[Any], Sql]) -> None:
        r = records.c
        values: dict[str, sa.ColumnElement[Any]] = {"domain": _p("d"), "model": _p("m"), "id": _p("id"),
                                                    "vsn": _p("vsn"), "data": _p("data")}
        if not self._postgresql:  # as SqlRecords inserts: the load holds SQLite's write lock, so max + 1 is race-free
            values["seq"] = (sa.select(sa.func.coalesce(sa.func.max(r.seq), 0) + 1)
                             .where(r.domain == _p("d"), r.model == _p("m")).scalar_subquery())
        self._load_record_sql = compile_(records.insert().values(values))
        self._load_index_sql = compile_(index_entries.insert().values(
            domain=_p("d"), model=_p("m"), field=_p("field"), token=_p("token"), id=_p("id")))
        self._load_history_sql = compile_(history.insert().values(
            domain=_p("d"), model=_p("m"), id=_p("id"), n=_p("n"), vsn=_p("vsn"), committed_at=_p("at"),
            committed_by=_p("by"), data=_p("data")))
        self._load_removal_sql = compile_(removals.insert().values(domain=_p("d"), model=_p("m"), id=_p("id"),
                                                                   n=_p("n")))
        self._holds_sql = compile_(sa.select(sa.or_(sa.exists().where(records.c.domain == _p("d")),
                                                    sa.exists().where(history.c.domain == _p("d")))))
        self._tables = {self._load_record_sql: records.name, self._load_index_sql: index_entries.name,
                        self._load_history_sql: history.name, self._load_removal_sql: removals.name}
        # Index entries first (they refer to the records), then the rest; state and windows too.
        self._delete_sql = [compile_(table.delete().where(table.c.domain == _p("d")))
                            for table in (index_entries, records, history, removals, state, windows)]

    # -- reading -----------------------------------------------------------

    def tenants(self) -> dict[str, TenantCounts]:
        """Every domain holding records, history or live state, sorted, with what it holds: four statements."""
        values = {"now": self.clock()}

        def read(connection: Any) -> dict[str, TenantCounts]:
            found = {row[0]: TenantCounts() for row in all_rows(connection, self._tenants_sql, values)}
            for domain, model, n in all_rows(connection, self._census_records_sql, values):
                found[domain].records[model] = n
            for domain, model, n in all_rows(connection, self._census_history_sql, values):
                found[domain].history[model] = n
            for domain, key in all_rows(connection, self._census_state_sql, values):
                kind = state_kind(key)
                found[domain].state[kind] = found[domain].state.get(kind, 0) + 1
            return found

        found = self._run(READ, read)
        found.pop(PROBE_DOMAIN, None)
        return dict(sorted(found.items()))

    def tenant_counts(self, domain: str) -> TenantCounts:
        """Records and history entries per model (two GROUP BYs), live state keys per kind."""
        values = {"d": domain, "now": self.clock()}

        def read(connection: Any) -> TenantCounts:
            counts = TenantCounts({model: n for model, n in all_rows(connection, self._count_records_sql, values)},
                                  {model: n for model, n in all_rows(connection, self._count_history_sql, values)})
            for (key,) in all_rows(connection, self._state_keys_sql, values):
                kind = state_kind(key)
                counts.state[kind] = counts.state.get(kind, 0) + 1
            return counts

        return self._run(READ, read)

    def tenant_records(self, domain: str, model: str) -> Iterator[TenantRecord]:
        """The live records a page at a time in creation order, then the ids holding only history, in id order.

        A page is three statements: its records (an index range on ``seq``), their history and their removal
        numbers (index lookups by id). The ids holding only history are found a page of history ids at a time
        (those without a live record), then sorted: there are at most ``keep_removed`` of them per model, unless
        a model stopped keeping history.
        """
        after: Any = 0
        while True:
            values = {"d": domain, "m": model, "after": after, "n": PAGE}
            rows = self._read(self._page_sql, values)
            if not rows:
                break
            after = rows[-1][3]
            yield from self._with_history(domain, model, [(id, vsn, data) for id, vsn, data, _ in rows])
        only = sorted(self._history_only(domain, model))
        for start in range(0, len(only), PAGE):
            yield from self._with_history(domain, model, [(id, 0, None) for id in only[start:start + PAGE]])

    def _read(self, sql: Sql, values: dict) -> list:
        return self._run(READ, lambda connection: all_rows(connection, sql, values))

    def _with_history(self, domain: str, model: str, page: list[tuple[str, int, str | None]]) -> Iterator[TenantRecord]:
        """The page's records (``id, vsn, data text``), each with its history and removal number."""
        values = {"d": domain, "m": model, "ids": self._ids([id for id, _, _ in page])}
        kept: dict[str, list[RecordVersion]] = {}
        for id, vsn, at, by, data in self._read(self._history_of_sql, values):
            kept.setdefault(id, []).append(RecordVersion(vsn, at, by, None if data is None else loads_stored(data)))
        removed = dict(self._read(self._removals_of_sql, values))
        for id, vsn, data in page:
            yield TenantRecord(model, id, vsn, None if data is None else loads_stored(data), tuple(kept.get(id, ())),
                               removed.get(id))

    def _history_only(self, domain: str, model: str) -> set[str]:
        """The ids of ``model`` holding history without a live record."""
        only: set[str] = set()
        after = ""
        while True:
            ids = [row[0] for row in self._read(self._held_sql, {"d": domain, "m": model, "after": after, "n": PAGE})]
            if not ids:
                return only
            after = ids[-1]
            live = {row[0] for row in self._read(self._live_of_sql, {"d": domain, "m": model, "ids": self._ids(ids)})}
            only.update(id for id in ids if id not in live)

    # -- writing -----------------------------------------------------------

    def load_tenant(self, domain: str, loaded: Iterable[TenantRecord], replace: bool = False) -> int:
        """Write every record in one transaction on a connection of its own; roll it all back on any error."""
        fairy = self._executor.engine.raw_connection()
        try:
            connection = fairy.dbapi_connection
            return self._load(connection, domain, loaded, replace)
        except self._executor.integrity_error:
            raise ValueError("two records of one model have the same id: nothing was loaded") from None
        except self._executor._outage_errors as error:  # noqa: SLF001 - the executor's own classification
            raise ServiceUnavailable("storage unavailable", backend=self._executor.dialect) from error
        finally:
            fairy.close()

    def _load(self, connection: Any, domain: str, loaded: Iterable[TenantRecord], replace: bool) -> int:
        """The load's transaction: begin, clear or check the domain, write page by page, commit (or roll back)."""
        if not self._postgresql:
            connection.execute("BEGIN IMMEDIATE")
        try:
            if replace:
                for sql in self._delete_sql:
                    connection.execute(sql.text, sql.params({"d": domain}))
            elif all_rows(connection, self._holds_sql, {"d": domain})[0][0]:
                raise VersionConflict(f"{domain} already holds records")
            count, analyzed = 0, PAGE
            page: list[TenantRecord] = []
            for record in loaded:
                check_tenant_record(record)
                page.append(record)
                if len(page) == PAGE:
                    count += self._write_page(connection, domain, page)
                    page = []
                    if self._postgresql and count >= analyzed:
                        analyzed = self._analyze(connection, count)
            count += self._write_page(connection, domain, page)
        except BaseException:
            self._end(connection, "ROLLBACK")
            raise
        self._end(connection, "COMMIT")
        return count

    @staticmethod
    def _analyze(connection: Any, count: int) -> int:
        """PostgreSQL: refresh the statistics of the records' table within the load (it sees its own rows), each
        time the load doubles; return the count at which to do it again. The foreign key of the index entries is
        checked row by row with a plan made for the table as it was: planned for an empty table, each check reads
        the whole table, and a large load grows quadratic (100,000 todos ran into the statement timeout). A role
        that does not own the table gets a warning, never an error."""
        connection.execute(f"ANALYZE {records.name}")
        return count * 2

    def _end(self, connection: Any, how: str) -> None:
        """COMMIT or ROLLBACK the load's transaction (SQLite's connections run in autocommit mode between
        the transactions they begin, as the executor's do)."""
        if self._postgresql:
            connection.commit() if how == "COMMIT" else connection.rollback()
        else:
            connection.execute(how)

    def _write_page(self, connection: Any, domain: str, page: list[TenantRecord]) -> int:
        """One ``executemany`` per table for a page of records (live records in the order given)."""
        rows: dict[Sql, list] = {self._load_record_sql: [], self._load_index_sql: [], self._load_history_sql: [],
                                 self._load_removal_sql: []}
        for record in page:
            key = {"d": domain, "m": record.model, "id": record.id}
            if record.data is not None:
                rows[self._load_record_sql].append({**key, "vsn": record.vsn, "data": dumps_text(record.data)})
                rows[self._load_index_sql].extend({**key, "field": field, "token": stored_token(value)}
                                                  for field, value in (record.index or {}).items())
            rows[self._load_history_sql].extend(
                {**key, "n": n, "vsn": entry.vsn, "at": entry.at, "by": entry.by,
                 "data": None if entry.data is None else dumps_text(entry.data)}
                for n, entry in enumerate(record.history, 1))
            if record.removal is not None:
                rows[self._load_removal_sql].append({**key, "n": record.removal})
        for sql, values in rows.items():
            if not values:
                continue
            if self._postgresql:
                # One INSERT ... SELECT FROM unnest(arrays) per table: executemany sends one statement per row.
                text, columns = UNNEST[self._tables[sql]]
                connection.execute(text, {"d": domain, **{c: [v[c] for v in values] for c in columns}})
            else:
                connection.cursor().executemany(sql.text, [sql.params(v) for v in values])
        return len(page)

    def delete_tenant(self, domain: str) -> bool:
        """Six DELETEs in one transaction; whether any removed a row."""
        def work(connection: Any) -> bool:
            return any([connection.execute(sql.text, sql.params({"d": domain})).rowcount > 0
                        for sql in self._delete_sql])

        return self._run(TRANSACTION, work)


