"""What the record and state halves of the driver share: engine, statements, how calls run, health.

Every call of the driver runs on a pooled DBAPI connection (sqlite3 or
psycopg), with statements that SQLAlchemy compiled once when the driver
opened: no statement is built, compiled or cache-keyed per call. A call is one
of three kinds:

* ``READ``: one SELECT, outside any transaction (SQLite autocommit, PostgreSQL
  autocommit): one round trip, no BEGIN/COMMIT;
* ``STATEMENT``: one writing statement. On PostgreSQL it runs in autocommit
  mode, a transaction of its own (one round trip); on SQLite it runs within
  ``BEGIN IMMEDIATE`` ... ``COMMIT`` like any write;
* ``TRANSACTION``: several statements within BEGIN (``BEGIN IMMEDIATE`` on
  SQLite) ... COMMIT.

A pooled PostgreSQL connection that the server has closed (a restart, an idle
timeout) is seen without a round trip when it is checked out (its socket is
readable while it should be silent) and replaced by a fresh one. A connection
that breaks during a call is invalidated; the call is then retried once on a
fresh connection only when nothing it did can have been applied: a READ, or a
TRANSACTION that broke before its COMMIT was sent. A STATEMENT that broke
after it was sent, or a COMMIT, has an unknown outcome and is never retried:
the caller gets ServiceUnavailable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite

from bastion_storage_sql import migrate, settings
from bastion_storage_sql.engine import create_engine, parse_url, redact
from bastion_storage_sql.errors import is_transaction_conflict, unavailable
from kernel.errors import VersionConflict

#: What the driver does with the schema when it opens: create or upgrade it,
#: insist that it is current (production), or trust it (tests of the schema itself).
SchemaMode = Literal["upgrade", "check", "none"]

#: The kinds of call (see the module's docstring).
READ, STATEMENT, TRANSACTION = "read", "statement", "transaction"

T = TypeVar("T")


class Sql:
    """A statement compiled once for one dialect: its text and the order of its parameters."""

    __slots__ = ("text", "names", "constants")

    def __init__(self, statement: Any, dialect: sa.engine.Dialect):
        compiled = statement.compile(dialect=dialect)
        self.text: str = compiled.string
        # qmark (sqlite3) takes a tuple in order; pyformat (psycopg) takes the dict.
        self.names: tuple[str, ...] | None = tuple(compiled.positiontup) if compiled.positional else None
        # Parameters the statement carries its own value for (a LIMIT, a literal).
        self.constants = {compiled.bind_names[bind]: bind.value for bind in compiled.binds.values()
                          if bind.value is not None or not bind.required}

    def params(self, values: Mapping[str, Any]) -> Any:
        """The DBAPI parameters of ``values``."""
        if self.constants:
            values = {**self.constants, **values}
        return values if self.names is None else tuple(values[name] for name in self.names)

    def __repr__(self) -> str:
        return f"Sql({self.text!r})"


class SqlBackend:
    """An engine on one database, with the driver's compiled statements and call runner."""

    def __init__(self, url: str, clock: Callable[[], float] = time.time,
                 options: Mapping[str, Any] | None = None, schema: SchemaMode = "upgrade"):
        self.clock = clock
        self.label = redact(url)
        self.settings = {**settings.defaults(), **(options or {})}
        self.engine = create_engine(parse_url(url), self.settings)
        self.dialect = self.engine.dialect.name
        self._postgresql = self.dialect == "postgresql"
        # Dialect-specific INSERT, for ON CONFLICT upserts.
        self._insert = postgresql.insert if self._postgresql else sqlite.insert
        dbapi = self.engine.dialect.loaded_dbapi
        self._dbapi_error = dbapi.Error
        self._outage_errors = (dbapi.OperationalError, dbapi.InterfaceError)
        self._integrity_error = dbapi.IntegrityError
        self._ping = self.compile(sa.select(sa.literal_column("1")))
        try:
            if schema == "upgrade":
                migrate.upgrade(self.engine)
            elif schema == "check":
                migrate.require_current(self.engine, self.label)
        except BaseException:
            self.engine.dispose()
            raise

    def compile(self, statement: Any) -> Sql:
        """Compile a SQLAlchemy statement once, for this database."""
        return Sql(statement, self.engine.dialect)

    # -- running calls ----------------------------------------------------

    def _run(self, kind: str, work: Callable[[Any], T], conflicts: bool = False) -> T:
        """Run ``work(dbapi_connection)`` as a call of ``kind``; translate the backend's errors.

        ``conflicts``: a PostgreSQL transaction rolled back for a deadlock or a
        serialisation failure is a VersionConflict (else ServiceUnavailable).
        """
        for attempt in (1, 2):
            try:
                fairy = self.engine.raw_connection()
            except (sa_exc.SQLAlchemyError, self._dbapi_error) as error:
                # The pool timed out, or no new connection could be made: nothing was sent.
                raise self._failure(error, conflicts) from None
            connection = fairy.dbapi_connection
            applied = False  # whether the database may have applied something
            try:
                if kind == READ or (kind == STATEMENT and self._postgresql):
                    if self._postgresql:
                        connection.autocommit = True
                    try:
                        applied = kind != READ
                        return work(connection)
                    finally:
                        if self._postgresql and not connection.closed:
                            connection.autocommit = False
                if not self._postgresql:
                    connection.execute("BEGIN IMMEDIATE")
                try:
                    result = work(connection)
                except BaseException:
                    self._rollback(connection)
                    raise
                applied = True  # from here on the outcome of the COMMIT is unknown if it fails
                connection.commit() if self._postgresql else connection.execute("COMMIT")
                return result
            except (sa_exc.SQLAlchemyError, self._dbapi_error) as error:
                broken = self._is_disconnect(error, connection)
                if broken:
                    fairy.invalidate(error)
                if broken and not applied and attempt == 1:
                    continue  # nothing was applied: once more, on a fresh connection
                raise self._failure(error, conflicts) from None
            finally:
                fairy.close()
        raise AssertionError("unreachable")  # pragma: no cover

    def _rollback(self, connection: Any) -> None:
        try:
            if self._postgresql:
                if not connection.closed:
                    connection.rollback()
            elif connection.in_transaction:
                connection.execute("ROLLBACK")
        except self._dbapi_error:
            pass  # a broken connection: the pool discards it

    def _is_disconnect(self, error: BaseException, connection: Any) -> bool:
        if isinstance(error, sa_exc.DBAPIError):
            return error.connection_invalidated
        if not isinstance(error, self._dbapi_error):
            return False
        return self.engine.dialect.is_disconnect(error, connection, None)

    def _failure(self, error: BaseException, conflicts: bool) -> Exception:
        """The kernel error to raise for a backend error (or the error itself when it is a bug)."""
        if conflicts and is_transaction_conflict(error):
            return VersionConflict("record changed")
        if isinstance(error, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)):
            return unavailable(error)
        if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
            return unavailable(error)
        if isinstance(error, self._outage_errors):
            return unavailable(error)
        return error

    @staticmethod
    def _one(connection: Any, sql: Sql, values: Mapping[str, Any]) -> Any:
        """Execute ``sql`` and return its first row, or None."""
        return connection.execute(sql.text, sql.params(values)).fetchone()

    @staticmethod
    def _all(connection: Any, sql: Sql, values: Mapping[str, Any]) -> list:
        """Execute ``sql`` and return all its rows."""
        return connection.execute(sql.text, sql.params(values)).fetchall()

    @staticmethod
    def _count(connection: Any, sql: Sql, values: Mapping[str, Any]) -> int:
        """Execute ``sql`` and return how many rows it changed."""
        return connection.execute(sql.text, sql.params(values)).rowcount

    # -- health -----------------------------------------------------------

    def ping(self) -> None:
        """Return when the database answers; raise ServiceUnavailable otherwise."""
        self._run(READ, lambda connection: self._one(connection, self._ping, {}))

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label!r})"

