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

Writes that queue at the gate meanwhile are committed together: the
thread whose turn comes takes every write its process queued by then and
runs them in one transaction, each within a savepoint of its own, in the
order they came (see ``SqlBackend._write_batch``). A write is still one
atomic statement, or one atomic transaction of statements, that sees the
writes before it; a write that fails (a VersionConflict) is rolled back to
its savepoint alone; each thread gets its own result once the COMMIT is
done. So the many small writes of a busy process (a nonce per signed call)
cost one COMMIT, its WAL frames and its locks, per turn rather than per
write. Should one write of it meet a database error, the shared
transaction is rolled back and every write of it is run again on its own,
to get the outcome it would have had without the gate; should the
database refuse the transaction itself (locked past the busy timeout, a
full disk), every write of it is refused with 503 and none is written.

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
from typing import Any

log = logging.getLogger("bastion.storage_sql")

#: What the lock file's name adds to the database's.
SUFFIX = "-lock"

#: Most writes one turn at the gate commits together.
MAX_BATCH = 32


class Write:
    """One write waiting at the gate: what to run, and once ``done``, its result or its error."""

    __slots__ = ("kind", "work", "conflicts", "done", "ok", "value")

    def __init__(self, kind: str, work: Any, conflicts: bool):
        self.kind, self.work, self.conflicts = kind, work, conflicts
        self.done, self.ok, self.value = False, False, None

    def settle(self, ok: bool, value: Any) -> None:
        self.ok, self.value, self.done = ok, value, True

    def outcome(self) -> Any:
        if self.ok:
            return self.value
        raise self.value


class WriteGate:
    """One writer at a time across the threads and processes that write one SQLite file.

    A thread that writes puts its :class:`Write` in the process's queue, then
    waits for the process's turn (:meth:`turn`); the thread that gets it
    takes every write queued by then (:meth:`take`), takes the process's
    turn at the file (:meth:`enter`), and writes them all in one
    transaction; the others find theirs done when their turn comes.
    """

    def __init__(self, database: str, timeout: float):
        self.path = database + SUFFIX
        self.timeout = timeout
        self._setup = threading.Lock()
        self._warned = False
        self._fd: int | None = None
        self._start(os.getpid())

    def _start(self, pid: int) -> None:
        """This process's turn lock and queue; the lock file is opened at the first turn (:meth:`enter`)."""
        self._pid, self._opened = pid, False
        self._lock, self._queue_lock, self._queue = threading.Lock(), threading.Lock(), []

    def _for_this_process(self) -> None:
        """After a fork, start over: the parent's turn lock, queue and lock file descriptor are not this process's."""
        pid = os.getpid()
        if self._pid != pid:
            with self._setup:
                if self._pid != pid:
                    if self._fd is not None:
                        # A parent's descriptor: closing this copy never unlocks the parent's flock.
                        os.close(self._fd)
                        self._fd = None
                    self._start(pid)

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

    # -- the queue of this process ------------------------------------------

    def submit(self, write: Write) -> None:
        """Queue a write for the next turn of this process (every write starts here: so does a forked process)."""
        self._for_this_process()
        with self._queue_lock:
            self._queue.append(write)

    def take(self) -> list[Write]:
        """The writes queued by now, oldest first (at most :data:`MAX_BATCH`); the caller must settle each."""
        with self._queue_lock:
            batch, self._queue[:MAX_BATCH] = self._queue[:MAX_BATCH], []
        return batch

    def withdraw(self, write: Write) -> bool:
        """Take a write back out of the queue; False when a turn has taken it already."""
        with self._queue_lock:
            try:
                self._queue.remove(write)
            except ValueError:
                return False
            return True

    def queued(self) -> int:
        """How many writes wait in this process's queue."""
        return len(self._queue)

    # -- turns ----------------------------------------------------------------

    def turn(self, timeout: float | None = None) -> bool:
        """Wait for this thread's turn in its process (at most ``timeout``, default the busy timeout)."""
        return self._lock.acquire(timeout=self.timeout if timeout is None else timeout)

    def enter(self) -> None:
        """Take the process's turn at the file (it holds the thread's turn): wait for the other processes."""
        if not self._opened:
            self._fd, self._opened = self._open(), True
        fd = self._fd
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as error:  # not expected on a local file; SQLite's lock still holds
                self._without(error)

    def leave(self) -> None:
        """Hand the file over to the next process."""
        if self._fd is not None:  # the thread that entered, in this process: it holds the turn
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            except OSError:
                pass  # not expected; the kernel releases it with the descriptor

    def end_turn(self) -> None:
        """Hand the turn over to the next thread of this process."""
        self._lock.release()

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
