"""The ``[storage_sql]`` INI section: connection pool and SQLite tuning."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kernel import Bool, Choice, Config, Float, Int, Option, PluginSettings

SECTION = "storage_sql"

#: Every key of ``[storage_sql]`` with its default.
SCHEMA: dict[str, Option] = {
    "pool_size": Int(5, "connections each process keeps open (PostgreSQL and SQLite)", min=1, max=1000),
    "max_overflow": Int(10, "extra connections opened under load beyond pool_size", min=0, max=1000),
    "pool_timeout": Float(10.0, "seconds a call waits for a free connection before 503", min=0.0),
    "pool_recycle": Int(1800, "seconds after which a pooled connection is replaced (-1: never)", min=-1),
    "connect_timeout": Int(5, "seconds to wait for PostgreSQL to accept a connection", min=1, max=3600),
    "statement_timeout": Float(10.0, "seconds PostgreSQL lets one statement run before cancelling it (503); a call "
                               "without any answer that long plus a second has its connection closed (503); 0: "
                               "no limit", min=0.0),
    "sqlite_busy_timeout": Float(30.0, "seconds a SQLite writer waits for another process's lock", min=0.0),
    "sqlite_wal_limit": Int(16 * 1024 * 1024, "bytes the SQLite WAL file is cut back to after a checkpoint; "
                            "the driver also checkpoints when the WAL grows past it", min=0),
    "sqlite_write_gate": Bool(True, "SQLite writers of every process take turns on a lock file next to the "
                              "database (<database>-lock), handed over at once, rather than polling SQLite's "
                              "lock: a flat latency tail under concurrent writes"),
    "sqlite_synchronous": Choice("normal", ("normal", "full"),
                                 "SQLite fsync policy in WAL mode: normal (fast, safe from corruption) or full"),
    "echo": Bool(False, "log every SQL statement (debugging only)"),
}


def defaults() -> dict[str, Any]:
    """Return the default value of every key."""
    return {key: option.default for key, option in SCHEMA.items()}


def read(settings: PluginSettings | Config | None) -> Mapping[str, Any]:
    """Claim and return ``[storage_sql]`` (the defaults when there are no settings)."""
    if settings is None:
        return defaults()
    return settings.section(SECTION, SCHEMA)
