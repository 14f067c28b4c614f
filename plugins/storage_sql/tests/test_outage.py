"""Outages surface as ServiceUnavailable, say nothing of the backend, and heal by themselves."""

import sqlite3

import pytest
from bastion_storage_sql import SqlDriver

from kernel import Change, ServiceUnavailable
from kernel.testing import FakeClock

DOMAIN = "outage.test"


def test_postgres_outage_then_recovery_without_reopening(private_postgres):
    driver = SqlDriver(private_postgres.url, clock=FakeClock(), options={"connect_timeout": 2})
    try:
        driver.commit(DOMAIN, [Change("insert", "M", "a", 0, {"n": 1}, {"k": 1})])
        driver.set(DOMAIN, "session", {"user": "ann"}, 60)

        private_postgres.stop()
        calls = [
            driver.ping,
            lambda: driver.fetch(DOMAIN, "M", "a"),
            lambda: driver.select(DOMAIN, "M", {"k": 1}),
            lambda: driver.commit(DOMAIN, [Change("update", "M", "a", 1, {"n": 2}, {"k": 1})]),
            lambda: driver.get(DOMAIN, "session"),
            lambda: driver.add(DOMAIN, "nonce", 1, 60),
            lambda: driver.incr(DOMAIN, "hits", 1, 60),
            lambda: driver.window_add(DOMAIN, "w", "m", 1, 60),
        ]
        for call in calls:
            with pytest.raises(ServiceUnavailable) as info:
                call()
            message = str(info.value)
            assert private_postgres.password not in message and str(private_postgres.port) not in message
            assert info.value.status == 503

        private_postgres.start()
        driver.ping()
        assert driver.fetch(DOMAIN, "M", "a").vsn == 1  # the failed update applied nothing
        driver.commit(DOMAIN, [Change("update", "M", "a", 1, {"n": 2}, {"k": 1})])
        assert driver.fetch(DOMAIN, "M", "a").data == {"n": 2}
        assert driver.get(DOMAIN, "session") == {"user": "ann"}
        assert driver.add(DOMAIN, "nonce", 1, 60) is True
    finally:
        driver.close()


def test_postgres_down_at_open_is_unavailable(private_postgres):
    url = private_postgres.url
    private_postgres.stop()
    with pytest.raises(ServiceUnavailable):
        SqlDriver(url, options={"connect_timeout": 2})


def test_sqlite_lock_held_past_the_busy_timeout_is_unavailable(sqlite_url, tmp_path):
    driver = SqlDriver(sqlite_url, options={"sqlite_busy_timeout": 0.2})
    blocker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(ServiceUnavailable) as info:
            driver.set(DOMAIN, "k", 1, 60)
        assert str(tmp_path) not in str(info.value) and "locked" not in str(info.value)
        assert driver.get(DOMAIN, "k") is None  # WAL: readers go on beside the writer
        blocker.execute("ROLLBACK")
        driver.set(DOMAIN, "k", 1, 60)
        assert driver.get(DOMAIN, "k") == 1
    finally:
        blocker.close()
        driver.close()


def test_exhausted_pool_is_unavailable(sqlite_url):
    driver = SqlDriver(sqlite_url, options={"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.05})
    try:
        held = driver.engine.connect()
        with pytest.raises(ServiceUnavailable):
            driver.fetch(DOMAIN, "M", "a")
        held.close()
        assert driver.fetch(DOMAIN, "M", "a") is None
    finally:
        driver.close()


def test_postgres_restart_is_invisible_to_the_next_calls(private_postgres):
    """A pooled connection the server closed is replaced at checkout, before any statement is sent."""
    driver = SqlDriver(private_postgres.url, clock=FakeClock(), options={"connect_timeout": 2})
    try:
        driver.set(DOMAIN, "session", {"user": "ann"}, 60)
        private_postgres.stop()
        private_postgres.start()
        assert driver.add(DOMAIN, "nonce", 1, 60) is True  # a single-statement write: no 503
        private_postgres.stop()
        private_postgres.start()
        assert driver.get(DOMAIN, "session") == {"user": "ann"}
    finally:
        driver.close()


def test_postgres_connection_broken_in_a_call_is_retried_only_when_nothing_was_applied(private_postgres, monkeypatch):
    """Reads and transactions that broke before COMMIT are retried once; a sent single statement is not."""
    monkeypatch.setattr("bastion_storage_sql.engine.socket_is_quiet", lambda fileno: True)  # hide the checkout test
    driver = SqlDriver(private_postgres.url, clock=FakeClock(), options={"connect_timeout": 2})
    try:
        driver.set(DOMAIN, "session", {"user": "ann"}, 60)

        def restart():
            private_postgres.stop()
            private_postgres.start()

        restart()
        assert driver.get(DOMAIN, "session") == {"user": "ann"}  # a read: retried
        restart()
        driver.commit(DOMAIN, [Change("insert", "M", "a", 0, {"n": 1}, {})])  # a transaction: retried
        assert driver.fetch(DOMAIN, "M", "a").vsn == 1
        restart()
        with pytest.raises(ServiceUnavailable):
            driver.add(DOMAIN, "nonce", 1, 60)  # a statement in flight may have been applied: never retried
        assert driver.add(DOMAIN, "nonce", 1, 60) is True  # the broken connection is gone
    finally:
        driver.close()


def test_a_read_only_postgres_fails_ping_and_writes_but_serves_reads(postgres_server, fresh_pg_url):
    """A hot standby or a database set read-only still answers SELECT 1: ping must write to know better."""
    driver = SqlDriver(fresh_pg_url, clock=FakeClock())
    driver.set(DOMAIN, "session", {"user": "ann"}, 60)
    driver.close()
    database = fresh_pg_url.rsplit("/", 1)[1]
    admin = SqlDriver(postgres_server.url, schema="none")
    with admin.engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
            f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
    admin.close()
    driver = SqlDriver(fresh_pg_url, clock=FakeClock(), schema="check")
    try:
        for call in (driver.ping, lambda: driver.set(DOMAIN, "k", 1, 60),
                     lambda: driver.commit(DOMAIN, [Change("insert", "M", "a", 0, {}, {})])):
            with pytest.raises(ServiceUnavailable):
                call()
        assert driver.get(DOMAIN, "session") == {"user": "ann"}
    finally:
        driver.close()
