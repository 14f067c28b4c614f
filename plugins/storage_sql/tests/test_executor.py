"""The executor, which runs every call of the SQL driver: the three kinds of call, the errors it translates, the
connections a process keeps, the retries, the turns of the SQLite write gate and the PostgreSQL watchdog.

Most tests run the executor alone, on a table of their own (``t``); the gate's tests run the record and state
stores' own writes through it, as the driver does.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

import psycopg
import pytest
from bastion_storage_sql import SqlDriver
from bastion_storage_sql.executor import READ, STATEMENT, TRANSACTION, SqlExecutor
from sqlalchemy import event

from kernel import Change, ServiceUnavailable, VersionConflict

from .sql_helpers import in_thread, sqlite_path

DOMAIN = "executor.test"


@pytest.fixture
def executors():
    """Open executors (``executors(url, **options)``) on databases given a table ``t``; closed after the test."""
    opened: list[SqlExecutor] = []

    def open_(url: str, **options) -> SqlExecutor:
        executor = SqlExecutor(url, options)
        opened.append(executor)
        with executor.engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (k VARCHAR(20) PRIMARY KEY, v INTEGER)")
        return executor

    yield open_
    for executor in opened:
        executor.close()




def _traced(owner) -> list[str]:
    """The statements the (new) connections of a driver or an executor run from now on (SQLite)."""
    statements: list[str] = []
    owner.dispose_connections()

    @event.listens_for(owner.engine, "connect")
    def _trace(dbapi_connection, _record):
        dbapi_connection.set_trace_callback(statements.append)

    return statements


def _rows(executor: SqlExecutor) -> list[tuple]:
    return [tuple(row) for row in executor.run(READ, lambda c: c.execute("SELECT k, v FROM t ORDER BY k").fetchall())]


# -- the three kinds of call ---------------------------------------------------------


def test_each_kind_of_call_sends_its_statements_and_nothing_else(sqlite_url, executors):
    executor = executors(sqlite_url)
    statements = _traced(executor)
    executor.run(STATEMENT, lambda c: c.execute("INSERT INTO t VALUES ('a', 1)"))
    assert statements == ["INSERT INTO t VALUES ('a', 1)"]  # a transaction of its own: no BEGIN, no COMMIT
    statements.clear()
    assert executor.run(READ, lambda c: c.execute("SELECT v FROM t").fetchall()) == [(1,)]
    assert statements == ["SELECT v FROM t"]
    statements.clear()

    def two(connection):
        connection.execute("UPDATE t SET v = 2")
        connection.execute("INSERT INTO t VALUES ('b', 2)")

    executor.run(TRANSACTION, two)
    assert statements == ["BEGIN IMMEDIATE", "UPDATE t SET v = 2", "INSERT INTO t VALUES ('b', 2)", "COMMIT"]
    assert _rows(executor) == [("a", 2), ("b", 2)]


def test_a_transaction_whose_work_refuses_is_rolled_back_and_the_refusal_is_the_callers(sqlite_url, executors):
    executor = executors(sqlite_url)

    def refused(connection):
        connection.execute("INSERT INTO t VALUES ('a', 1)")
        raise VersionConflict("record changed")

    with pytest.raises(VersionConflict):
        executor.run(TRANSACTION, refused)
    assert _rows(executor) == []  # on the same connection, kept for the next call: no transaction left open


def test_an_outage_is_503_and_a_bug_is_raised_as_it_is(sqlite_url, executors):
    executor = executors(sqlite_url)
    with pytest.raises(ServiceUnavailable) as info:
        executor.run(READ, lambda c: c.execute("SELECT * FROM no_such_table").fetchall())
    assert info.value.status == 503 and "no_such_table" not in str(info.value)
    with pytest.raises(sqlite3.ProgrammingError):  # wrong parameters: the caller's bug, never hidden as an outage
        executor.run(READ, lambda c: c.execute("SELECT ?", ()).fetchall())


def test_a_call_that_finds_no_free_connection_is_503_without_sending_anything(sqlite_url, executors):
    executor = executors(sqlite_url, pool_size=1, max_overflow=0, pool_timeout=0.05)
    statements = _traced(executor)

    def nested(connection):  # holds the only connection while a second call asks for one
        with pytest.raises(ServiceUnavailable):
            executor.run(STATEMENT, lambda c: c.execute("INSERT INTO t VALUES ('a', 1)"))
        return connection.execute("SELECT count(*) FROM t").fetchone()[0]

    assert executor.run(READ, nested) == 0
    assert statements == ["SELECT count(*) FROM t"]


# -- the connections a SQLite process keeps between calls --------------------------------


@pytest.mark.parametrize("pool_size", [1, 2])
def test_sqlite_keeps_at_most_pool_size_connections_between_calls(sqlite_url, executors, pool_size):
    executor = executors(sqlite_url, pool_size=pool_size)
    executor.dispose_connections()
    opened: list[int] = []
    event.listen(executor.engine, "connect", lambda *_: opened.append(1))
    for _ in range(10):
        executor.run(READ, lambda c: c.execute("SELECT 1").fetchall())
    assert len(opened) == 1 and executor.engine.pool.checkedout() == 1  # one connection, kept for the next call
    # Two calls at once (one within the other) hold two connections; at most pool_size stay checked out after.
    executor.run(READ, lambda c: executor.run(READ, lambda inner: inner.execute("SELECT 1").fetchall()))
    assert executor.engine.pool.checkedout() == pool_size
    executor.dispose_connections()
    assert executor.engine.pool.checkedout() == 0


def test_a_sqlite_read_on_a_kept_connection_that_broke_runs_again_on_a_fresh_one(sqlite_url, executors):
    """A read takes a kept connection; when that connection is of no use any more (closed under it), the read ends
    as any failed attempt does: the connection is dropped and the read runs once more, on a fresh one."""
    executor = executors(sqlite_url, pool_size=1)
    executor.run(STATEMENT, lambda c: c.execute("INSERT INTO t VALUES ('a', 1)"))
    kept = executor.run(READ, lambda c: c)
    kept.close()  # the kept connection breaks between two calls
    connections: list = []

    def read(connection):
        connections.append(connection)
        return connection.execute("SELECT v FROM t WHERE k = 'a'").fetchone()[0]

    assert executor.run(READ, read) == 1
    assert connections[0] is kept and connections[-1] is not kept and len(connections) == 2
    assert executor.run(READ, lambda c: c) is connections[-1]  # the fresh one is kept; the broken one is gone

    with pytest.raises(ZeroDivisionError):  # an error of the caller's own is the caller's, the connection kept
        executor.run(READ, lambda c: 1 / 0)
    assert executor.run(READ, lambda c: c) is connections[-1]
    assert _rows(executor) == [("a", 1)]


# -- retries: once, on a fresh connection, when nothing can have been applied ------------------


def _cut_by_the_server(url: str, work, times: int = 1):
    """``work``, whose first ``times`` runs find their connection ended by the server (``pg_terminate_backend``,
    as a restart or an administrator would) before they send anything; and the backends it ran on."""
    backends: list[int] = []

    def run(connection):
        backends.append(connection.info.backend_pid)
        if len(backends) <= times:
            with psycopg.connect(url, autocommit=True) as admin:
                ended = admin.execute("SELECT pg_terminate_backend(%s, 60000)", (backends[-1],)).fetchone()[0]
                assert ended
        return work(connection)

    return run, backends


def test_a_broken_read_is_run_again_on_a_fresh_connection(fresh_pg_url, executors):
    executor = executors(fresh_pg_url)
    work, backends = _cut_by_the_server(fresh_pg_url, lambda c: c.execute("SELECT 1").fetchone()[0])
    assert executor.run(READ, work) == 1
    assert len(backends) == 2 and backends[0] != backends[1]


def test_a_transaction_broken_before_its_commit_is_run_again(fresh_pg_url, executors):
    executor = executors(fresh_pg_url)
    work, backends = _cut_by_the_server(fresh_pg_url, lambda c: c.execute("INSERT INTO t VALUES ('a', 1)"))
    executor.run(TRANSACTION, work)
    assert len(backends) == 2
    assert _rows(executor) == [("a", 1)]


def test_a_broken_statement_is_never_run_again(fresh_pg_url, executors):
    """Once sent, a single writing statement may have been applied: its outcome is unknown, and the call is 503."""
    executor = executors(fresh_pg_url)
    work, backends = _cut_by_the_server(fresh_pg_url, lambda c: c.execute("INSERT INTO t VALUES ('a', 1)"))
    with pytest.raises(ServiceUnavailable):
        executor.run(STATEMENT, work)
    assert len(backends) == 1
    executor.run(STATEMENT, lambda c: c.execute("INSERT INTO t VALUES ('b', 2)"))  # the broken connection is gone
    assert _rows(executor) == [("b", 2)]


def test_a_call_is_run_twice_at_most(fresh_pg_url, executors):
    executor = executors(fresh_pg_url)
    work, backends = _cut_by_the_server(fresh_pg_url, lambda c: c.execute("SELECT 1").fetchone()[0], times=2)
    with pytest.raises(ServiceUnavailable):
        executor.run(READ, work)
    assert len(backends) == 2
    assert executor.run(READ, lambda c: c.execute("SELECT 2").fetchone()[0]) == 2


# -- the PostgreSQL watchdog --------------------------------------------------------


def test_a_call_without_an_answer_is_cut_at_its_deadline_and_not_run_again(fresh_pg_url, executors):
    executor = executors(fresh_pg_url, statement_timeout=0.2)  # the watchdog's deadline: 0.2 + 1 s
    runs: list[int] = []

    def waits_for_the_lock(connection):
        runs.append(connection.info.backend_pid)
        connection.execute("SET statement_timeout = 0")  # as a server that answers nothing: PostgreSQL cancels nothing
        return connection.execute("SELECT k FROM t").fetchall()

    with psycopg.connect(fresh_pg_url) as blocker:
        blocker.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")  # held until the block ends: only the watchdog
        with pytest.raises(ServiceUnavailable):                    # can end the call
            executor.run(READ, waits_for_the_lock)
        assert len(runs) == 1  # the database did not answer in time: a second try would wait as long
    # The cut connection was discarded: the next call is on a fresh one, with the configured statement timeout.
    assert executor.run(READ, lambda c: c.execute("SHOW statement_timeout").fetchone()[0]) == "200ms"


def test_without_a_statement_timeout_there_is_no_watchdog(fresh_pg_url, sqlite_url, executors):
    assert executors(fresh_pg_url, statement_timeout=0).watchdog is None
    assert executors(fresh_pg_url).watchdog is not None
    assert executors(sqlite_url).watchdog is None


# -- turns at the SQLite write gate --------------------------------------------------------


def test_reads_never_wait_for_a_turn_at_the_gate(sqlite_url, executors):
    executor = executors(sqlite_url, sqlite_busy_timeout=0.2)
    assert executor.gate.turn()  # this thread holds its process's turn: a write of it would wait
    try:
        assert executor.run(READ, lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0]) == 0
    finally:
        executor.gate.end_turn()


def test_a_thread_waits_for_its_process_turn_at_most_the_busy_timeout(sqlite_url):
    driver = SqlDriver(sqlite_url, options={"sqlite_busy_timeout": 0.2})
    try:
        driver.set(DOMAIN, "k", "old", 60)
        assert driver.executor.gate.turn()  # another thread of this process is writing, and does not end
        try:
            thread, outcome = in_thread(lambda: driver.set(DOMAIN, "k", "new", 60))
            thread.join(30)
            assert isinstance(outcome[0], ServiceUnavailable) and outcome[0].status == 503
        finally:
            driver.executor.gate.end_turn()
        assert driver.get(DOMAIN, "k") == "old"  # nothing was written
        driver.set(DOMAIN, "k", "new", 60)  # and the next turn is free
        assert driver.get(DOMAIN, "k") == "new"
    finally:
        driver.close()


def _queued_together(driver, works) -> list:
    """Run each of ``works`` in a thread of its own while this thread holds the gate; let them go once all
    wait in the queue (so that one turn takes them all); return their outcomes in order."""
    gate = driver.executor.gate
    assert gate.turn()
    try:
        threads = [in_thread(work) for work in works]
        while gate.queued() < len(works):
            threading.Event().wait(0.01)  # polling the queue's length: nothing signals it
    finally:
        gate.end_turn()
    for thread, _ in threads:
        thread.join(60)
    return [outcome[0] for _, outcome in threads]


def test_writes_queued_meanwhile_are_one_transaction_with_each_its_own_outcome(sqlite_url):
    driver = SqlDriver(sqlite_url)
    try:
        driver.set(DOMAIN, "session", "live", 60)
        statements = _traced(driver)
        keys = ["n1", "n2", "n1", "n3", "n1"]  # the same nonce three times: exactly one may be stored
        outcomes = _queued_together(driver, [lambda k=k: driver.add(DOMAIN, k, 1, 60, if_live="session")
                                             for k in keys])
        assert outcomes == [True, True, False, True, False]
        assert [driver.get(DOMAIN, k) for k in ("n1", "n2", "n3")] == [1, 1, 1]
        assert statements.count("COMMIT") == 1 and statements.count("BEGIN IMMEDIATE") == 1
        assert statements.count("SAVEPOINT bastion_write") == len(keys)
    finally:
        driver.close()


def test_a_refused_write_of_a_batch_is_rolled_back_alone(sqlite_url):
    driver = SqlDriver(sqlite_url)
    try:
        driver.commit(DOMAIN, [Change("insert", "M", f"r{i}", 0, {"v": 0}, {}) for i in range(4)])
        stale = 7  # r2 is at version 1: this update must meet a VersionConflict, and only it
        outcomes = _queued_together(driver, [
            lambda i=i: driver.commit(DOMAIN, [Change("update", "M", f"r{i}", stale if i == 2 else 1, {"v": i}, {})])
            for i in range(4)])
        assert isinstance(outcomes[2], VersionConflict)
        assert [o is None for o in outcomes] == [True, True, False, True]
        assert {r.id: (r.vsn, r.data["v"]) for r in driver.select(DOMAIN, "M")} == {
            "r0": (2, 0), "r1": (2, 1), "r2": (1, 0), "r3": (2, 3)}
    finally:
        driver.close()


def test_a_database_error_in_a_batch_runs_each_write_again_on_its_own(sqlite_url, caplog):
    driver = SqlDriver(sqlite_url)
    try:
        def broken(connection):
            connection.execute("INSERT INTO no_such_table VALUES (1)")

        works = [lambda: driver.set(DOMAIN, "a", 1, 60), lambda: driver.executor.run(STATEMENT, broken),
                 lambda: driver.set(DOMAIN, "b", 2, 60)]
        with caplog.at_level(logging.INFO, logger="bastion.storage_sql"):
            outcomes = _queued_together(driver, works)
        assert outcomes[0] is None and outcomes[2] is None
        assert isinstance(outcomes[1], ServiceUnavailable)
        with pytest.raises(ServiceUnavailable):  # what it raises on its own, too
            driver.executor.run(STATEMENT, broken)
        assert driver.get(DOMAIN, "a") == 1 and driver.get(DOMAIN, "b") == 2
        assert any("written one by one" in r.getMessage() for r in caplog.records)
    finally:
        driver.close()


def test_a_batch_the_database_refuses_fails_every_write_of_it_and_writes_nothing(sqlite_url):
    driver = SqlDriver(sqlite_url, options={"sqlite_busy_timeout": 0.2})
    other = sqlite3.connect(sqlite_path(sqlite_url), isolation_level=None)
    try:
        driver.set(DOMAIN, "k0", 0, 60)
        other.execute("BEGIN IMMEDIATE")  # a program that does not use the gate holds SQLite's write lock
        outcomes = _queued_together(driver, [lambda i=i: driver.set(DOMAIN, f"k{i}", i, 60) for i in range(1, 4)])
        assert all(isinstance(o, ServiceUnavailable) and o.status == 503 for o in outcomes)
        other.execute("ROLLBACK")
        assert [driver.get(DOMAIN, f"k{i}") for i in range(4)] == [0, None, None, None]
    finally:
        other.close()
        driver.close()
