"""A deadline for every PostgreSQL call: a server or network that hangs cannot hold a thread.

PostgreSQL's own ``statement_timeout`` cancels a statement that runs too long
(a lock held by another session, a slow query), but only a server that runs
can cancel anything: a stopped or frozen server, or a network that drops
packets without a reset, leaves the client waiting on a socket that the
kernel keeps open (it even acknowledges what is sent), for ever. So the
driver watches each call: a call still without its answer at its deadline
has its connection's socket shut down, which wakes the waiting thread with
an error at once; the call answers ServiceUnavailable and the connection is
discarded.

One daemon thread per process and database waits for the earliest deadline.
A call costs a lock taken twice and an append: the deadlines of calls started
one after the other come in order (one timeout for all), so they wait in a
deque, and a finished call at its head is taken away at once.

The socket shut down is a duplicate of the connection's, made once per
connection (kept in the pool record's ``info``, closed with the connection):
shutting it down acts on the connection's socket, and cannot reach a socket
the system gave the same number after the connection had closed its own.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from typing import Any

log = logging.getLogger("bastion.storage_sql")

#: Key of the duplicated socket in a pool record's ``info``.
SOCKET = "bastion_watchdog_socket"


class Watch:
    """One call being watched."""

    __slots__ = ("deadline", "sock", "done", "cut")

    def __init__(self, deadline: float, sock: socket.socket):
        self.deadline = deadline
        self.sock = sock
        self.done = False
        self.cut = False


class Watchdog:
    """Shuts down the connection of any call that runs past ``seconds``."""

    def __init__(self, seconds: float, label: str):
        self.seconds = seconds
        self.label = label
        self._cond = threading.Condition(threading.Lock())
        self._watches: deque[Watch] = deque()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._closed = False

    def watch(self, info: dict, fileno: int) -> Watch:
        """Start watching a call on the connection whose pool record ``info`` and socket ``fileno`` are given."""
        sock = info.get(SOCKET)
        if sock is None:
            sock = info[SOCKET] = socket.socket(fileno=os.dup(fileno))
        watch = Watch(time.monotonic() + self.seconds, sock)
        with self._cond:
            if self._thread is None or self._pid != os.getpid():
                self._start()  # lazily, and again in a forked child (threads do not survive a fork)
            self._watches.append(watch)
            if len(self._watches) == 1:
                self._cond.notify()
        return watch

    def release(self, watch: Watch) -> bool:
        """Stop watching a call; return whether its deadline passed and its connection was cut."""
        with self._cond:
            watch.done = True
            watches = self._watches
            while watches and watches[0].done:
                watches.popleft()
            return watch.cut

    def close(self) -> None:
        """Stop the thread (the driver closes)."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _start(self) -> None:
        self._pid = os.getpid()
        self._watches = deque(watch for watch in self._watches if not watch.done)
        self._thread = threading.Thread(target=self._run, name=f"bastion-sql-watchdog {self.label}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                watches = self._watches
                while watches and watches[0].done:
                    watches.popleft()
                if not watches:
                    self._cond.wait()
                    continue
                first = watches[0]
                left = first.deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                watches.popleft()
                first.cut = True
                _shut_down(first.sock)
                log.warning("PostgreSQL %s: no answer within %g s: the connection is closed", self.label, self.seconds)


def _shut_down(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the other side


def forget(info: dict) -> None:
    """Close the duplicated socket of a connection that closes (a pool ``close`` event)."""
    sock: Any = info.pop(SOCKET, None)
    if sock is not None:
        sock.close()
