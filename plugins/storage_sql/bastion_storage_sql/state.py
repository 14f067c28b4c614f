"""Short-lived state: keys with a time to live, counters and windows, all on the driver's clock.

Every expiry is stored as an absolute time from the driver's clock and
compared with it, never with the database's own time, so a test clock moves
expiry without sleeping. An expired row counts as absent; rows are purged a
bounded batch at a time through the expiry indexes, never by a full scan.
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bastion_storage_sql.backend import SqlBackend
from bastion_storage_sql.schema import state, windows
from kernel.driver import WindowEntry, check_json, dumps
from kernel.errors import ServiceUnavailable

#: Seconds of the driver's clock between two purges of expired state by one process.
PURGE_INTERVAL = 60.0

#: Most rows of each table one purge deletes: a purge stays one short transaction.
PURGE_BATCH = 1000

_BIGINT = range(-(2**63), 2**63)


def _columns(value: Any) -> dict[str, Any]:
    """Split a JSON value into the ``value`` and ``n`` columns: integers live in ``n``, so SQL can add to them."""
    if type(value) is int and value in _BIGINT:
        return {"value": None, "n": value}
    return {"value": dumps(value), "n": None}


def _lock_key(domain: str, key: str) -> int:
    digest = hashlib.blake2b(f"{domain}\x00{key}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class SqlState(SqlBackend):
    """The state half of the SQL driver (:class:`kernel.driver.StateStore`).

    Plain keys and windows share one namespace: ``set`` and ``window_add``
    replace a key of the other kind, ``delete`` removes either.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._purge_lock = threading.Lock()
        self._next_purge = float("-inf")

    # -- plain keys -------------------------------------------------------

    def get(self, domain: str, key: str) -> Any:
        """Return the live value of a key, or None."""
        query = sa.select(state.c.value, state.c.n).where(
            state.c.domain == domain, state.c.key == key, state.c.expires > self.clock())
        with self._read() as connection:
            row = connection.execute(query).first()
        if row is None:
            return None
        return row.n if row.value is None else json.loads(row.value)

    def set(self, domain: str, key: str, value: Any, ttl: float) -> None:
        """Store a value that expires ``ttl`` seconds from now."""
        check_json(value)
        now = self.clock()
        statement = self._upsert(domain, key, value, now + ttl)
        with self._write() as connection:
            connection.execute(statement)
            self._drop_window(connection, domain, key)
        self._purge_if_due(now)

    def add(self, domain: str, key: str, value: Any, ttl: float) -> bool:
        """Store a value only if the key is absent or expired; return whether it was stored. Atomic."""
        check_json(value)
        now = self.clock()
        # One statement: insert, or take over the row only if it has expired.
        statement = self._upsert(domain, key, value, now + ttl, only_if_expired_at=now).returning(state.c.expires)
        with self._write() as connection:
            # RETURNING rather than rowcount: drivers disagree on an upsert's rowcount.
            stored = connection.execute(statement).first() is not None
        self._purge_if_due(now)
        return stored

    def incr(self, domain: str, key: str, amount: int, ttl: float) -> int:
        """Add ``amount`` to a counter and return the new value; a missing or expired one starts a new window."""
        now = self.clock()
        insert = self._insert(state).values(domain=domain, key=key, value=None, n=amount, expires=now + ttl)
        restart = sa.or_(state.c.expires <= now, state.c.n.is_(None))
        statement = insert.on_conflict_do_update(
            index_elements=[state.c.domain, state.c.key],
            set_={
                "n": sa.case((restart, insert.excluded.n), else_=state.c.n + insert.excluded.n),
                "expires": sa.case((restart, insert.excluded.expires), else_=state.c.expires),
                "value": None,
            },
        ).returning(state.c.n)
        with self._write() as connection:
            value = connection.execute(statement).scalar_one()
        self._purge_if_due(now)
        return int(value)

    def delete(self, domain: str, key: str) -> bool:
        """Remove a key or window; return whether a live one existed."""
        now = self.clock()
        with self._write() as connection:
            expiries = list(connection.execute(
                state.delete().where(state.c.domain == domain, state.c.key == key).returning(state.c.expires)
            ).scalars())
            expiries += connection.execute(
                windows.delete().where(windows.c.domain == domain, windows.c.key == key).returning(windows.c.expires)
            ).scalars()
        return any(expires > now for expires in expiries)

    def _upsert(self, domain: str, key: str, value: Any, expires: float, only_if_expired_at: float | None = None):
        insert = self._insert(state).values(domain=domain, key=key, expires=expires, **_columns(value))
        return insert.on_conflict_do_update(
            index_elements=[state.c.domain, state.c.key],
            set_={"value": insert.excluded.value, "n": insert.excluded.n, "expires": insert.excluded.expires},
            where=None if only_if_expired_at is None else state.c.expires <= only_if_expired_at,
        )

    @staticmethod
    def _drop_window(connection: Connection, domain: str, key: str) -> None:
        connection.execute(windows.delete().where(windows.c.domain == domain, windows.c.key == key))

    # -- windows ----------------------------------------------------------

    def window_add(self, domain: str, key: str, member: str, weight: int, ttl: float) -> list[WindowEntry]:
        """Add (or replace) a member expiring ``ttl`` seconds from now; return the live entries. Atomic."""
        now = self.clock()
        insert = self._insert(windows).values(domain=domain, key=key, member=member, weight=weight, expires=now + ttl)
        upsert = insert.on_conflict_do_update(
            index_elements=[windows.c.domain, windows.c.key, windows.c.member],
            set_={"weight": insert.excluded.weight, "expires": insert.excluded.expires})
        with self._write() as connection:
            if self.dialect == "postgresql":
                # Serialise the adders of one window, so that the last sees every
                # member (SQLite's BEGIN IMMEDIATE already serialises all writers).
                connection.execute(sa.select(sa.func.pg_advisory_xact_lock(_lock_key(domain, key))))
            connection.execute(state.delete().where(state.c.domain == domain, state.c.key == key))
            connection.execute(windows.delete().where(
                windows.c.domain == domain, windows.c.key == key, windows.c.expires <= now))
            connection.execute(upsert)
            entries = self._live_entries(connection, domain, key, now)
        self._purge_if_due(now)
        return entries

    def window_entries(self, domain: str, key: str) -> list[WindowEntry]:
        """Return the live entries of a window, oldest expiry first."""
        with self._read() as connection:
            return self._live_entries(connection, domain, key, self.clock())

    def window_discard(self, domain: str, key: str, member: str) -> bool:
        """Remove one member; return whether it was live."""
        now = self.clock()
        statement = windows.delete().where(
            windows.c.domain == domain, windows.c.key == key, windows.c.member == member).returning(windows.c.expires)
        with self._write() as connection:
            expiries = list(connection.execute(statement).scalars())
        return any(expires > now for expires in expiries)

    @staticmethod
    def _live_entries(connection: Connection, domain: str, key: str, now: float) -> list[WindowEntry]:
        query = (sa.select(windows.c.member, windows.c.weight, windows.c.expires)
                 .where(windows.c.domain == domain, windows.c.key == key, windows.c.expires > now)
                 .order_by(windows.c.expires, windows.c.member))
        return [WindowEntry(row.member, int(row.weight), float(row.expires)) for row in connection.execute(query)]

    # -- purging ----------------------------------------------------------

    def purge_expired(self, limit: int = PURGE_BATCH) -> int:
        """Delete up to ``limit`` expired rows of each state table; return how many went."""
        now = self.clock()
        deleted = 0
        with self._write() as connection:
            for table, key in ((state, (state.c.domain, state.c.key)),
                               (windows, (windows.c.domain, windows.c.key, windows.c.member))):
                victims = sa.select(*key).where(table.c.expires <= now).limit(limit)
                # The outer test re-checks each row, so a key refreshed since the
                # sub-select (a new nonce under an old name) is never deleted.
                result = connection.execute(table.delete().where(table.c.expires <= now, sa.tuple_(*key).in_(victims)))
                deleted += max(result.rowcount, 0)
        return deleted

    def _purge_if_due(self, now: float) -> None:
        if now < self._next_purge or not self._purge_lock.acquire(blocking=False):
            return
        try:
            self._next_purge = now + PURGE_INTERVAL
            self.purge_expired()
        except ServiceUnavailable:
            pass  # the next write tries again; the caller's own write has succeeded
        finally:
            self._purge_lock.release()
