"""What the record and state halves of the driver share: engine, transactions, health."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from bastion_storage_sql import migrate, settings
from bastion_storage_sql.engine import WRITE, create_engine, parse_url, redact
from bastion_storage_sql.errors import translated

#: What the driver does with the schema when it opens: create or upgrade it,
#: insist that it is current (production), or trust it (tests of the schema itself).
SchemaMode = Literal["upgrade", "check", "none"]


class SqlBackend:
    """An engine on one database, with the driver's transaction helpers."""

    def __init__(self, url: str, clock: Callable[[], float] = time.time,
                 options: Mapping[str, Any] | None = None, schema: SchemaMode = "upgrade"):
        self.clock = clock
        self.label = redact(url)
        self.settings = {**settings.defaults(), **(options or {})}
        self.engine = create_engine(parse_url(url), self.settings)
        self.dialect = self.engine.dialect.name
        # Dialect-specific INSERT, for ON CONFLICT upserts.
        self._insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        # PostgreSQL reads of one statement need no transaction: autocommit
        # saves the BEGIN and COMMIT round trips. SQLite's BEGIN is local.
        self._reader = (self.engine.execution_options(isolation_level="AUTOCOMMIT")
                        if self.dialect == "postgresql" else self.engine)
        try:
            if schema == "upgrade":
                migrate.upgrade(self.engine)
            elif schema == "check":
                migrate.require_current(self.engine, self.label)
        except BaseException:
            self.engine.dispose()
            raise

    @contextmanager
    def _write(self, conflicts: bool = False) -> Iterator[Connection]:
        """A connection in a write transaction, committed when the block exits cleanly."""
        with translated(conflicts), self.engine.connect() as connection:
            connection.execution_options(**{WRITE: True})
            with connection.begin():
                yield connection

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A connection for reads."""
        with translated(), self._reader.connect() as connection, connection.begin():
            yield connection

    # -- health -----------------------------------------------------------

    def ping(self) -> None:
        """Return when the database answers; raise ServiceUnavailable otherwise."""
        with self._read() as connection:
            connection.execute(sa.text("SELECT 1")).scalar_one()

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label!r})"
