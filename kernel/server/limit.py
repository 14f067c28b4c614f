"""The connection limit that new requests get through: a worker mixin.

Each worker holds at most ``worker_connections`` connections (gunicorn's setting, which the packaged settings
take from ``[server] worker_connections``). gunicorn's threaded worker stops accepting at the limit, so that
clients that only open connections, or keep them waiting, keep every fresh request out. Here a new
connection beyond the limit makes room: the worker closes, oldest first, one connection that holds no
thread, in this order: one closing after its answer, an idle kept-alive one, one that sent nothing yet
(gunicorn's pending), one whose head is still arriving, one whose body is still arriving. They are closed
without an answer; one WARNING line at most every :data:`EVICTION_LOG_INTERVAL` seconds counts them. Only
when every connection is in a thread does the worker stop accepting, the new ones waiting in the listen
backlog.

A connection is accepted before another is closed, so the worker needs a file more than its limit: it raises
its soft limit of open files to fit (:meth:`ConnectionLimit.fit_open_files`), lowering its connection limit
and saying so when the hard limit does not allow it, and lowers it again if ``accept`` runs out of files.

The mixin reads the queues of gunicorn's ``ThreadWorker`` (``keepalived_conns``, ``pending_conns``) and of the
main loop (:class:`kernel.server.gathering.Gathering`), and calls gunicorn's ``set_accept_enabled``.
"""

from __future__ import annotations

import errno
import resource
import time

from kernel.server.room import Room

#: Open files a worker keeps for other uses than its connections (the listeners, the storage's pools,
#: log files, the selector): its soft limit of open files is raised to ``worker_connections`` plus this.
SPARE_FILES = 256
#: Seconds between two log lines about connections closed at the connection limit.
EVICTION_LOG_INTERVAL = 10.0


class ConnectionLimit(Room):
    """At ``worker_connections``, close the connection that gives up least instead of refusing new ones."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.evicted = 0  # connections closed at the limit since the last log line about them
        self.evicted_logged = 0.0

    def fit_open_files(self) -> None:
        """Raise the soft limit of open files to fit ``worker_connections``, else lower the connection limit.

        At the limit a new connection is accepted before another is closed: running out of files would
        crash the worker (gunicorn's accept raises) instead.
        """
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = self.worker_connections + SPARE_FILES
        if soft == resource.RLIM_INFINITY or soft >= wanted:
            return
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
        if soft < wanted:
            self.worker_connections = max(1, soft - SPARE_FILES)
            self.max_keepalived = self.worker_connections - self.cfg.threads  # as gunicorn's __init__ sets it
            self.log.warning("this process may open only %d files: at most %d connections per worker instead of "
                             "the %d of worker_connections", soft, self.worker_connections, wanted - SPARE_FILES)

    def set_accept_enabled(self, enabled):
        """At the connection limit, keep accepting while a connection can be closed to make room."""
        super().set_accept_enabled(enabled or (self.alive and self.can_make_room()))

    def can_make_room(self) -> bool:
        return bool(self.lingering_conns or self.keepalived_conns or self.pending_conns or self.gathering_conns
                    or self.body_conns)

    def make_room(self) -> bool:
        """Close the connection that gives up least, to serve a new one; False if all are in threads.

        In this order, oldest first: one closing after its answer, an idle kept-alive one, one that sent
        nothing yet (gunicorn's pending), one whose head is arriving, one whose body is arriving.
        """
        for queue in (self.lingering_conns, self.keepalived_conns, self.pending_conns, self.gathering_conns,
                      self.body_conns):
            if queue:
                conn = queue.popleft()
                break
        else:
            return False
        self._unregister(conn)
        if queue is self.body_conns:
            self._release(conn)
        self.nr_conns -= 1
        conn.close()
        self.evicted += 1
        now = time.monotonic()
        if now - self.evicted_logged >= EVICTION_LOG_INTERVAL:
            self.log.warning("connection limit (worker_connections = %d) reached: %d connections that were idle or "
                             "still sending their request closed to serve new ones", self.worker_connections,
                             self.evicted)
            self.evicted, self.evicted_logged = 0, now
        return True

    def out_of_files(self, exc: OSError) -> None:
        """The process cannot open another file: lower the connection limit to what is open, and make room."""
        code = exc.errno
        self.log.warning("cannot accept a connection (%s): at most %d connections per worker from now on",
                         errno.errorcode.get(code, code) if code is not None else None, max(1, self.nr_conns))
        self.worker_connections = max(1, self.nr_conns)
        if not self.make_room():
            super().set_accept_enabled(False)


__all__ = ["ConnectionLimit", "SPARE_FILES", "EVICTION_LOG_INTERVAL"]
