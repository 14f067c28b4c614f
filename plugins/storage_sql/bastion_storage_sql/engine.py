"""Storage URLs and SQLAlchemy engines: which URLs are ours, and how each backend is tuned."""

from __future__ import annotations

import contextlib
import select
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError

from bastion_storage_sql.watchdog import forget
from kernel import ConfigError, StorageURL, redact


def socket_is_quiet(fileno: int) -> bool:
    """Say whether an idle connection's socket has nothing to read (a closed one reads as EOF)."""
    poller = select.poll()
    poller.register(fileno, select.POLLIN | select.POLLERR | select.POLLHUP)
    return not poller.poll(0)

#: URL schemes the plugin serves, and the SQLAlchemy driver each one maps to.
SCHEMES = {
    "sqlite": "sqlite+pysqlite",
    "sqlite+pysqlite": "sqlite+pysqlite",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}

#: Execution option that marks a connection whose transaction will write.
WRITE = "bastion_write"


def is_sql_url(url: str) -> bool:
    """Say whether the plugin serves ``url`` (by its scheme alone)."""
    return StorageURL(url).scheme in SCHEMES


def parse_url(url: str) -> URL:
    """Parse a storage URL and pick the SQLAlchemy driver: psycopg 3 for PostgreSQL, sqlite3 for SQLite.

    Raises ConfigError for a malformed URL or an in-memory SQLite database
    (each pooled connection would see its own empty database; use ``mem://``).
    """
    try:
        parsed = make_url(url.strip())
    except ArgumentError:
        raise ConfigError(f"[bastion] storage URL {redact(url)!r}: not a valid SQL URL; accepted: "
                          "sqlite:///relative/path, sqlite:////absolute/path, "
                          "postgresql://user:password@host:port/db") from None
    drivername = SCHEMES.get(parsed.drivername.lower())
    if drivername is None:
        raise ConfigError(f"[bastion] storage URL {redact(url)!r}: not a SQL URL served by bastion-storage-sql")
    parsed = parsed.set(drivername=drivername)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise ConfigError(f"[bastion] storage URL {url!r}: SQLite needs a file path "
                              "(sqlite:///var/bastion.sqlite3); use mem:// for memory")
    return parsed


def create_engine(url: str | URL, settings: Mapping[str, Any]) -> Engine:
    """Build the engine of a storage URL with the ``[storage_sql]`` settings."""
    parsed = url if isinstance(url, URL) else parse_url(url)
    pool = {
        "pool_size": settings["pool_size"],
        "max_overflow": settings["max_overflow"],
        "pool_timeout": settings["pool_timeout"],
        "echo": settings["echo"],
    }
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, settings, pool)
    return _postgresql_engine(parsed, settings, pool)


def _postgresql_engine(url: URL, settings: Mapping[str, Any], pool: dict[str, Any]) -> Engine:
    # No pool_pre_ping (a round trip at every checkout): a connection the
    # server has closed is seen locally at checkout instead, and replaced.
    connect_args: dict[str, Any] = {"connect_timeout": settings["connect_timeout"], "application_name": "bastion"}
    timeout_ms = round(float(settings["statement_timeout"]) * 1000)
    if timeout_ms:
        # PostgreSQL cancels any statement of the driver's that runs longer (a lock held by another session).
        connect_args["options"] = f"-c statement_timeout={timeout_ms}"
    engine = sa.create_engine(url, pool_recycle=settings["pool_recycle"], **pool, connect_args=connect_args)

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection, _record, _proxy) -> None:
        # An idle connection has nothing to read: a readable socket means the
        # server said goodbye (restart, idle timeout, termination) and closed it.
        # Raising DisconnectionError makes the pool replace it before any use.
        if dbapi_connection.closed or not socket_is_quiet(dbapi_connection.fileno()):
            raise DisconnectionError("the server closed the pooled connection")

    @event.listens_for(engine, "close")
    def _on_close(_dbapi_connection, record) -> None:
        forget(record.info)  # the watchdog's duplicate of the connection's socket

    return engine


def _enable_wal(path: str, busy: float) -> None:
    """Switch the file to WAL once, before any pooled connection exists.

    The mode is stored in the file. Switching needs the file to itself, and
    SQLite answers "database is locked" at once rather than waiting when
    several connections start at the same moment (workers booting together),
    so the switch is retried until the busy timeout.
    """
    deadline = time.monotonic() + busy
    while True:
        try:
            with contextlib.closing(sqlite3.connect(path, timeout=busy)) as connection:
                connection.execute("PRAGMA journal_mode = WAL").fetchall()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise ConfigError(f"cannot open the SQLite database {path}: {exc}") from None
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)  # another connection holds the file for a moment; nothing to wait on


def _sqlite_engine(url: URL, settings: Mapping[str, Any], pool: dict[str, Any]) -> Engine:
    database = url.database
    assert database is not None  # parse_url refuses a SQLite URL without a file path
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    busy = float(settings["sqlite_busy_timeout"])
    _enable_wal(database, busy)
    synchronous = settings["sqlite_synchronous"].upper()
    wal_limit = int(settings["sqlite_wal_limit"])
    # No rollback when a connection goes back to the pool: the driver ends every transaction it begins
    # (and rolls back whatever a failure left open, see SqlExecutor._finish), and sqlite3 in autocommit mode
    # has nothing to reset; migrations run on SQLAlchemy connections, which end theirs too.
    engine = sa.create_engine(url, poolclass=sa.QueuePool, **pool, pool_reset_on_return=None,
                              connect_args={"timeout": busy, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # SQLAlchemy, not the sqlite3 module, decides when transactions begin
        # (the sqlite3 module would start them lazily and never for DDL).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy * 1000)}")
            # WAL (set once by _enable_wal, stored in the file) lets readers run beside the one writer.
            cursor.execute(f"PRAGMA synchronous = {synchronous}")
            cursor.execute("PRAGMA foreign_keys = ON")
            # A checkpoint that resets the WAL cuts the file back to this size (without
            # it the WAL keeps its high-water mark for ever), and the automatic
            # checkpoint runs before the WAL outgrows it (at 1000 pages at most, SQLite's default).
            cursor.execute(f"PRAGMA journal_size_limit = {wal_limit}")
            page_size = cursor.execute("PRAGMA page_size").fetchone()[0]
            cursor.execute(f"PRAGMA wal_autocheckpoint = {max(1, min(1000, wal_limit // page_size))}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        # (Only SQLAlchemy connections, i.e. migrations, get here: the driver's
        # calls run on the DBAPI connection and say BEGIN IMMEDIATE themselves.)
        # A writer takes the write lock up front: a deferred transaction that
        # reads and then writes could fail with "database is locked" at once
        # instead of waiting for the busy timeout.
        write = connection.get_execution_options().get(WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine
