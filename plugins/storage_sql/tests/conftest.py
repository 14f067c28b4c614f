"""Fixtures of the SQL driver's tests: one private PostgreSQL server for the whole run."""

from __future__ import annotations

import os
import uuid

import pytest
from bastion_storage_sql.testing import PostgresServer, PostgresServerError, find_bindir


def _server() -> PostgresServer:
    if find_bindir() is None:
        where = os.environ.get("BASTION_PG_BINDIR")
        found = f"not in BASTION_PG_BINDIR={where}" if where else "not installed"
        pytest.fail(f"PostgreSQL server programs (initdb, pg_ctl, postgres) {found}: the SQL driver's PostgreSQL "
                    "tests need them (Debian: apt-get install postgresql)", pytrace=False)
    try:
        return PostgresServer().start()
    except PostgresServerError as exc:
        pytest.fail(f"cannot start a private PostgreSQL server: {exc}", pytrace=False)


def _running_server():
    server = _server()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server on 127.0.0.1 shared by the session; removed at the end."""
    yield from _running_server()


@pytest.fixture
def private_postgres():
    """A PostgreSQL server of the test's own, which the test may stop and start."""
    yield from _running_server()


@pytest.fixture
def fresh_pg_url(postgres_server) -> str:
    """The URL of a new, empty PostgreSQL database."""
    return postgres_server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """The URL of a SQLite file in a folder that does not exist yet."""
    return f"sqlite:///{tmp_path}/var/bastion.sqlite3"
