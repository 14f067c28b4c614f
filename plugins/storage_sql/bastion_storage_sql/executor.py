"""The executor: how every call of the SQL driver reaches the database.

The record and state stores (:mod:`.records`, :mod:`.state`) build their
statements and say what a call does, as a function of a DBAPI connection
(sqlite3 or psycopg); the executor runs it. It owns what a call needs
besides its statements: the engine and its pool, the connections a process
keeps between calls, the retries, the SQLite write gate (:mod:`.gate`), the
PostgreSQL watchdog (:mod:`.watchdog`), the upkeep of the SQLite WAL
(:mod:`.wal`), and the translation of the backend's errors into the
kernel's. A call is one of three kinds:

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

A pooled PostgreSQL connection that the server has closed (a restart, an idle
timeout) is seen without a round trip when it is checked out (its socket is
readable while it should be silent) and replaced by a fresh one. A connection
that breaks during a call is invalidated; the call is then retried once on a
fresh connection only when nothing it did can have been applied: a READ, or a
TRANSACTION that broke before its COMMIT was sent. A STATEMENT that broke
after it was sent, or a COMMIT, has an unknown outcome and is never retried,
and neither is a call the watchdog cut (the database did not answer in time:
a second try would wait as long): the caller gets ServiceUnavailable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite

from bastion_storage_sql import settings
from bastion_storage_sql.engine import create_engine, parse_url, redact
from bastion_storage_sql.errors import UNAVAILABLE, is_read_only, is_transaction_conflict, unavailable
from bastion_storage_sql.gate import Write, WriteGate
from bastion_storage_sql.sql import Sql
from bastion_storage_sql.wal import Wal
from bastion_storage_sql.watchdog import Watch, Watchdog
from kernel import ServiceUnavailable, VersionConflict

if TYPE_CHECKING:
    from sqlalchemy.engine.interfaces import DBAPIModule

log = logging.getLogger("bastion.storage_sql")

#: The kinds of call (see the module's docstring).
READ, STATEMENT, TRANSACTION = "read", "statement", "transaction"

T = TypeVar("T")

#: Most seconds a ping (``/healthz``, ``bastion check``) waits at the SQLite write gate (less when
#: ``sqlite_busy_timeout`` is less): the gate's queue takes milliseconds, so longer means a writer is held back.
PING_WAIT = 1.0

#: Seconds between two looks, by a thread whose write's deadline passed while a turn held it, at whether
#: that turn put it back in the queue (it waits for the turn to settle it meanwhile: woken at once by that).
SETTLE_LOOK = 0.05

#: Seconds past ``statement_timeout`` a PostgreSQL call may wait for an answer before the driver cuts its
#: connection: PostgreSQL's own cancellation (which keeps the connection) comes first when the server runs.
WATCHDOG_GRACE = 1.0

#: What an attempt returns when its connection broke before anything could be applied: the call may run again.
_AGAIN: Any = object()


class _BatchFailed(Exception):
    """A write of a shared transaction met a database error: the transaction is rolled back."""


class _Attempt:
    """One try of a call on one pooled connection: the connection, its deadline, and whether the database may
    have applied anything of the call yet (then the call is never tried again)."""

    __slots__ = ("fairy", "connection", "watch", "applied")

    def __init__(self, fairy: Any, watch: Watch | None):
        self.fairy = fairy
        self.connection = fairy.dbapi_connection
        self.watch = watch
        self.applied = False


class SqlExecutor:
    """Runs the calls of the SQL driver on one database: ``SqlExecutor(url, options=None)``.

    ``options`` are ``[storage_sql]`` values (defaults for the missing ones).
    The executor neither creates nor checks the schema: the driver does,
    through :attr:`engine`, before its first call.
    """

    def __init__(self, url: str, options: Mapping[str, Any] | None = None):
        self.label = redact(url)
        self.settings = {**settings.defaults(), **(options or {})}
        self.engine = create_engine(parse_url(url), self.settings)
        self.dialect: str = self.engine.dialect.name
        self.postgresql = self.dialect == "postgresql"
        #: The dialect's INSERT, for ON CONFLICT upserts.
        self.insert = postgresql.insert if self.postgresql else sqlite.insert
        dbapi = self.engine.dialect.loaded_dbapi
        #: What the DBAPI raises for a duplicate key: the stores' compare-and-set inserts catch it.
        self.integrity_error: type[Exception] = dbapi.IntegrityError
        self._dbapi_error: type[DBAPIModule.Error] = dbapi.Error
        self._errors = (sa_exc.SQLAlchemyError, dbapi.Error)  # whatever the database or the pool can raise
        self._outage_errors = (dbapi.OperationalError, dbapi.InterfaceError)
        self._busy_ms = int(float(self.settings["sqlite_busy_timeout"]) * 1000)
        #: SQLite: pooled connections this process keeps checked out between calls (see :meth:`_checkout`).
        self._idle: list[Any] = []
        self._kept_connections = int(self.settings["pool_size"])
        self._closed = False
        #: SQLite: its WAL file, checkpointed now and then after writes (None on PostgreSQL).
        self.wal: Wal | None = None
        #: SQLite: writers take turns here rather than in SQLite's sleeping busy handler (None when off).
        self.gate: WriteGate | None = None
        if not self.postgresql:
            database = self.engine.url.database
            assert database is not None  # parse_url refuses a SQLite URL without a file path
            self.wal = Wal(database, int(self.settings["sqlite_wal_limit"]), self._busy_ms, dbapi.Error)
            if self.settings["sqlite_write_gate"]:
                self.gate = WriteGate(database, self._busy_ms / 1000)
        # PostgreSQL cancels a statement past statement_timeout; the watchdog ends a call that gets no answer at all.
        timeout = float(self.settings["statement_timeout"])
        #: PostgreSQL: cuts the connection of a call without an answer past its deadline (None without a timeout).
        self.watchdog = Watchdog(timeout + WATCHDOG_GRACE, self.label) if self.postgresql and timeout else None
        self._kinds: dict[str, Callable[[_Attempt, Callable[[Any], Any]], Any]] = {
            READ: self._read, STATEMENT: self._statement, TRANSACTION: self._transaction}

    def compile(self, statement: Any) -> Sql:
        """Compile a SQLAlchemy statement once, for this database."""
        return Sql(statement, self.engine.dialect)

    # -- running calls ----------------------------------------------------

    def run(self, kind: str, work: Callable[[Any], T], conflicts: bool = False, wait: float | None = None) -> T:
        """Run ``work(dbapi_connection)`` as a call of ``kind``; translate the backend's errors.

        ``conflicts``: a PostgreSQL transaction rolled back for a deadlock or a
        serialisation failure is a VersionConflict (else ServiceUnavailable).
        A SQLite write waits for its turn at the write gate first (:mod:`.gate`),
        at most ``wait`` seconds (default ``sqlite_busy_timeout``).
        """
        gate = self.gate
        if gate is None or kind == READ:
            return self._call(kind, work, conflicts)
        return self._gated(gate, Write(kind, work, conflicts), wait)

    def ping(self, work: Callable[[Any], Any]) -> None:
        """Run the write that tells whether the database accepts writes; raise ServiceUnavailable if it fails.

        On SQLite it waits at the write gate at most :data:`PING_WAIT`: a probe
        (``/healthz``) is answered within a load balancer's timeout, and a
        worker's threads do not pile up behind a gate another process holds.
        """
        try:
            self.run(STATEMENT, work, wait=min(self._busy_ms / 1000, PING_WAIT))
        except self._errors as error:
            raise unavailable(error, self.dialect) from None  # whatever refused the write, the database cannot serve

    def _call(self, kind: str, work: Callable[[Any], T], conflicts: bool) -> T:
        """Run a call; once more, on a fresh connection, when the first broke before anything could be applied."""
        result = self._attempt(kind, work, conflicts, last=False)
        if result is _AGAIN:
            result = self._attempt(kind, work, conflicts, last=True)
        return result

    def _attempt(self, kind: str, work: Callable[[Any], T], conflicts: bool, last: bool) -> T:
        """Run ``work`` once, as a call of ``kind`` on a connection of its own; :data:`_AGAIN` when it may run again."""
        attempt = self._start(conflicts)
        try:
            return self._kinds[kind](attempt, work)
        except self._errors as error:
            if self._recover(attempt, error) and not last:
                return _AGAIN  # nothing was applied: once more, on a fresh connection
            raise self._failure(error, conflicts) from None
        finally:
            self._finish(attempt)

    def _start(self, conflicts: bool) -> _Attempt:
        """A pooled connection for one attempt, and the attempt's deadline."""
        try:
            fairy = self._checkout()
        except self._errors as error:
            # The pool timed out, or no new connection could be made: nothing was sent.
            raise self._failure(error, conflicts) from None
        return _Attempt(fairy, None if self.watchdog is None else self._watch(fairy))

    def _recover(self, attempt: _Attempt, error: BaseException) -> bool:
        """After a database error: end the attempt's deadline, end what SQLite may keep open, discard a broken
        connection; return whether the call may run again (its connection broke, and neither was anything
        applied nor did the watchdog cut it: that database did not answer in time, and would not now)."""
        cut = self._release(attempt)
        if not self.postgresql:
            self._rollback(attempt.connection)  # a COMMIT that failed (a full disk) may leave the transaction open
        if not (cut or self._is_disconnect(error, attempt.connection)):
            return False  # the connection is sound: the error is the call's own
        attempt.fairy.invalidate(error)
        return not (cut or attempt.applied)

    def _finish(self, attempt: _Attempt) -> None:
        """End an attempt: its deadline, a transaction SQLite may keep open, and its connection's loan."""
        if attempt.watch is not None and self._release(attempt):
            attempt.fairy.invalidate()  # cut just as the answer came: the connection is no use now
        elif not self.postgresql:
            self._rollback(attempt.connection)  # if a transaction is open (the pool does not reset SQLite connections)
        self._checkin(attempt.fairy)

    # -- the three kinds of call ----------------------------------------------

    def _read(self, attempt: _Attempt, work: Callable[[Any], T]) -> T:
        """A READ: nothing it does is applied, so it may always run again."""
        return self._outside_transaction(attempt, work, writes=False)

    def _statement(self, attempt: _Attempt, work: Callable[[Any], T]) -> T:
        """A STATEMENT: applied, for all the caller can tell, from the moment it is sent."""
        result = self._outside_transaction(attempt, work, writes=True)
        if self.wal is not None:
            self.wal.after_write(attempt.connection)
        return result

    def _outside_transaction(self, attempt: _Attempt, work: Callable[[Any], T], writes: bool) -> T:
        """Run ``work`` in autocommit mode: PostgreSQL's connections are put in it for the call, SQLite's are
        in it between the transactions the executor begins."""
        connection = attempt.connection
        if not self.postgresql:
            attempt.applied = writes
            return work(connection)
        connection.autocommit = True
        try:
            attempt.applied = writes
            return work(connection)
        finally:
            if not connection.closed:
                connection.autocommit = False

    def _transaction(self, attempt: _Attempt, work: Callable[[Any], T]) -> T:
        """A TRANSACTION: rolled back when ``work`` fails; applied, for all the caller can tell, once COMMIT is sent."""
        connection = attempt.connection
        if not self.postgresql:
            connection.execute("BEGIN IMMEDIATE")
        try:
            result = work(connection)
        except BaseException:
            self._rollback(connection)
            raise
        attempt.applied = True  # from here on the outcome of the COMMIT is unknown if it fails
        if self.postgresql:
            connection.commit()
        else:
            connection.execute("COMMIT")
            self.wal.after_write(connection)  # type: ignore[union-attr]
        return result

    # -- connections ------------------------------------------------------

    def _checkout(self) -> Any:
        """A pooled connection for one call.

        SQLite: one this process used before and kept, when there is one
        (``list.pop`` and ``list.append`` are atomic: no lock), else a new
        checkout from the pool; so a call costs no pool checkout and return.
        At most ``pool_size`` are kept: past that, connections go back to
        the pool, so the pool's limits and its wait (``pool_timeout``) hold
        as before. PostgreSQL checks out from the pool every time, where the
        checkout sees a connection the server has closed.
        """
        if not self.postgresql:
            try:
                return self._idle.pop()
            except IndexError:
                pass
        return self.engine.raw_connection()

    def _checkin(self, fairy: Any) -> None:
        """Keep a valid SQLite connection for the next call while fewer than ``pool_size`` are kept; give
        anything else back to the pool, where a call waiting for one gets it.

        A call takes a kept connection before it asks the pool, so the pool is asked only when none is kept:
        then every connection it counts out is in use, and its limits and its wait (``pool_timeout``) hold as
        they would without the kept ones. Counting the kept ones costs no look at the pool's queue (and its
        lock) at every call.
        """
        # (``dbapi_connection`` is what the fairy's ``is_valid`` looks at, without the property's call.)
        if not self.postgresql and len(self._idle) < self._kept_connections and fairy.dbapi_connection is not None \
                and not self._closed:
            self._idle.append(fairy)
        else:
            fairy.close()

    def _watch(self, fairy: Any) -> Watch | None:
        """Start the deadline of a PostgreSQL call (None without a statement timeout, or on SQLite)."""
        if self.watchdog is None:
            return None
        return self.watchdog.watch(fairy.info, fairy.dbapi_connection.fileno())

    def _release(self, attempt: _Attempt) -> bool:
        """End an attempt's deadline (the first time only); return whether it passed (the connection was cut)."""
        watch, attempt.watch = attempt.watch, None
        return watch is not None and self.watchdog.release(watch)  # type: ignore[union-attr]

    def _rollback(self, connection: Any) -> None:
        """End the transaction ``connection`` may have open; a broken connection is left to the pool."""
        try:
            if self.postgresql:
                if not connection.closed:
                    connection.rollback()
            elif connection.in_transaction:
                connection.execute("ROLLBACK")
        except self._errors:
            pass  # a broken connection: the pool discards it

    def _is_disconnect(self, error: BaseException, connection: Any) -> bool:
        """Whether ``error`` broke the connection (it is of no use any more)."""
        if isinstance(error, sa_exc.DBAPIError):
            return error.connection_invalidated
        if not isinstance(error, self._dbapi_error):
            return False
        return self.engine.dialect.is_disconnect(error, connection, None)

    def _failure(self, error: Exception, conflicts: bool) -> Exception:
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

    # -- the SQLite write gate --------------------------------------------

    def _gated(self, gate: WriteGate, write: Write, wait: float | None = None) -> Any:
        """Queue a SQLite write at the gate; write it, with whatever else is queued, when this thread's turn comes.

        Every write of a turn is refused (503) once its deadline passes while
        another process holds the lock file, and the others of the turn wait
        on (in the queue again once the write of the thread whose turn it is
        was refused): nothing any process does keeps a writer at the gate
        longer than its deadline.
        """
        gate.submit(write, wait)
        if not gate.turn(max(0.0, write.deadline - time.monotonic())):
            return self._without_turn(gate, write)
        try:
            while not write.done:
                self._take_turn(gate, write)
        finally:
            gate.end_turn()
        return write.outcome()

    def _without_turn(self, gate: WriteGate, write: Write) -> Any:
        """The outcome of a write whose deadline passed before its thread's turn came.

        A turn that took it refuses it by then, or is writing it: this thread
        waits for that, not for the turn, which may wait on for the other
        writes of the turn (up to their deadlines), and takes it back should
        the turn have put it back in the queue (its own write refused).
        """
        while not gate.withdraw(write):
            if write.wait(SETTLE_LOOK):
                return write.outcome()
        raise unavailable(TimeoutError("no turn at the SQLite write gate within sqlite_busy_timeout"), self.dialect)

    def _take_turn(self, gate: WriteGate, write: Write) -> None:
        """One turn at the file: take the writes queued by now, wait for the other processes, write them."""
        batch = self._entered(gate, write, gate.take())
        if not batch:
            return
        try:
            self._write_batch(batch)
        finally:
            gate.leave()

    def _entered(self, gate: WriteGate, write: Write, batch: list[Write]) -> list[Write]:
        """Take the file for ``batch``, refusing its writes whose deadline passes while another process holds it;
        return the writes to write now: none when every one was refused, or when ``write``, this thread's own,
        was (the others go back to the queue, for their own threads)."""
        while batch and not gate.enter(min(queued.deadline for queued in batch)):
            batch = self._refuse_late(batch)
            if write.done:
                gate.put_back(batch)
                return []
        return batch

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
            if len(batch) == 1 or not self._write_together(batch):
                self._write_each(batch)
        finally:
            self._refuse_unsettled(batch)  # a failure of the code above must never leave a thread waiting for ever

    def _write_together(self, batch: list[Write]) -> bool:
        """Write several writes in one transaction and settle each; False when each must be written on its own.

        One write met a database error (a constraint), or the COMMIT failed
        otherwise: the transaction was rolled back, and each write, written
        on its own, gets the outcome it would have had.
        """
        try:
            outcomes = self._call(TRANSACTION, lambda connection: self._savepoints(connection, batch), False)
        except ServiceUnavailable:
            # The database refused the transaction (locked past the busy timeout, a full disk):
            # nothing of it was applied, and one by one would wait as long again for each.
            self._refuse_unsettled(batch)
            return True
        except Exception as failed:  # noqa: BLE001 - _BatchFailed, or an error the batch did not expect
            log.info("a batch of %d SQLite writes was rolled back and is written one by one: %s",
                     len(batch), failed if isinstance(failed, _BatchFailed) else type(failed).__name__)
            return False
        for write, (ok, value) in zip(batch, outcomes, strict=True):
            write.settle(ok, value)
        return True

    def _write_each(self, batch: list[Write]) -> None:
        """Write each write of ``batch`` as a call of its own, and settle it."""
        for write in batch:
            try:
                write.settle(True, self._call(write.kind, write.work, write.conflicts))
            except Exception as error:  # noqa: BLE001 - handed to the thread that asked for this write
                write.settle(False, error)

    def _refuse_unsettled(self, batch: list[Write]) -> None:
        """Refuse (503) every write of ``batch`` not settled yet."""
        for write in batch:
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

    # -- upkeep -----------------------------------------------------------

    def wal_size(self) -> int:
        """The size of the SQLite WAL file in bytes (0 on PostgreSQL, or when there is none)."""
        return 0 if self.wal is None else self.wal.size()

    def checkpoint(self) -> bool:
        """Checkpoint and truncate the SQLite WAL now; return whether it completed (always True on PostgreSQL)."""
        if self.wal is None:
            return True
        return self.run(READ, self.wal.checkpoint)

    def dispose_connections(self) -> None:
        """Close every connection not in use now (the next calls open new ones)."""
        while self._idle:
            try:
                self._idle.pop().close()
            except IndexError:  # another thread took the last one
                break
        self.engine.pool.dispose()

    def close(self) -> None:
        """Stop the watchdog, close every pooled connection and the gate's lock file."""
        if self.watchdog is not None:
            self.watchdog.close()
        self._closed = True
        self.dispose_connections()
        self.engine.dispose()
        if self.gate is not None:
            self.gate.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label!r})"
