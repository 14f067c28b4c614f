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
order they came (see ``SqlExecutor._write_batch``). A write is still one
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
costs the tail (the driver logs it once and goes on without the gate).

A write waits at the gate, for its thread's turn and then for the file, at
most ``sqlite_busy_timeout`` seconds from when it was queued (its
*deadline*); then its call is refused with 503, as a writer SQLite kept
waiting would be. The file's wait is bounded too, not only the thread's:
any process that can open the lock file can take its ``flock`` (a
read-only descriptor is enough) and keep it, and a writer blocked in
``flock`` for ever would hold its process's turn, and with it every write
and every ``/healthz`` ping of that process, for ever. ``flock`` itself has
no timeout, so a writer that finds the file taken has the process's helper
thread (one, started at the first such wait) block in ``flock`` on its
behalf, and waits for the helper until its deadline: it is still woken the
moment the file is free; past the deadline it gives up, and the helper,
once it gets the file, hands it to the writer of the process that waits
for it by then, or lets it go at once if none does. The writes of one
turn are refused each at its own deadline; once the write of the thread
whose turn it is has been, the others go back to the queue for their own
threads. A process that stops while holding the gate (killed, or frozen
past gunicorn's ``timeout`` and killed) drops it, since the kernel
releases a dead process's ``flock``.

The lock file is the server account's alone (mode 0600, made so when it is
found more open, as earlier versions made it 0644): another account that
could open it could hold every writer back, each up to its deadline.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import threading
import time
from typing import Any

log = logging.getLogger("bastion.storage_sql")

#: What the lock file's name adds to the database's.
SUFFIX = "-lock"

#: Most writes one turn at the gate commits together.
MAX_BATCH = 32

#: The lock file's mode: the server account's alone (whoever can open it can hold every writer back).
MODE = 0o600


