"""Bastion's gunicorn worker: gunicorn's threaded worker, hardened against slow and malformed requests.

The packaged settings (``kernel.server.gunicorn_conf``, which ``bastion serve`` runs with and a checkout's
``gunicorn.conf.py`` imports) always select it (``worker_class = "kernel.server.worker.BastionWorker"``), with one
thread as with many. What it changes in gunicorn 27's ``ThreadWorker`` (``gunicorn/workers/gthread.py``):

* **A request is gathered in the main loop, head and body, not in a thread.** gunicorn waits (5 s) only
  for the first byte of a request before committing a pool thread, which then blocks reading the rest of
  the head, and the application then blocks reading the body: a few clients sending a byte every few
  seconds hold every thread, and renew their hold as soon as it times out. Here a new or kept-alive
  connection stays in the worker's selector, read without blocking, until its whole request has arrived;
  only then is it handed to the pool, the bytes given back to the parser, so the application never waits
  on the socket:

  - the head, up to the blank line. One still incomplete ``[server] header_timeout`` seconds after the
    connection began waiting for it is answered 408 RequestTimeout and closed. A head cut at
    :data:`HEADER_CAP` bytes without its end is handed over too: the parser may not read the socket while
    parsing a head, so it answers its limit error instead of waiting for more.
  - then the body. The common head of a call (one ``Content-Length``, a plain request line, nothing else
    about framing: :func:`~kernel.server.framing.length_framing`) tells its framing without a parse; any other
    is parsed once in the loop by gunicorn's own parser, only to learn its framing (a malformed head goes to
    the pool at once, which answers the parser's error; a head without ``Content-Length`` or
    ``Transfer-Encoding`` has no body and is handed over without that parse). A
    ``Content-Length`` body up to ``[bastion] max_body`` is gathered to its last byte; a declared length
    over it is handed over without reading, for the application's 413. A chunked body is followed chunk
    by chunk (:class:`~kernel.server.framing.ChunkedEnd`, mirroring gunicorn's chunk rules) until its last chunk
    and trailers,
    a framing error (which the parser then answers 400), or more than ``max_body`` bytes of content
    (413): gathered like the other rather than given a bound of threads, so that no framing lets a slow
    client hold one. The thread never reads the socket for such a request (:class:`BastionUnreader`'s
    ``sealed``), and one whose body it did not get whole and did not read closes instead of being drained.
    A body not whole ``[server] body_timeout`` seconds after its head was complete is answered 408 and
    closed.
  - what the loop holds of bodies is bounded: each connection's first :data:`BODY_ALLOWANCE` bytes, and
    beyond them at most :data:`BODY_BUFFER` (or ``max_body`` if larger) for the whole worker; a
    connection whose body would pass that waits unread (its client slowed by TCP) until bodies ahead of
    it are handed over, its deadline running.

* **``Expect: 100-continue``**: a body declared over ``max_body`` never gets ``100 Continue`` (413, and
  the connection closes since the client may still send the body). Otherwise the application decides on
  the head alone whether it wants the body, so that a request refused on its headers (415) gets none
  either: such a request goes to the pool as soon as its head is complete, and ``100 Continue`` is sent
  when the application first reads the body, which it then waits for, within ``[server] body_timeout``
  from the application's start; but at most ``threads // 2`` such requests of a worker are in threads at
  once. Beyond that (with one thread, always) the loop sends ``100 Continue`` itself once the head is
  parsed, and gathers the body like any other: a refusal on the headers then comes after the body. So
  slow bodies can hold at most half the threads, and only by asking for ``100 Continue``.
* **A connection limit that new requests get through**: each worker holds at most ``[server]
  worker_connections`` connections (gunicorn's ``worker_connections``, whose default of 1000 Bastion sets
  itself). A new connection beyond it makes room: the worker closes, oldest first, one connection that
  holds no thread, in this order: one closing after its answer, an idle kept-alive one, one whose head is
  still arriving, one whose body is still arriving. So clients that only open connections, or keep them
  waiting, cannot keep a fresh request out; they are closed without an answer, and one WARNING line at
  most every :data:`EVICTION_LOG_INTERVAL` seconds counts them. Only when every connection is in a thread
  does the worker stop accepting (gunicorn's way), the new ones waiting in the listen backlog. The worker
  raises its soft limit of open files to fit the connections (lowering its connection limit, and saying
  so, if the hard limit does not allow it).
* **gunicorn's own answers are JSON**: every request gunicorn refuses before the application runs gets
  the ``{"exc", "err"}`` body of docs/protocol.md section 2 with Bastion's security headers and an
  ``X-Request-Id``, a fixed message that never repeats what the client sent, and one ``bastion.call`` line
  in the log, at WARNING (:class:`BastionLogger` sends gunicorn's own messages through the INI file's logging).
* **Closing does not block the main loop**: gunicorn lingers up to 2 s on a closing connection (to let
  the client read the answer before a reset) with a blocking read in the main loop; here the lingering
  connection waits in the selector instead.
* **A worker that starts during a storage outage keeps running**: when the application cannot be built
  because the storage is unavailable (a worker replaced after ``max_requests``, or after a crash, while
  the database fails over), gunicorn would count a failed boot and stop the whole server. Here the worker
  answers every request 503 ServiceUnavailable (:class:`~kernel.server.starting.Starting`) and builds the application again at
  the next request, at most once a second, until the storage answers; then it serves.

TLS connections (``cfg.is_ssl``), HTTP/2 (prior knowledge or Upgrade: h2c) and the PROXY protocol are
set up by gunicorn in a pool thread, as before: their heads and bodies are read there, the way gunicorn
reads them, with no header deadline, and a slow body holds its thread up to ``body_timeout``. The
connection limit, the body deadline, the deferred ``100 Continue`` and the JSON refusals apply to them
too. None of this replaces the buffering reverse proxy (nginx) that production runs behind, which
terminates TLS.

The deadlines and ``max_body`` are the ones gunicorn's master read with the server's settings, before it
forked the worker (:mod:`kernel.server.settings`): the worker does not read the INI file
(``worker_connections`` comes through gunicorn's setting, which ``kernel.server.gunicorn_conf`` sets from
``[server]``). ``bastion serve``, plain ``gunicorn kernel.wsgi:app`` in a checkout and the test launchers all
hand them over so.

The worker is made of rooms of one concern each, which it ties together (the mixins are gunicorn
``ThreadWorker`` methods, overridden; the loop's own methods, :meth:`BastionWorker.accept` and
:meth:`BastionWorker.wait_for_and_dispatch_events`, are here):

* :mod:`kernel.server.gathering`: heads and bodies gathered in the main loop, their deadlines, lingering closes;
* :mod:`kernel.server.framing`: where a head, a chunked body, a read body end (no socket);
* :mod:`kernel.server.connection`: one connection, its socket reader and its parser;
* :mod:`kernel.server.limit`: the connection limit and the open files it needs;
* :mod:`kernel.server.handling`: the request in a pool thread (gunicorn's ``handle_request``, copied and changed);
* :mod:`kernel.server.refusals`: gunicorn's refusals in JSON, with their call line;
* :mod:`kernel.server.starting`: the 503 application of a worker that started during a storage outage;
* :mod:`kernel.server.logger`: :class:`BastionLogger`, gunicorn's messages through Bastion's logging.

**Written for gunicorn 27** (:data:`GUNICORN_MAJOR`, setup.cfg pins ``gunicorn>=27,<28``): the worker
subclasses and calls internals of gunicorn's threaded worker, its parser and its socket reader, which a
major release may change without notice. tests/test_gunicorn_internals.py checks that every one of them
still has the shape the worker expects (classes, methods, signatures, attributes, and the source of the
methods it copies or whose order of calls it relies on): a gunicorn upgrade fails that one test, rather than
misbehaving at run time. Importing this module with another major of gunicorn raises ImportError.

This module is imported by gunicorn's master process (which loads the worker class) and what it imports
there is not reloaded with the code in development: it imports nothing of the plugins or of the
application (``kernel.http``).
"""

