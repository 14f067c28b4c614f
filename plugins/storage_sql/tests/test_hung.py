"""A PostgreSQL that does not answer: every call is 503 within its timeout, no thread waits longer, and the driver heals.

Two ways a database stops answering: a lock held by another session (PostgreSQL runs, and cancels the
statement at ``statement_timeout``), and a server frozen with SIGSTOP (it keeps the connections open and
answers nothing: the driver's own deadline cuts the call).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from bastion_storage_sql import SqlDriver

from kernel import Change, ServiceUnavailable
from kernel.testing import FakeClock

DOMAIN = "hung.test"
THREADS = 8


def _calls(driver: SqlDriver, i: int):
    """One call of each kind: reads, a single statement, a transaction, the probe."""
    return [
        lambda: driver.get(DOMAIN, "session"),
        lambda: driver.fetch(DOMAIN, "M", "a"),
        lambda: driver.add(DOMAIN, f"nonce {i}", 1, 60),
        lambda: driver.commit(DOMAIN, [Change("update", "M", "a", 1, {"n": i}, {})]),
        driver.ping,
    ][i % 5]


def _all_at_once(driver: SqlDriver, password: str) -> list[float]:
    """Run THREADS calls together; each must raise ServiceUnavailable, naming nothing of the server. Return how long each took."""
    barrier = threading.Barrier(THREADS)

    def one(i: int) -> float:
        call = _calls(driver, i)
        barrier.wait()
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable) as info:
            call()
        assert info.value.status == 503 and password not in str(info.value)
        return time.monotonic() - started

    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(one, range(THREADS)))


@pytest.fixture
def seeded():
    def seed(url: str, **options) -> SqlDriver:
        driver = SqlDriver(url, clock=FakeClock(), options=options)
        driver.set(DOMAIN, "session", {"user": "ann"}, 600)
        driver.commit(DOMAIN, [Change("insert", "M", "a", 0, {"n": 0}, {})])
        return driver

    return seed


def test_a_lock_held_by_another_session_is_503_at_the_statement_timeout(fresh_pg_url, postgres_server, seeded):
    driver = seeded(fresh_pg_url, statement_timeout=0.5, pool_size=2, max_overflow=0, pool_timeout=5)
    blocker = psycopg.connect(fresh_pg_url)
    try:
        blocker.execute("LOCK TABLE bastion_state, bastion_records IN ACCESS EXCLUSIVE MODE")  # until rollback
        started = time.monotonic()
        waited = _all_at_once(driver, postgres_server.password)
        # Two connections for eight calls: they queue for the pool, each waits its own half second at most.
        assert max(waited) < 0.5 * THREADS / 2 + 1.5, waited
        assert min(waited) >= 0.45, waited
        assert time.monotonic() - started < 5
        blocker.rollback()
        # PostgreSQL cancelled the statements and kept the connections: the same driver serves at once.
        assert driver.get(DOMAIN, "session") == {"user": "ann"}
        driver.commit(DOMAIN, [Change("update", "M", "a", 1, {"n": 1}, {})])
        assert driver.fetch(DOMAIN, "M", "a").vsn == 2
    finally:
        blocker.close()
        driver.close()


def test_a_frozen_server_is_503_within_the_timeout_and_heals(private_postgres, seeded):
    driver = seeded(private_postgres.url, statement_timeout=0.5, connect_timeout=1, pool_size=2, max_overflow=0,
                    pool_timeout=1)
    try:
        with ThreadPoolExecutor(2) as pool:  # two pooled connections, open and idle, as a server has them
            list(pool.map(lambda _: driver.get(DOMAIN, "session"), range(2)))
        private_postgres.pause()
        try:
            started = time.monotonic()
            waited = _all_at_once(driver, private_postgres.password)
            # A call on a pooled connection is cut at 0.5 + 1 s; one that waited for the pool (1 s) or a
            # new connection (1 s) gives up then: nothing waits on the frozen server for longer.
            assert max(waited) < 4, waited
            assert time.monotonic() - started < 5
        finally:
            private_postgres.resume()
        assert driver.get(DOMAIN, "session") == {"user": "ann"}  # fresh connections, no reopening
        driver.commit(DOMAIN, [Change("update", "M", "a", 1, {"n": 1}, {})])
        assert driver.fetch(DOMAIN, "M", "a").vsn == 2
        driver.ping()
    finally:
        driver.close()


def test_no_statement_timeout_with_zero(fresh_pg_url):
    driver = SqlDriver(fresh_pg_url, options={"statement_timeout": 0})
    try:
        with driver.engine.connect() as connection:
            assert connection.exec_driver_sql("SHOW statement_timeout").scalar() == "0"
    finally:
        driver.close()


def test_the_statement_timeout_is_the_sessions(fresh_pg_url):
    driver = SqlDriver(fresh_pg_url, options={"statement_timeout": 2.5})
    try:
        with driver.engine.connect() as connection:
            assert connection.exec_driver_sql("SHOW statement_timeout").scalar() == "2500ms"
    finally:
        driver.close()
