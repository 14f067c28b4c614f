"""What the record and state halves of the driver share: engine, statements, how calls run, health.

Every call of the driver runs on a pooled DBAPI connection (sqlite3 or
psycopg), with statements that SQLAlchemy compiled once when the driver
opened: no statement is built, compiled or cache-keyed per call. A call is one
of three kinds:

* ``READ``: one SELECT, outside any transaction (SQLite autocommit, PostgreSQL
  autocommit): one round trip, no BEGIN/COMMIT;
* ``STATEMENT``: one writing statement, in autocommit mode: a transaction
  of its own (one round trip on PostgreSQL, one ``execute`` on SQLite). On
  SQLite a writing statement outside a transaction takes the write lock when
  it starts, through the busy handler, exactly as ``BEGIN IMMEDIATE`` would:
  it can never fail at once with "database is locked" for a snapshot that a
  concurrent writer made stale (only a transaction that read first, then
  writes, can), so the BEGIN and the COMMIT around it would be two
  ``execute`` calls for nothing. Its rows (RETURNING) are read to the end, so
  the statement, and with it the transaction, is over when the call returns;
* ``TRANSACTION``: several statements within BEGIN (``BEGIN IMMEDIATE`` on
  SQLite) ... COMMIT.

On SQLite, every 64th write of a process also looks at the size of the WAL
file (one ``stat``); past ``sqlite_wal_limit`` it runs a TRUNCATE checkpoint
that waits at most a moment for readers, so that the WAL is cut back even
when readers kept the automatic checkpoints from completing.

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

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite

from bastion_storage_sql import migrate, settings
from bastion_storage_sql.engine import create_engine, parse_url, redact
from bastion_storage_sql.errors import UNAVAILABLE, is_read_only, is_transaction_conflict, unavailable
from bastion_storage_sql.gate import Write, WriteGate
from bastion_storage_sql.schema import state
from bastion_storage_sql.watchdog import Watch, Watchdog
from kernel import PROBE_DOMAIN, ServiceUnavailable, VersionConflict

log = logging.getLogger("bastion.storage_sql")

#: What the driver does with the schema when it opens: create or upgrade it,
#: insist that it is current (production), or trust it (tests of the schema itself).
SchemaMode = Literal["upgrade", "check", "none"]

#: The kinds of call (see the module's docstring).
READ, STATEMENT, TRANSACTION = "read", "statement", "transaction"

T = TypeVar("T")

#: SQLite writes of a process between two looks at the WAL's size.
WAL_CHECK_EVERY = 64

#: Milliseconds the driver's own TRUNCATE checkpoint waits for readers and writers before giving up for now.
CHECKPOINT_WAIT_MS = 100

#: Most seconds a ping (``/healthz``, ``bastion check``) waits at the SQLite write gate (less when
#: ``sqlite_busy_timeout`` is less): the gate's queue takes milliseconds, so longer means a writer is held back.
PING_WAIT = 1.0

#: Seconds between two looks, by a thread whose write's deadline passed while a turn held it, at whether
#: that turn put it back in the queue (it waits for the turn to settle it meanwhile: woken at once by that).
SETTLE_LOOK = 0.05

#: Seconds past ``statement_timeout`` a PostgreSQL call may wait for an answer before the driver cuts its
#: connection: PostgreSQL's own cancellation (which keeps the connection) comes first when the server runs.
WATCHDOG_GRACE = 1.0


class _BatchFailed(Exception):
    """A write of a shared transaction met a database error: the transaction is rolled back."""


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
        # ping writes this probe row (expired at once, so no call ever sees it) in a domain no tenant has.
        probe = self._insert(state).values(domain=sa.bindparam("d"), key=sa.bindparam("k"), value=None,
                                           n=sa.bindparam("n"), expires=sa.bindparam("e"))
        self._probe = self.compile(probe.on_conflict_do_update(
            index_elements=[state.c.domain, state.c.key], set_={"n": probe.excluded.n, "expires": probe.excluded.expires}))
        self._probes = itertools.count(1)
        self._wal_path = None if self._postgresql else f"{self.engine.url.database}-wal"
        self._wal_limit = int(self.settings["sqlite_wal_limit"])
        self._busy_ms = int(float(self.settings["sqlite_busy_timeout"]) * 1000)
        self._sqlite_writes = 0
        self._checkpoint_lock = threading.Lock()
        #: SQLite: pooled connections this process keeps checked out between calls (see :meth:`_checkout`).
        self._idle: list[Any] = []
        self._kept_connections = int(self.settings["pool_size"])
        self._closed = False
        #: SQLite: writers take turns here rather than in SQLite's sleeping busy handler.
        self._gate = (WriteGate(self.engine.url.database, self._busy_ms / 1000)
                      if not self._postgresql and self.settings["sqlite_write_gate"] else None)
        # PostgreSQL cancels a statement past statement_timeout; the watchdog ends a call that gets no answer at all.
        timeout = float(self.settings["statement_timeout"])
        self._watchdog = Watchdog(timeout + WATCHDOG_GRACE, self.label) if self._postgresql and timeout else None
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

    def _run(self, kind: str, work: Callable[[Any], T], conflicts: bool = False, wait: float | None = None) -> T:
        """Run ``work(dbapi_connection)`` as a call of ``kind``; translate the backend's errors.

        ``conflicts``: a PostgreSQL transaction rolled back for a deadlock or a
        serialisation failure is a VersionConflict (else ServiceUnavailable).
        A SQLite write waits for its turn at the write gate first (:mod:`.gate`),
        at most ``wait`` seconds (default ``sqlite_busy_timeout``).
        """
        if self._gate is None or kind == READ:
            return self._attempts(kind, work, conflicts)
        return self._gated(Write(kind, work, conflicts), wait)

    def _gated(self, write: Write, wait: float | None = None) -> Any:
        """Queue a SQLite write at the gate; write it, with whatever else is queued, when this thread's turn comes.

        Every write of a turn is refused (503) once its deadline passes while
        another process holds the lock file, and the others of the turn wait
        on (in the queue again once the write of the thread whose turn it is
        was refused): nothing any process does keeps a writer at the gate
        longer than its deadline.
        """
        gate = self._gate
        gate.submit(write, wait)
        if not gate.turn(max(0.0, write.deadline - time.monotonic())):
            # Past its deadline. A turn that took it refuses it by then, or is writing it: this thread waits for
            # that, not for the turn, which may wait on for the other writes of the turn (up to their deadlines),
            # and takes it back should the turn have put it back in the queue (its own write refused).
            while not gate.withdraw(write):
                if write.wait(SETTLE_LOOK):
                    return write.outcome()
            raise unavailable(TimeoutError("no turn at the SQLite write gate within sqlite_busy_timeout"), self.dialect)
        try:
            while not write.done:
                batch = gate.take()
                while batch and not gate.enter(min(queued.deadline for queued in batch)):
                    batch = self._refuse_late(batch)
                    if write.done:  # refused: the others of the turn go back to the queue, for their own threads
                        gate.put_back(batch)
                        batch = []
                if not batch:
                    continue
                try:
                    self._write_batch(batch)
                finally:
                    gate.leave()
        finally:
            gate.end_turn()
        return write.outcome()

    def _refuse_late(self, batch: list[Write]) -> list[Write]:
        """Refuse the writes of ``batch`` whose deadline has passed (503); return the others."""
        now, error = time.monotonic(), None
        for write in batch:
            if write.deadline <= now:
                if error is None:  # one line in the log for the turn, however many writes it refuses
                    error = unavailable(TimeoutError("the SQLite write gate's lock file stayed locked by another "
                                                     "process past the write's deadline"), self.dialect)
                    write.settle(False, error)
                else:
                    write.settle(False, ServiceUnavailable(UNAVAILABLE, backend=self.dialect))
        return [write for write in batch if not write.done]

    def _write_batch(self, batch: list[Write]) -> None:
        """Run the writes of one turn and settle each: one transaction for several, a savepoint each."""
        try:
            if len(batch) > 1:
                try:
                    outcomes = self._attempts(TRANSACTION, lambda connection: self._savepoints(connection, batch), False)
                except ServiceUnavailable:
                    # The database refused the transaction (locked past the busy timeout, a full disk):
                    # nothing of it was applied, and one by one would wait as long again for each.
                    for write in batch:
                        write.settle(False, ServiceUnavailable(UNAVAILABLE, backend=self.dialect))
                    return
                except Exception as failed:  # noqa: BLE001 - _BatchFailed, or an error the batch did not expect
                    # One write met a database error (a constraint), or the COMMIT failed otherwise: the
                    # transaction was rolled back, and each write is run again on its own, below, to get the
                    # outcome it would have had.
                    log.info("a batch of %d SQLite writes was rolled back and is written one by one: %s",
                             len(batch), failed if isinstance(failed, _BatchFailed) else type(failed).__name__)
                    outcomes = None
                if outcomes is not None:
                    for write, (ok, value) in zip(batch, outcomes, strict=True):
                        write.settle(ok, value)
                    return
            for write in batch:
                try:
                    write.settle(True, self._attempts(write.kind, write.work, write.conflicts))
                except Exception as error:  # noqa: BLE001 - handed to the thread that asked for this write
                    write.settle(False, error)
        finally:
            for write in batch:  # a failure of the code above must never leave a thread waiting for ever
                if not write.done:
                    write.settle(False, ServiceUnavailable(UNAVAILABLE, backend=self.dialect))

    def _savepoints(self, connection: Any, batch: list[Write]) -> list[tuple[bool, Any]]:
        """Run each write of ``batch`` within a savepoint of the open transaction; a database error fails them all."""
        outcomes: list[tuple[bool, Any]] = []
        for write in batch:
            connection.execute("SAVEPOINT bastion_write")
            try:
                value = write.work(connection)
            except self._dbapi_error as error:
                raise _BatchFailed(type(error).__name__) from None  # the transaction may be gone with it
            except Exception as error:  # noqa: BLE001 - this write's own refusal (a VersionConflict)
                connection.execute("ROLLBACK TO bastion_write")
                connection.execute("RELEASE bastion_write")
                outcomes.append((False, error))
                continue
            connection.execute("RELEASE bastion_write")
            outcomes.append((True, value))
        return outcomes

    def _attempts(self, kind: str, work: Callable[[Any], T], conflicts: bool) -> T:
        for attempt in (1, 2):
            try:
                fairy = self._checkout()
            except (sa_exc.SQLAlchemyError, self._dbapi_error) as error:
                # The pool timed out, or no new connection could be made: nothing was sent.
                raise self._failure(error, conflicts) from None
            connection = fairy.dbapi_connection
            watch = self._watch(fairy, connection)
            applied = False  # whether the database may have applied something
            try:
                if kind != TRANSACTION:
                    if self._postgresql:
                        connection.autocommit = True
                    try:
                        applied = kind != READ
                        result = work(connection)
                    finally:
                        if self._postgresql and not connection.closed:
                            connection.autocommit = False
                    if applied and not self._postgresql:
                        self._after_sqlite_write(connection)
                    return result
                if not self._postgresql:
                    connection.execute("BEGIN IMMEDIATE")
                try:
                    result = work(connection)
                except BaseException:
                    self._rollback(connection)
                    raise
                applied = True  # from here on the outcome of the COMMIT is unknown if it fails
                if self._postgresql:
                    connection.commit()
                else:
                    connection.execute("COMMIT")
                    self._after_sqlite_write(connection)
                return result
            except (sa_exc.SQLAlchemyError, self._dbapi_error) as error:
                timed_out, watch = self._release(watch), None
                if not self._postgresql:
                    # A COMMIT that failed (a full disk) may leave SQLite's transaction open.
                    self._rollback(connection)
                broken = timed_out or self._is_disconnect(error, connection)
                if broken:
                    fairy.invalidate(error)
                if broken and not applied and attempt == 1 and not timed_out:
                    continue  # nothing was applied: once more, on a fresh connection
                raise self._failure(error, conflicts) from None
            finally:
                if self._release(watch):
                    fairy.invalidate()  # cut just as the answer came: the connection is no use now
                elif not self._postgresql:
                    self._rollback(connection)  # if a transaction is open (the pool does not reset SQLite connections)
                self._checkin(fairy)
        raise AssertionError("unreachable")  # pragma: no cover

    def _checkout(self) -> Any:
        """A pooled connection for one call.

        SQLite: one this process used before and kept, when there is one
        (``list.pop`` and ``list.append`` are atomic: no lock), else a new
        checkout from the pool; so a call costs no pool checkout and return.
        At most ``pool_size`` are kept: past that, connections go back to
        the pool, so the pool's limits and its wait (``pool_timeout``) hold
        as before. PostgreSQL
        checks out from the pool every time, where the checkout sees a
        connection the server has closed.
        """
        if not self._postgresql:
            try:
                return self._idle.pop()
            except IndexError:
                pass
        return self.engine.raw_connection()

    def _checkin(self, fairy: Any) -> None:
        """Keep a valid SQLite connection for the next call while the process holds at most ``pool_size``
        (in use or kept); give anything else back to the pool, where a call waiting for one gets it."""
        if (not self._postgresql and fairy.is_valid and not self._closed
                and self.engine.pool.checkedout() <= self._kept_connections):
            self._idle.append(fairy)
        else:
            fairy.close()

    def _watch(self, fairy: Any, connection: Any) -> Watch | None:
        """Start the deadline of a PostgreSQL call (None without a statement timeout, or on SQLite)."""
        if self._watchdog is None:
            return None
        return self._watchdog.watch(fairy.info, connection.fileno())

    def _release(self, watch: Watch | None) -> bool:
        """End a call's deadline; return whether it passed (the connection was cut)."""
        return watch is not None and self._watchdog.release(watch)  # type: ignore[union-attr]

    def _rollback(self, connection: Any) -> None:
        try:
            if self._postgresql:
                if not connection.closed:
                    connection.rollback()
            elif connection.in_transaction:
                connection.execute("ROLLBACK")
        except (self._dbapi_error, sa_exc.SQLAlchemyError):
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
            return unavailable(error, self.dialect)
        if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
            return unavailable(error, self.dialect)
        if isinstance(error, self._outage_errors) or is_read_only(error):
            return unavailable(error, self.dialect)
        return error

    @staticmethod
    def _one(connection: Any, sql: Sql, values: Mapping[str, Any]) -> Any:
        """Execute ``sql`` and return its first row, or None (the rows read to the end: the statement is over)."""
        rows = connection.execute(sql.text, sql.params(values)).fetchall()
        return rows[0] if rows else None

    @staticmethod
    def _all(connection: Any, sql: Sql, values: Mapping[str, Any]) -> list:
        """Execute ``sql`` and return all its rows."""
        return connection.execute(sql.text, sql.params(values)).fetchall()

    @staticmethod
    def _count(connection: Any, sql: Sql, values: Mapping[str, Any]) -> int:
        """Execute ``sql`` and return how many rows it changed."""
        return connection.execute(sql.text, sql.params(values)).rowcount

    # -- the SQLite WAL ---------------------------------------------------

    def _after_sqlite_write(self, connection: Any) -> None:
        """Now and then, checkpoint a WAL that has grown past the limit (on the caller's connection, after its COMMIT)."""
        self._sqlite_writes += 1
        if self._sqlite_writes % WAL_CHECK_EVERY or self.wal_size() <= self._wal_limit:
            return
        if not self._checkpoint_lock.acquire(blocking=False):
            return  # another thread of this process is at it
        try:
            self._checkpoint(connection)
        except self._dbapi_error as error:  # the caller's write has succeeded: a later write tries again
            log.info("SQLite checkpoint skipped: %s", error)
        finally:
            self._checkpoint_lock.release()

    def _checkpoint(self, connection: Any) -> bool:
        # TRUNCATE copies every frame into the database and empties the WAL; it
        # waits for readers through the busy handler, here only briefly: if they
        # stay, it does what a passive checkpoint can and says so.
        connection.execute(f"PRAGMA busy_timeout = {CHECKPOINT_WAIT_MS}")
        try:
            busy = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        finally:
            connection.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
        return not busy

    def wal_size(self) -> int:
        """The size of the SQLite WAL file in bytes (0 on PostgreSQL, or when there is none)."""
        if self._wal_path is None:
            return 0
        try:
            return os.path.getsize(self._wal_path)
        except OSError:
            return 0

    def checkpoint(self) -> bool:
        """Checkpoint and truncate the SQLite WAL now; return whether it completed (always True on PostgreSQL)."""
        if self._postgresql:
            return True
        return self._run(READ, self._checkpoint)

    # -- health -----------------------------------------------------------

    def ping(self) -> None:
        """Return when the database accepts a write; raise ServiceUnavailable otherwise.

        The write is one upsert of a probe row in a domain no tenant can have
        (:data:`kernel.core.driver.PROBE_DOMAIN`), expired as soon as written: a
        full disk, a read-only database or a lock held too long fails it. On
        SQLite it waits at the write gate at most :data:`PING_WAIT`: a probe
        (``/healthz``) is answered within a load balancer's timeout, and a
        worker's threads do not pile up behind a gate another process holds.
        """
        values = {"d": PROBE_DOMAIN, "k": "ping", "n": next(self._probes), "e": self.clock()}
        try:
            self._run(STATEMENT, lambda connection: connection.execute(self._probe.text, self._probe.params(values)),
                      wait=min(self._busy_ms / 1000, PING_WAIT))
        except (sa_exc.SQLAlchemyError, self._dbapi_error) as error:
            raise unavailable(error, self.dialect) from None  # whatever refused the write, the database cannot serve

    def dispose_connections(self) -> None:
        """Close every connection not in use now (the next calls open new ones)."""
        while self._idle:
            try:
                self._idle.pop().close()
            except IndexError:  # another thread took the last one
                break
        self.engine.pool.dispose()

    def close(self) -> None:
        """Close every pooled connection."""
        if self._watchdog is not None:
            self._watchdog.close()
        self._closed = True
        self.dispose_connections()
        self.engine.dispose()
        if self._gate is not None:
            self._gate.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label!r})"

