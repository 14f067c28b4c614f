"""Whole tenants on SQL (the ``tenants`` capability): list, count, stream, load and delete a domain.

* ``tenants`` is one ``SELECT ... UNION ...`` of the domains of the records,
  history and live state tables (each read through an index that starts with
  the domain);
* ``tenant_counts`` is a ``GROUP BY model`` on the records and on the history,
  and the live state keys of the domain;
* ``tenant_records`` reads :data:`PAGE` records at a time in creation order
  (an index range on ``seq``), each page joined with its records' history
  and removal numbers in the same statement; then the ids whose record is
  gone but whose history is kept, a page of ids at a time, in id order;
* ``load_tenant`` is **one transaction** on a connection of its own (no
  statement deadline: a large tenant takes as long as it takes): the check
  that the domain holds no data (or the deletion of what it holds, with
  ``replace``), then the records, index entries, history and removal numbers,
  :data:`PAGE` records per ``executemany``, then COMMIT. A process killed
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

_p = sa.bindparam


class SqlTenants:
    """The tenants of the SQL driver (:class:`kernel.core.driver.TenantStore`): ``SqlTenants(executor, clock)``."""

    def __init__(self, executor: SqlExecutor, clock: Callable[[], float] = time.time):
        self.clock = clock
        self._executor = executor
        self._run = executor.run
        self._postgresql = executor.postgresql
        self._build_statements(executor.compile)

    def _ordered(self, column: Any) -> Any:
        """A text column compared and ordered by code point on both databases (PostgreSQL's "C" collation)."""
        return sa.collate(column, "C") if self._postgresql else column

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
        self._page_sql = compile_(self._page_query())
        self._removed_page_sql = compile_(self._removed_page_query())
        self._build_writes(compile_)

    def _page_query(self) -> Any:
        """A page of live records after a ``seq``, each row one of their history entries (or none), in order."""
        r, h, x = records.c, history.c, removals.c
        page = (sa.select(r.id, r.vsn, r.data, r.seq)
                .where(r.domain == _p("d"), r.model == _p("m"), r.seq > _p("after"))
                .order_by(r.seq).limit(_p("n")).subquery("page"))
        return (sa.select(page.c.id, page.c.vsn, page.c.data, page.c.seq, h.vsn, h.committed_at, h.committed_by,
                          h.data, x.n)
                .select_from(page.outerjoin(history, sa.and_(h.domain == _p("d"), h.model == _p("m"),
                                                             h.id == page.c.id))
                             .outerjoin(removals, sa.and_(x.domain == _p("d"), x.model == _p("m"),
                                                          x.id == page.c.id)))
                .order_by(page.c.seq, h.n))

    def _removed_page_query(self) -> Any:
        """A page of the ids after ``after`` holding history but no live record, with their entries, in order."""
        h, x = history.c, removals.c
        held, live = history.alias("held").c, records.alias("live").c
        ids = (sa.select(held.id.label("id"))
               .where(held.domain == _p("d"), held.model == _p("m"), self._ordered(held.id) > _p("after"),
                      ~sa.exists().where(live.domain == _p("d"), live.model == _p("m"), live.id == held.id))
               .group_by(held.id).order_by(self._ordered(held.id)).limit(_p("n")).subquery("ids"))
        return (sa.select(ids.c.id, h.vsn, h.committed_at, h.committed_by, h.data, x.n)
                .select_from(ids.join(history, sa.and_(h.domain == _p("d"), h.model == _p("m"), h.id == ids.c.id))
                             .outerjoin(removals, sa.and_(x.domain == _p("d"), x.model == _p("m"),
                                                          x.id == ids.c.id)))
                .order_by(self._ordered(ids.c.id), h.n))

    def _build_writes(self, compile_: Callable[[Any], Sql]) -> None:
        r = records.c
        values = {"domain": _p("d"), "model": _p("m"), "id": _p("id"), "vsn": _p("vsn"), "data": _p("data")}
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
        """The live records a page at a time in creation order, then the ids holding only history, in id order."""
        after: Any = 0
        while True:
            values = {"d": domain, "m": model, "after": after, "n": PAGE}
            rows = self._run(READ, lambda connection, values=values: all_rows(connection, self._page_sql, values))
            if not rows:
                break
            for group in _grouped(rows):
                id, vsn, data, after = group[0][:4]
                yield TenantRecord(model, id, vsn, loads_stored(data), _versions(group, 4), group[0][8])
        after = ""
        while True:
            values = {"d": domain, "m": model, "after": after, "n": PAGE}
            rows = self._run(READ, lambda connection, values=values: all_rows(connection, self._removed_page_sql,
                                                                              values))
            if not rows:
                return
            for group in _grouped(rows):
                after = group[0][0]
                yield TenantRecord(model, after, 0, None, _versions(group, 1), group[0][5])

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
            count = 0
            page: list[TenantRecord] = []
            for record in loaded:
                check_tenant_record(record)
                page.append(record)
                if len(page) == PAGE:
                    count += self._write_page(connection, domain, page)
                    page = []
            count += self._write_page(connection, domain, page)
        except BaseException:
            self._end(connection, "ROLLBACK")
            raise
        self._end(connection, "COMMIT")
        return count

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
            if values:
                connection.cursor().executemany(sql.text, [sql.params(v) for v in values])
        return len(page)

    def delete_tenant(self, domain: str) -> bool:
        """Six DELETEs in one transaction; whether any removed a row."""
        def work(connection: Any) -> bool:
            return any([connection.execute(sql.text, sql.params({"d": domain})).rowcount > 0
                        for sql in self._delete_sql])

        return self._run(TRANSACTION, work)


def _grouped(rows: list) -> Iterator[list]:
    """The rows of a page, one list per record (its rows are consecutive)."""
    group: list = []
    for row in rows:
        if group and row[0] != group[0][0]:
            yield group
            group = []
        group.append(row)
    if group:
        yield group


def _versions(group: list, start: int) -> tuple[RecordVersion, ...]:
    """The history entries of a record's rows: ``vsn, at, by, data`` from column ``start`` (none: no entry)."""
    return tuple(RecordVersion(row[start], row[start + 1], row[start + 2],
                               None if row[start + 3] is None else loads_stored(row[start + 3]))
                 for row in group if row[start] is not None)
