"""The SQL storage driver: records and short-lived state in one SQLAlchemy database."""

from __future__ import annotations

from bastion_storage_sql.records import SqlRecords
from bastion_storage_sql.state import SqlState
from kernel import PAGED_SELECT


class SqlDriver(SqlRecords, SqlState):
    """A :class:`kernel.core.driver.Driver` on SQLite or PostgreSQL.

    ``SqlDriver(url, clock=time.time, options=None, schema="upgrade")``:
    ``options`` are ``[storage_sql]`` values (defaults for the missing ones);
    ``schema`` is ``"upgrade"`` (create or upgrade the schema, as development
    mode does), ``"check"`` (raise ConfigError unless it is current, as
    production does) or ``"none"``.
    """

    #: Its data outlives the process and is shared by every process and node using the URL; it counts live
    #: keys by prefix in one SELECT (``count_live``), and a select reads one page only (``paged_select``).
    capabilities = frozenset({"persistent", "count_live", PAGED_SELECT})
