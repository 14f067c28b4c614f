"""Schema lifecycle: Alembic revisions inside the package, run programmatically under a lock.

Several processes may start at once (gunicorn workers in development mode, `bastion initdb` on several nodes):
each upgrade runs in one transaction that first takes a lock — a PostgreSQL
transaction-level advisory lock, SQLite's write lock (``BEGIN IMMEDIATE``) —
and then re-reads the schema version, so that exactly one process migrates and
the others find the work done.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from bastion_storage_sql.engine import WRITE
from bastion_storage_sql.errors import translated
from bastion_storage_sql.schema import VERSION_TABLE
from kernel import ConfigError

#: Folder of env.py and versions/.
SCRIPT_LOCATION = Path(__file__).parent / "migrations"

#: PostgreSQL advisory lock key held while migrating ("bastion" in ASCII).
MIGRATION_LOCK = int.from_bytes(b"bastion", "big")

_ALEMBIC = threading.Lock()

#: What the driver does with the schema when it opens: create or upgrade it,
#: insist that it is current (production), or trust it (tests of the schema itself).
SchemaMode = Literal["upgrade", "check", "none"]


@dataclass(frozen=True)
class SchemaStatus:
    """The revision a database is at (None: no schema) and the one this code needs."""

    current: str | None
    head: str

    @property
    def up_to_date(self) -> bool:
        """Whether the database has the schema this code needs."""
        return self.current == self.head


def _config(connection: Connection | None = None) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """Return the newest revision of the package's migrations."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None, "the package ships no migrations"
    return head


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()


def status(engine: Engine) -> SchemaStatus:
    """Read the schema revision of the database. Raises ServiceUnavailable if it does not answer."""
    with translated(), engine.connect() as connection, connection.begin():
        return SchemaStatus(_current(connection), head_revision())


def upgrade(engine: Engine) -> tuple[SchemaStatus, SchemaStatus]:
    """Create or upgrade the schema to the head revision; return the status before and after.

    Safe when several processes call it at once. Raises ServiceUnavailable if
    the database does not answer.
    """
    before = status(engine)
    if before.up_to_date:
        return before, before
    # Alembic's `context` is process-global, so one thread migrates at a time;
    # this lock is always taken before the database's, which rules out deadlocks.
    with _ALEMBIC, translated(), engine.connect() as connection:
        connection.execution_options(**{WRITE: True})
        with connection.begin():
            if connection.dialect.name == "postgresql":
                # A migration may wait for another node's (the lock) and take its time: no statement timeout.
                connection.execute(sa.text("SET LOCAL statement_timeout = 0"))
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            # Another process may have migrated while this one waited for the lock.
            before = SchemaStatus(_current(connection), before.head)
            _check_known(before, engine)
            if not before.up_to_date:
                command.upgrade(_config(connection), "head")
    return before, SchemaStatus(before.head, before.head)


def _check_known(found: SchemaStatus, engine: Engine, label: str | None = None) -> None:
    """Raise ConfigError when the database is at a revision this code does not know (a newer plugin's)."""
    if found.current is None or found.up_to_date:
        return
    known = {script.revision for script in ScriptDirectory.from_config(_config()).walk_revisions()}
    if found.current not in known:
        label = label or engine.url.render_as_string(hide_password=True)
        raise ConfigError(f"{label}: the database schema (revision {found.current}) is newer than this "
                          f"bastion-storage-sql (revision {found.head}); upgrade the plugin")


def require_current(engine: Engine, label: str) -> None:
    """Raise ConfigError unless the database has exactly the schema this code needs.

    ``label`` names the database in the message (a URL without its password).
    """
    found = status(engine)
    if found.up_to_date:
        return
    if found.current is None:
        raise ConfigError(f"{label}: the database has no Bastion schema; run `bastion initdb` to create it")
    _check_known(found, engine, label)
    raise ConfigError(f"{label}: the database schema is at revision {found.current}, this version needs "
                      f"{found.head}; run `bastion initdb` to upgrade it")


def prepare(engine: Engine, mode: SchemaMode, label: str) -> None:
    """Make sure the schema is what ``mode`` asks of a driver that opens (see :data:`SchemaMode`)."""
    if mode == "upgrade":
        upgrade(engine)
    elif mode == "check":
        require_current(engine, label)
