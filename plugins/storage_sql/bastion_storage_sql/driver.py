"""The SQL storage driver: records and short-lived state in one SQLAlchemy database.

Three objects, each with one concern, make the driver: the executor
(:mod:`.executor`: engine, pool, retries, SQLite write gate, PostgreSQL
watchdog), which runs every call; the record store (:mod:`.records`) and the
state store (:mod:`.state`), which build the statements and say what each
call runs, both on that one executor. :class:`SqlDriver` only opens them
(and the schema), and hands each call of the kernel's driver protocol to the
store it belongs to.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Engine

from bastion_storage_sql import migrate
from bastion_storage_sql.executor import SqlExecutor
from bastion_storage_sql.migrate import SchemaMode
from bastion_storage_sql.records import SqlRecords
from bastion_storage_sql.state import PURGE_BATCH, SqlState
from bastion_storage_sql.tenants import SqlTenants
from kernel import (
    PAGED_SELECT,
    TENANTS,
    Change,
    RecordVersion,
    Scalar,
    StoredRecord,
    TenantCounts,
    TenantRecord,
    WindowEntry,
)


class SqlDriver:
    """A :class:`kernel.core.driver.Driver` on SQLite or PostgreSQL.

    ``SqlDriver(url, clock=time.time, options=None, schema="upgrade")``:
    ``options`` are ``[storage_sql]`` values (defaults for the missing ones);
    ``schema`` is ``"upgrade"`` (create or upgrade the schema, as development
    mode does), ``"check"`` (raise ConfigError unless it is current, as
    production does) or ``"none"``.

    Its parts: :attr:`executor` (:class:`SqlExecutor`), :attr:`records`
    (:class:`SqlRecords`) and :attr:`state` (:class:`SqlState`).
    """

    #: Its data outlives the process and is shared by every process and node using the URL; it counts live
    #: keys by prefix in one SELECT (``count_live``), a select reads one page only (``paged_select``), and it
    #: moves whole tenants (``tenants``: a load is one transaction).
    capabilities = frozenset({"persistent", "count_live", PAGED_SELECT, TENANTS})

    def __init__(self, url: str, clock: Callable[[], float] = time.time,
                 options: Mapping[str, Any] | None = None, schema: SchemaMode = "upgrade"):
        executor = SqlExecutor(url, options)
        try:
            migrate.prepare(executor.engine, schema, executor.label)
            records, state = SqlRecords(executor, clock), SqlState(executor, clock)
            tenant_store = SqlTenants(executor, clock)
        except BaseException:
            executor.close()  # a driver that does not open leaves no connection, thread or file behind
            raise
        self.clock = clock
        self.executor = executor
        self.records = records
        self.state = state
        #: Whole tenants (:class:`SqlTenants`).
        self.tenant_store = tenant_store

    # -- the database, as the executor holds it ---------------------------------

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (tests, benchmarks and tools that read or fill the tables directly)."""
        return self.executor.engine

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.executor.dialect

    @property
    def label(self) -> str:
        """The URL without its password, as messages show it."""
        return self.executor.label

    @property
    def settings(self) -> dict[str, Any]:
        """The ``[storage_sql]`` values the driver runs with."""
        return self.executor.settings

    def wal_size(self) -> int:
        """The size of the SQLite WAL file in bytes (0 on PostgreSQL): administration and tests."""
        return self.executor.wal_size()

    def checkpoint(self) -> bool:
        """Checkpoint and truncate the SQLite WAL now; whether it completed (True on PostgreSQL)."""
        return self.executor.checkpoint()

    def dispose_connections(self) -> None:
        """Close every connection not in use now: the next calls open new ones (tests that trace connections)."""
        self.executor.dispose_connections()

    def close(self) -> None:
        """Close the pool, stop the watchdog and let go of the gate's lock file."""
        self.executor.close()

    # -- records (kernel.core.driver.RecordStore): SqlRecords does the work ----------

    def fetch(self, domain: str, model: str, id: str) -> StoredRecord | None:
        return self.records.fetch(domain, model, id)

    def select(self, domain: str, model: str, where: Mapping[str, Scalar] | None = None, *,
               after: str | None = None, limit: int | None = None) -> list[StoredRecord]:
        return self.records.select(domain, model, where, after=after, limit=limit)

    def history(self, domain: str, model: str, id: str) -> list[RecordVersion]:
        return self.records.history(domain, model, id)

    def domains(self, model: str) -> list[str]:
        return self.records.domains(model)

    def commit(self, domain: str, changes: Sequence[Change]) -> None:
        self.records.commit(domain, changes)

    # -- whole tenants (kernel.core.driver.TenantStore): SqlTenants does the work ----

    def tenants(self) -> dict[str, TenantCounts]:
        return self.tenant_store.tenants()

    def tenant_counts(self, domain: str) -> TenantCounts:
        return self.tenant_store.tenant_counts(domain)

    def tenant_records(self, domain: str, model: str) -> Iterator[TenantRecord]:
        return self.tenant_store.tenant_records(domain, model)

    def load_tenant(self, domain: str, records: Iterable[TenantRecord], replace: bool = False) -> int:
        return self.tenant_store.load_tenant(domain, records, replace)

    def delete_tenant(self, domain: str) -> bool:
        return self.tenant_store.delete_tenant(domain)

    # -- state (kernel.core.driver.StateStore) and health: SqlState does the work ----

    def get(self, domain: str, key: str) -> Any:
        return self.state.get(domain, key)

    def get_many(self, domain: str, keys: Sequence[str]) -> list[Any]:
        return self.state.get_many(domain, keys)

    def set(self, domain: str, key: str, value: Any, ttl: float) -> None:
        self.state.set(domain, key, value, ttl)

    def replace(self, domain: str, key: str, value: Any, ttl: float) -> bool:
        return self.state.replace(domain, key, value, ttl)

    def add(self, domain: str, key: str, value: Any, ttl: float, if_live: str | None = None) -> bool:
        return self.state.add(domain, key, value, ttl, if_live)

    def incr(self, domain: str, key: str, amount: int, ttl: float) -> int:
        return self.state.incr(domain, key, amount, ttl)

    def delete(self, domain: str, key: str) -> bool:
        return self.state.delete(domain, key)

    def window_add(self, domain: str, key: str, member: str, weight: int, ttl: float) -> list[WindowEntry]:
        return self.state.window_add(domain, key, member, weight, ttl)

    def window_entries(self, domain: str, key: str) -> list[WindowEntry]:
        return self.state.window_entries(domain, key)

    def window_discard(self, domain: str, key: str, member: str) -> bool:
        return self.state.window_discard(domain, key, member)

    def purge_expired(self, limit: int = PURGE_BATCH) -> int:
        return self.state.purge_expired(limit)

    def count_live(self, prefix: str) -> int:
        return self.state.count_live(prefix)

    def state_count(self) -> int:
        return self.state.state_count()

    def ping(self) -> None:
        self.state.ping()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label!r})"
