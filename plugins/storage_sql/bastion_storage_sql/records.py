"""Versioned records: reads by id or by index, and atomic, version-checked commits."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from bastion_storage_sql.backend import SqlBackend
from bastion_storage_sql.schema import MAX_TOKEN, index_entries, records
from kernel.driver import Change, Scalar, StoredRecord, check_json, check_scalar, dumps, index_token
from kernel.errors import VersionConflict


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


class SqlRecords(SqlBackend):
    """The record half of the SQL driver (:class:`kernel.driver.RecordStore`)."""

    def fetch(self, domain: str, model: str, id: str) -> StoredRecord | None:
        """Return the record, or None when the domain has no such record."""
        query = sa.select(records.c.vsn, records.c.data).where(
            records.c.domain == domain, records.c.model == model, records.c.id == id)
        with self._read() as connection:
            row = connection.execute(query).first()
        return None if row is None else StoredRecord(model, id, row.vsn, json.loads(row.data))

    def select(self, domain: str, model: str, where: Mapping[str, Scalar] | None = None) -> list[StoredRecord]:
        """Return the model's records whose index entries equal every ``where`` item, oldest first."""
        query = sa.select(records.c.id, records.c.vsn, records.c.data).where(
            records.c.domain == domain, records.c.model == model)
        for n, (field, value) in enumerate((where or {}).items()):
            check_scalar(value, f"where {field}")
            # One join per filter, each an equality range on the index's primary key.
            entry = index_entries.alias(f"i{n}")
            query = query.join(entry, sa.and_(
                entry.c.domain == domain, entry.c.model == model, entry.c.field == field,
                entry.c.token == stored_token(value), entry.c.id == records.c.id))
        # With a filter, "seq + 0" hides the creation-order index from the
        # planner: SQLite would otherwise walk the whole domain in seq order
        # to skip a sort, rather than start from the index entries.
        query = query.order_by(records.c.seq + 0 if where else records.c.seq)
        with self._read() as connection:
            rows = connection.execute(query).all()
        return [StoredRecord(model, row.id, row.vsn, json.loads(row.data)) for row in rows]

    def domains(self, model: str) -> list[str]:
        """Return the domains holding records of ``model``."""
        query = sa.select(records.c.domain).where(records.c.model == model).distinct().order_by(records.c.domain)
        with self._read() as connection:
            return list(connection.execute(query).scalars())

    def commit(self, domain: str, changes: Sequence[Change]) -> None:
        """Check every change's version and apply them all in one transaction, or raise VersionConflict."""
        for change in changes:
            if change.op != "delete":
                check_json(change.data or {}, f"{change.model} {change.id}")
                for field, value in (change.index or {}).items():
                    check_scalar(value, f"{change.model} {change.id} index {field}")
        if not changes:
            return
        # A fixed order of row locks keeps two PostgreSQL transactions from deadlocking.
        ordered = sorted(changes, key=lambda change: (change.model, change.id))
        with self._write(conflicts=True) as connection:
            for change in ordered:
                if change.op == "insert":
                    self._insert_record(connection, domain, change)
                elif change.op == "update":
                    self._update_record(connection, domain, change)
                else:
                    self._delete_record(connection, domain, change)

    # -- one change each, as compare-and-set statements --------------------

    def _insert_record(self, connection: Connection, domain: str, change: Change) -> None:
        values = {"domain": domain, "model": change.model, "id": change.id, "vsn": 1, "data": dumps(change.data or {})}
        if self.dialect == "sqlite":
            # SQLite has no sequences; its writers hold the database lock, so max + 1 is race-free.
            values["seq"] = (sa.select(sa.func.coalesce(sa.func.max(records.c.seq), 0) + 1)
                             .where(records.c.domain == domain, records.c.model == change.model)
                             .scalar_subquery())
        try:
            # The primary key decides between racing inserts, across processes.
            connection.execute(records.insert().values(values))
        except IntegrityError:
            raise VersionConflict(f"{change.model} {change.id!r} already exists") from None
        self._index(connection, domain, change)

    def _update_record(self, connection: Connection, domain: str, change: Change) -> None:
        result = connection.execute(
            records.update()
            .where(records.c.domain == domain, records.c.model == change.model, records.c.id == change.id,
                   records.c.vsn == change.vsn)
            .values(vsn=change.vsn + 1, data=dumps(change.data or {})))
        if result.rowcount != 1:
            raise VersionConflict("record changed")
        connection.execute(index_entries.delete().where(
            index_entries.c.domain == domain, index_entries.c.model == change.model, index_entries.c.id == change.id))
        self._index(connection, domain, change)

    def _delete_record(self, connection: Connection, domain: str, change: Change) -> None:
        # The index entries go with the record (ON DELETE CASCADE).
        result = connection.execute(records.delete().where(
            records.c.domain == domain, records.c.model == change.model, records.c.id == change.id,
            records.c.vsn == change.vsn))
        if result.rowcount != 1:
            raise VersionConflict("record changed")

    @staticmethod
    def _index(connection: Connection, domain: str, change: Change) -> None:
        rows = [{"domain": domain, "model": change.model, "field": field, "token": stored_token(value), "id": change.id}
                for field, value in (change.index or {}).items()]
        if rows:
            connection.execute(index_entries.insert(), rows)