class Write:
    """One write waiting at the gate: what to run, by when (``deadline``, on ``time.monotonic()``, set when it is
    queued), and once ``done``, its result or its error."""

    __slots__ = ("kind", "work", "conflicts", "deadline", "done", "ok", "value", "_settled")

    def __init__(self, kind: str, work: Any, conflicts: bool):
        self.kind, self.work, self.conflicts = kind, work, conflicts
        self.deadline = 0.0
        self.done, self.ok = False, False
        self.value: Any = None
        self._settled: threading.Event | None = None

    def settle(self, ok: bool, value: Any) -> None:
        self.ok, self.value, self.done = ok, value, True
        settled = self._settled  # read after done: see wait
        if settled is not None:
            settled.set()

    def wait(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for the write to be settled, without the turn; return whether it is:
        for a thread whose write a turn of another thread took (that turn settles it by the write's deadline,
        writes it, or puts it back in the queue)."""
        settled = self._settled
        if settled is None:
            settled = self._settled = threading.Event()  # before done is read, as settle sets done before reading it
        return self.done or settled.wait(timeout)

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
        """This process's turn lock, queue and file wait; the lock file is opened at the first turn (:meth:`enter`)."""
        self._pid, self._opened = pid, False
        self._lock, self._queue_lock = threading.Lock(), threading.Lock()
        self._queue: list[Write] = []
        #: Guards the helper's state below, and the ``wanted`` of the :class:`_FileWait` in ``_waiting``.
        self._file_lock = threading.Lock()
        self._helper_asked = threading.Condition(self._file_lock)
        self._helper: threading.Thread | None = None
        #: The wait the helper is at (blocked in ``flock``, or about to be) for this process, if it is at one.
        self._waiting: _FileWait | None = None
        self._closed = False

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
        # O_NOFOLLOW: a link planted in the folder never makes the driver lock, or change the mode of, another file.
        flags = os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | flags, MODE)
        except PermissionError:
            try:  # flock needs no write access: a file another account made will do
                fd = os.open(self.path, os.O_RDONLY | flags)
            except OSError as error:
                self._without(error)
                return None
        except OSError as error:
            self._without(error)
            return None
        self._tighten(fd)
        return fd

    def _tighten(self, fd: int) -> None:
        """Make a lock file that other accounts may open (earlier versions made it 0644) the owner's alone."""
        mode = 0
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISREG(mode) and stat.S_IMODE(mode) & ~MODE:
                os.fchmod(fd, MODE)
        except OSError as error:  # another account's file: it stays open to others, and the operator is told
            log.warning("the SQLite write gate's lock file %s is not this account's and stays mode %o: any account "
                        "that can open it can hold every writer back (each up to sqlite_busy_timeout, then 503): "
                        "%s", self.path, stat.S_IMODE(mode), error.strerror or error)

    def _without(self, error: OSError) -> None:
        if not self._warned:
            self._warned = True
            log.warning("SQLite write gate off (writers fall back on SQLite's busy handler): %s: %s",
                        type(error).__name__, error.strerror or error)

    # -- the queue of this process ------------------------------------------

    def submit(self, write: Write, wait: float | None = None) -> None:
        """Queue a write for the next turn of this process, to be written within ``wait`` seconds (default the
        busy timeout) or refused (every write starts here: so does a forked process)."""
        self._for_this_process()
        write.deadline = time.monotonic() + (self.timeout if wait is None else wait)
        with self._queue_lock:
            self._queue.append(write)

    def take(self) -> list[Write]:
        """The writes queued by now, oldest first (at most :data:`MAX_BATCH`); the caller must settle each."""
        with self._queue_lock:
            batch, self._queue[:MAX_BATCH] = self._queue[:MAX_BATCH], []
        return batch

    def put_back(self, writes: list[Write]) -> None:
        """Queue writes a turn took, and did not settle, again at the front, oldest first, for the next turn."""
        if writes:
            with self._queue_lock:
                self._queue[:0] = writes

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

    def enter(self, deadline: float) -> bool:
        """Take the process's turn at the file (it holds the thread's turn): wait for the other processes until
        ``deadline`` (``time.monotonic()``) at most; False when the file is still taken then.

        A free file is taken at once. A taken one is waited for by the
        process's helper thread blocked in ``flock`` (:meth:`_help`), which
        hands the file over the moment it gets it, or lets go of it if no
        writer waits for it by then; a writer that comes meanwhile waits for
        the same ``flock``.
        """
        if not self._opened:
            self._fd, self._opened = self._open(), True
        fd = self._fd
        if fd is None:
            return True
        with self._file_lock:
            wait = self._waiting
            if wait is None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    pass  # another process has its turn: the helper waits for it
                except OSError as error:  # not expected on a local file; SQLite's lock still holds
                    self._without(error)
                    return True
                wait = self._waiting = _FileWait()
                if self._helper is None:
                    self._helper = threading.Thread(target=self._help, args=(fd,), name="bastion-sqlite-gate",
                                                    daemon=True)
                    self._helper.start()
                else:
                    self._helper_asked.notify()
            wait.wanted = True
        remaining = deadline - time.monotonic()
        while remaining > 0 and not wait.granted.acquire(timeout=remaining):
            remaining = deadline - time.monotonic()
        with self._file_lock:
            if wait.given:  # it came, if only just now: the file is this writer's
                return True
            wait.wanted = False
            return False

    def _help(self, fd: int) -> None:
        """The helper's thread (one per process, started at the first wait): for each wait it is asked for,
        block in ``flock`` until the file is this process's, then hand it to the writer that waits for it, or
        let it go at once when none does any more (each gave up at its deadline)."""
        while True:
            with self._file_lock:
                while self._waiting is None and not self._closed:
                    self._helper_asked.wait()
                if self._closed:
                    return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                held = True
            except OSError as error:  # not expected on a local file; SQLite's lock still holds
                self._without(error)
                held = False
            with self._file_lock:
                wait, self._waiting = self._waiting, None
                if self._closed:  # the gate left the descriptor to this thread, which was using it
                    os.close(fd)
                    return
                assert wait is not None  # set when this thread was asked, and only this thread clears it
                if wait.wanted:
                    wait.given = True  # the writer goes on (without the file, on an error: as without the gate)
                    wait.granted.release()
                elif held:
                    fcntl.flock(fd, fcntl.LOCK_UN)  # nobody waits for it any more: the other processes' turn

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
        with self._file_lock:
            fd, self._fd, self._closed = self._fd, None, True
            if fd is not None and self._waiting is None:
                os.close(fd)
            # else the helper, blocked in flock on it, closes it when flock returns
            self._helper_asked.notify()


class _FileWait:
    """One wait of the helper for the lock file: whether a writer still wants it, whether it was given, and the
    lock (held until then) the writer waits on: one writer at a time, the one whose turn it is."""

    __slots__ = ("wanted", "given", "granted")

    def __init__(self):
        self.wanted = self.given = False
        self.granted = threading.Lock()
        self.granted.acquire()
