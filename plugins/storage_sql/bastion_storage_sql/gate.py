"""The SQLite write gate: writers of every process take turns, handed over the moment one ends.

SQLite has one write lock per database file. A writer that finds it taken
waits in SQLite's busy handler, which does not wait *on* the lock: it
sleeps 1, 2, 5, 10, 15, 20, 25 ms ... and looks again. While it sleeps, the
writers of the process that holds the lock (the other threads of a
gunicorn worker) keep taking it in turn, so one writer can sleep for tens of
milliseconds behind a queue of sub-millisecond writes: that is the tail of
the latency of every signed call, each of which writes its nonce.

The gate queues the writers where waiting wakes at once: within a process,
on a thread lock; across processes, on an exclusive ``flock`` of a lock file
next to the database (``<database>-lock``, empty, never backed up). A write
takes the gate, then SQLite's lock, which is then free: the busy handler
stays for writers that do not use the gate (the ``sqlite3`` shell, another
program).

Correctness never depends on the gate: SQLite's own lock still serialises
every write, so a lock file that cannot be made (a read-only folder) only
costs the tail (the driver logs it once and goes on without the gate). A
thread waits for its process's turn at most ``sqlite_busy_timeout`` seconds
(then its call is refused with 503, as a writer SQLite kept waiting would
be); the process's turn comes when the writer of another process ends its
write, which is bounded the same way; a process that stops while holding
the gate (killed, or frozen past gunicorn's ``timeout`` and killed) drops
it, since the kernel releases a dead process's ``flock``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading

log = logging.getLogger("bastion.storage_sql")

#: What the lock file's name adds to the database's.
SUFFIX = "-lock"


class WriteGate:
    """One writer at a time across the threads and processes that write one SQLite file."""

    def __init__(self, database: str, timeout: float):
        self.path = database + SUFFIX
        self.timeout = timeout
        self._pid = -1
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._setup = threading.Lock()
        self._warned = False

    def _for_this_process(self) -> tuple[threading.Lock, int | None]:
        """The process's thread lock and its descriptor of the lock file (made again after a fork)."""
        pid = os.getpid()
        if self._pid != pid:
            with self._setup:
                if self._pid != pid:
                    if self._fd is not None:
                        # A parent's descriptor: closing this copy never unlocks the parent's flock.
                        os.close(self._fd)
                    self._lock = threading.Lock()
                    self._fd = self._open()
                    self._pid = pid
        return self._lock, self._fd

    def _open(self) -> int | None:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except PermissionError:
            try:  # flock needs no write access: a file another account made will do
                return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as error:
                self._without(error)
        except OSError as error:
            self._without(error)
        return None

    def _without(self, error: OSError) -> None:
        if not self._warned:
            self._warned = True
            log.warning("SQLite write gate off (writers fall back on SQLite's busy handler): %s: %s",
                        type(error).__name__, error.strerror or error)

    def acquire(self) -> bool:
        """Take the gate; False when this process's turn did not come within the timeout."""
        lock, fd = self._for_this_process()
        if not lock.acquire(timeout=self.timeout):
            return False
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as error:  # not expected on a local file; SQLite's lock still holds
                self._without(error)
        return True

    def release(self) -> None:
        """Hand the gate over (to a thread of this process, or to the next process)."""
        fd = self._fd
        if fd is not None and self._pid == os.getpid():
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            except OSError:
                pass  # closed by a fork's setup; nothing is held then
        self._lock.release()

    def close(self) -> None:
        fd, self._fd, self._pid = self._fd, None, -1
        if fd is not None:
            os.close(fd)