from __future__ import annotations

import errno
import time

import gunicorn
from gunicorn import util
from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import ThreadWorker

from kernel.core.errors import ServiceUnavailable
from kernel.server.connection import BastionConn, BastionParser, BastionUnreader
from kernel.server.framing import HEADER_CAP, ChunkedEnd, body_consumed, chunk_size, head_complete
from kernel.server.gathering import BODY_ALLOWANCE, BODY_BUFFER, Gathering
from kernel.server.handling import Handling
from kernel.server.limit import EVICTION_LOG_INTERVAL, SPARE_FILES, ConnectionLimit
from kernel.server.logger import BastionLogger
from kernel.server.refusals import SECURITY_HEADERS, JsonRefusals, RequestBody, error_response, log_refusal, refusal
from kernel.server.settings import ServerSettings, for_worker
from kernel.server.starting import Starting

#: The major release of gunicorn whose internals the worker subclasses (setup.cfg pins it).
GUNICORN_MAJOR = 27
if gunicorn.version_info[0] != GUNICORN_MAJOR:
    raise ImportError(f"kernel.server.worker is written for gunicorn {GUNICORN_MAJOR}, found {gunicorn.__version__}: "
                      "tests/test_gunicorn_internals.py checks what it relies on")


class BastionWorker(ConnectionLimit, Gathering, Handling, JsonRefusals, ThreadWorker):
    """gunicorn's threaded worker that gathers requests in its main loop and answers every refusal in JSON."""

    def init_process(self):
        self.configure(for_worker())
        super().init_process()

    def configure(self, settings: ServerSettings) -> None:
        """Take the deadlines and ``max_body`` of ``settings`` (the master's), and fit the open files to the limit."""
        self.header_timeout = settings.header_timeout
        self.body_timeout = settings.body_timeout
        self.max_body = settings.max_body
        self.body_buffer = max(BODY_BUFFER, self.max_body)
        self.fit_open_files()

    def load_wsgi(self):
        """Build the application; while the storage is unavailable, answer 503 and try again later (:class:`Starting`)."""
        try:
            super().load_wsgi()
        except ServiceUnavailable:
            self.log.warning("the storage is unavailable: answering 503 until the application can be built")
            self.wsgi = Starting(self.app.wsgi, self.log)

    # -- the main loop ------------------------------------------------------

    def can_gather(self, client) -> bool:
        """Whether the request of a connection from ``client`` is gathered in the main loop.

        Not for TLS (the handshake happens in the thread), HTTP/2 or the PROXY protocol (their prefaces
        are no HTTP/1 head): those are read the way gunicorn reads them.
        """
        cfg = self.cfg
        return not (cfg.is_ssl or cfg.proxy_protocol != "off"
                    or negotiation.prior_knowledge_allowed(cfg, client) or negotiation.upgrade_allowed(cfg, client))

    def accept(self, listener):
        """Accept a connection (making room at the limit) and start gathering its request (or hand it to the pool)."""
        try:
            sock, client = listener.accept()
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                self.out_of_files(e)
            elif e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        if self.nr_conns > self.worker_connections and not self.make_room():
            self.nr_conns -= 1  # every other connection is in a thread: this one cannot be served
            util.close(sock)
            return
        try:
            conn = BastionConn(self.cfg, sock, client, listener.getsockname(), self.can_gather(client))
        except OSError:
            self.nr_conns -= 1
            util.close(sock)
            return
        if conn.gathers:
            self.gather(conn)
        else:
            self.enqueue_req(conn)

    def wait_for_and_dispatch_events(self, timeout):
        """Wait no longer than the first head, body or linger deadline (gunicorn's loop waits up to 1 s).

        At the connection limit, accepting resumes as soon as a connection could be closed to make room
        (gunicorn's loop only looks at the number of connections). An event whose connection an earlier
        callback of the same wait closed or unregistered (to make room, or pausing a body) is dropped:
        gunicorn's loop would call its callback on a closed socket, or on another connection given the
        same descriptor.
        """
        if self.alive and not self._accepting and self.can_make_room():
            self.set_accept_enabled(True)
        timeout = self.next_deadline(timeout, time.monotonic())
        try:
            events = self.poller.select(max(0.0, timeout))
            registered = self.poller.get_map()
            for key, _ in events:
                if registered.get(key.fd) is key:
                    key.data(key.fileobj)
        except OSError as e:
            if e.errno != errno.EINTR:
                raise


__all__ = [
    "GUNICORN_MAJOR", "BastionWorker", "BastionLogger",
    # what the worker is made of, importable here as before it had rooms
    "BastionConn", "BastionParser", "BastionUnreader", "ChunkedEnd", "RequestBody", "Starting", "HEADER_CAP",
    "BODY_ALLOWANCE", "BODY_BUFFER", "SPARE_FILES", "EVICTION_LOG_INTERVAL", "SECURITY_HEADERS", "body_consumed",
    "chunk_size", "error_response", "head_complete", "log_refusal", "refusal",
]
