"""Fixtures of the SQL driver's tests: databases on the session's PostgreSQL server (the ``postgres_server``
fixture of kernel.testing), a server of a test's own, and SQLite files."""

from __future__ import annotations

import uuid

import pytest

from kernel.testing import PostgresServer, launched


@pytest.fixture
def private_postgres():
    """A PostgreSQL server of the test's own, which the test may stop and start."""
    with launched(PostgresServer(), "a private PostgreSQL server") as server:
        yield server


@pytest.fixture
def fresh_pg_url(postgres_server) -> str:
    """The URL of a new, empty PostgreSQL database."""
    return postgres_server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """The URL of a SQLite file in a folder that does not exist yet."""
    return f"sqlite:///{tmp_path}/var/bastion.sqlite3"
