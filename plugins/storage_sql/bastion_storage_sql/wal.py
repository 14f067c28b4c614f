"""The SQLite WAL: cut back now and then, even when readers keep SQLite's own checkpoints from completing.

SQLite checkpoints the WAL by itself (``wal_autocheckpoint``), but a
checkpoint cannot go past the snapshot of a reader that stays (a long report,
a backup), and a WAL that was not reset keeps its size. So every
``WAL_CHECK_EVERY``-th write of a process also looks at the size of the WAL
file (one ``stat``); past ``sqlite_wal_limit`` it runs a TRUNCATE checkpoint,
on the connection that just wrote, that waits at most ``CHECKPOINT_WAIT_MS``
for readers: the WAL is cut back once they are gone, and a write never waits
on them for longer.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

log = logging.getLogger("bastion.storage_sql")

#: SQLite writes of a process between two looks at the WAL's size.
WAL_CHECK_EVERY = 64

#: Milliseconds the driver's own TRUNCATE checkpoint waits for readers and writers before giving up for now.
CHECKPOINT_WAIT_MS = 100


class Wal:
    """The WAL of one SQLite database, as one process sees it: its size, and the checkpoints that bound it."""

    def __init__(self, database: str, limit: int, busy_ms: int, errors: type[BaseException]):
        self.path = f"{database}-wal"
        self.limit = limit
        #: The connections' own busy timeout, put back after a checkpoint's shorter one.
        self._busy_ms = busy_ms
        #: What a checkpoint that failed raises (the DBAPI's errors): the write before it has succeeded.
        self._errors = errors
        self._writes = 0
        self._checkpointing = threading.Lock()

    def after_write(self, connection: Any) -> None:
        """Now and then, checkpoint a WAL that has grown past the limit (on the caller's connection, after its COMMIT)."""
        self._writes += 1
        if self._writes % WAL_CHECK_EVERY or self.size() <= self.limit:
            return
        if not self._checkpointing.acquire(blocking=False):
            return  # another thread of this process is at it
        try:
            self.checkpoint(connection)
        except self._errors as error:  # the caller's write has succeeded: a later write tries again
            log.info("SQLite checkpoint skipped: %s", error)
        finally:
            self._checkpointing.release()

    def checkpoint(self, connection: Any) -> bool:
        """Checkpoint and truncate the WAL on ``connection``; return whether it completed (no reader held it back)."""
        # TRUNCATE copies every frame into the database and empties the WAL; it
        # waits for readers through the busy handler, here only briefly: if they
        # stay, it does what a passive checkpoint can and says so.
        connection.execute(f"PRAGMA busy_timeout = {CHECKPOINT_WAIT_MS}")
        try:
            busy = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        finally:
            connection.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
        return not busy

    def size(self) -> int:
        """The size of the WAL file in bytes (0 when there is none)."""
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0
