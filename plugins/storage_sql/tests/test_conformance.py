"""The SQL driver passes the whole conformance suite on SQLite and on PostgreSQL."""

import pytest
from bastion_storage_sql import SqlDriver

from kernel.testing import DriverSuite


class TestSqliteDriver(DriverSuite):
    @pytest.fixture
    def driver(self, sqlite_url, clock):
        driver = SqlDriver(sqlite_url, clock=clock)
        yield driver
        driver.close()

    @pytest.fixture
    def reopen(self, sqlite_url, clock):
        return lambda: SqlDriver(sqlite_url, clock=clock, schema="check")


@pytest.fixture(scope="module")
def pg_url(postgres_server):
    """One database for the PostgreSQL suite: every test works in fresh domains."""
    url = postgres_server.create_database("conformance")
    SqlDriver(url).close()  # creates the schema once
    return url


class TestPostgresDriver(DriverSuite):
    @pytest.fixture
    def driver(self, pg_url, clock):
        driver = SqlDriver(pg_url, clock=clock, schema="check")
        yield driver
        driver.close()

    @pytest.fixture
    def reopen(self, pg_url, clock):
        return lambda: SqlDriver(pg_url, clock=clock, schema="check")
