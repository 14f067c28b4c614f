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
  - then the body. The head is parsed once in the loop by gunicorn's own parser, only to learn its
    framing (a malformed head goes to the pool at once, which answers the parser's error; a head without
    ``Content-Length`` or ``Transfer-Encoding`` has no body and is handed over without that parse). A
    ``Content-Length`` body up to ``[bastion] max_body`` is gathered to its last byte; a declared length
    over it is handed over without reading, for the application's 413. A chunked body is followed chunk
    by chunk (:class:`ChunkedEnd`, mirroring gunicorn's chunk rules) until its last chunk and trailers,
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
  answers every request 503 ServiceUnavailable (:class:`Starting`) and builds the application again at
  the next request, at most once a second, until the storage answers; then it serves.

TLS connections (``cfg.is_ssl``), HTTP/2 (prior knowledge or Upgrade: h2c) and the PROXY protocol are
set up by gunicorn in a pool thread, as before: their heads and bodies are read there, the way gunicorn
reads them, with no header deadline, and a slow body holds its thread up to ``body_timeout``. The
connection limit, the body deadline, the deferred ``100 Continue`` and the JSON refusals apply to them
too. None of this replaces the buffering reverse proxy (nginx) that production runs behind, which
terminates TLS.

The timeouts, ``worker_connections`` and ``max_body`` come from the INI file, read in each worker process
with :func:`kernel.core.config.load_config`, the way :mod:`kernel.wsgi` reads the application's configuration:
``bastion serve``, plain ``gunicorn kernel.wsgi:app`` in a checkout and the test launchers all get them
(``worker_connections`` through gunicorn's setting, which ``kernel.server.gunicorn_conf`` sets from it).

This module is imported by gunicorn's master process (which loads the worker class) and what it imports
there is not reloaded with the code in development: it imports no more of Bastion than
``kernel.server.gunicorn_conf`` already does.
"""

from __future__ import annotations

import errno
import logging
import re
import resource
import selectors
import socket
import sys
import threading
import time
from collections import deque
from datetime import datetime, timedelta
from functools import partial
from http import HTTPStatus
from ssl import SSLError

import gunicorn
from gunicorn import glogging, util
from gunicorn.http import errors as http_errors
from gunicorn.http import wsgi
from gunicorn.http.body import CHUNK_EXT_RE, ChunkedReader, LengthReader
from gunicorn.http.message import Request
from gunicorn.http.parser import RequestParser
from gunicorn.http.unreader import IterUnreader, SocketUnreader
from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, TConn, ThreadWorker

from kernel.core.config import BASTION_SCHEMA, SERVER_SCHEMA, load_config
from kernel.core.errors import (
    BastionError,
    ConfigError,
    Error,
    Forbidden,
    InvalidCall,
    InvalidHost,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
)
from kernel.core.jsonio import dumps
from kernel.ops.logs import CALL, clip, configure_logging, log_event, new_request_id

if gunicorn.version_info < (27, 0):  # the worker relies on the structure of gunicorn 27's threaded worker
    raise ImportError(f"kernel.server.worker needs gunicorn 27 or later, found {gunicorn.__version__}")

#: Most bytes of a request head gathered in the main loop; a head without its end by then goes to the
#: parser, which answers 400 (its own limits, ``limit_request_line`` and ``limit_request_field_size``,
#: are smaller for one line).
HEADER_CAP = 64 * 1024
#: How long a closing connection is read and discarded after the answer, and how much of it at most.
LINGER_SECONDS = 2.0
LINGER_BYTES = 64 * 1024
RECV_SIZE = 64 * 1024
#: Bytes of each connection's body the main loop may always hold: small bodies (a login, a call) never
#: wait for room in :data:`BODY_BUFFER`.
BODY_ALLOWANCE = 64 * 1024
#: Most bytes of bodies the main loop of a worker holds beyond each connection's allowance (or
#: ``[bastion] max_body`` if larger, so that one whole body always fits): what clients that send most of
#: a body and then stall can make a worker keep in memory, besides ``worker_connections`` x (the head cap
#: and the allowance).
BODY_BUFFER = 64 * 1024 * 1024
#: Open files a worker keeps for other uses than its connections (the listeners, the storage's pools,
#: log files, the selector): its soft limit of open files is raised to ``worker_connections`` plus this.
SPARE_FILES = 256
#: Seconds between two log lines about connections closed at the connection limit.
EVICTION_LOG_INTERVAL = 10.0
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: The only header fields that give a request a body (gunicorn's ``Message.set_body_reader``): a head
#: without either is handed over without being parsed in the loop.
_BODY_FIELDS = re.compile(rb"content-length|transfer-encoding", re.IGNORECASE)
_HEX = frozenset(b"0123456789abcdefABCDEF")

#: The headers every Bastion answer carries (``kernel.http.app`` adds them to the application's answers;
#: ``kernel.http.app.API_CSP`` is the same policy, not imported here: see the module's docstring).
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
)

_CHUNK_ERRORS = (http_errors.InvalidChunkSize, http_errors.ChunkMissingTerminator, http_errors.InvalidChunkExtension)
#: What each of gunicorn's parse errors is called in an answer: fixed words, never the client's bytes.
_MESSAGES: tuple[tuple[type[Exception] | tuple[type[Exception], ...], str], ...] = (
    (http_errors.InvalidRequestLine, "malformed request line"),
    (http_errors.InvalidRequestMethod, "invalid request method"),
    (http_errors.InvalidHTTPVersion, "unsupported HTTP version"),
    (http_errors.LimitRequestLine, "request line too long"),
    (http_errors.InvalidHeaderName, "invalid header field name"),
    (http_errors.ObsoleteFolding, "obsolete line folding is not accepted"),
    (http_errors.UnsupportedTransferCoding, "unsupported transfer coding"),
    (http_errors.ExpectationFailed, "unsupported expectation: only 100-continue is understood"),
    (_CHUNK_ERRORS, "malformed chunked body"),
    ((http_errors.InvalidProxyLine, http_errors.InvalidProxyHeader), "malformed PROXY protocol header"),
    (http_errors.InvalidSchemeHeaders, "contradictory scheme headers"),
    (http_errors.InvalidH2CPreface, "expected the HTTP/2 connection preface"),
    (SSLError, "TLS error"),
)
#: ``InvalidHeader`` by the field gunicorn names (or the reason it gives).
_HEADER_MESSAGES = {
    "CONTENT-LENGTH": "invalid Content-Length: repeated, not a number, or sent with Transfer-Encoding",
    "TRANSFER-ENCODING": "invalid Transfer-Encoding",
    "CONTENT-TYPE": "more than one Content-Type header",
    "bare LF as line terminator": "header lines must end with CRLF",
}
#: ``LimitRequestHeaders`` by gunicorn's reason.
_LIMIT_MESSAGES = {
    "limit request headers fields": "too many header fields",
    "limit request headers fields size": "a header field is too long",
}


def refusal(exc: BaseException) -> BastionError:
    """The protocol error answered for an exception gunicorn's parser or worker raised.

    An :class:`~kernel.core.errors.Error` means the server is at fault; its message is replaced by a log id.
    """
    if isinstance(exc, (http_errors.InvalidResponseHeader, http_errors.InvalidResponseHeaderName)):
        return Error()  # a header the application tried to send: the server's fault, not the client's
    if isinstance(exc, RequestTimeout):
        return exc
    if isinstance(exc, TimeoutError):
        return RequestTimeout()
    if isinstance(exc, http_errors.InvalidHeader):
        if exc.hdr == "HOST":
            return InvalidHost("more than one Host header")
        return InvalidCall(_HEADER_MESSAGES.get(exc.hdr, "malformed header field"))
    if isinstance(exc, http_errors.LimitRequestHeaders):
        return InvalidCall(_LIMIT_MESSAGES.get(exc.msg, "request headers too large"))
    if isinstance(exc, http_errors.ForbiddenProxyRequest):
        return Forbidden("the PROXY protocol is not accepted from this address")
    for classes, message in _MESSAGES:
        if isinstance(exc, classes):
            return InvalidCall(message)
    return Error()


def error_response(error: BastionError, request_id: str | None = None) -> bytes:
    """A complete HTTP/1.1 answer for ``error``, closing the connection (a 500's body carries ``request_id``)."""
    request_id = request_id or new_request_id()
    body = error.body()
    if isinstance(error, Error):
        body["request_id"] = request_id
    body = dumps(body)
    lines = [
        f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}",
        f"Date: {util.http_date()}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        f"X-Request-Id: {request_id}",
        *(f"{name}: {value}" for name, value in SECURITY_HEADERS),
        *(f"{name}: {value}" for name, value in error.headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def head_complete(head: bytearray, start: int = 0) -> bool:
    """Whether the parser can be given ``head`` (bytes from ``start`` on are new since the last look).

    True once the blank line that ends a head has arrived, past :data:`HEADER_CAP`, or at a bare LF,
    which gunicorn's parser refuses without reading further.
    """
    if head.find(b"\r\n\r\n", max(0, start - 3)) >= 0:
        return True
    return len(head) > HEADER_CAP or head.count(b"\n") != head.count(b"\r\n")


def chunk_size(line: bytes) -> int | None:
    """The size a chunk-size line declares, or None where gunicorn's ``ChunkedReader`` refuses the line."""
    size, semicolon, extension = line.partition(b";")
    if semicolon:
        if b"\r" in extension or not CHUNK_EXT_RE.fullmatch(b";" + extension):
            return None
        size = size.rstrip(b" \t")
    if not size or not _HEX.issuperset(size):
        return None
    return int(size, 16)


class ChunkedEnd:
    """Where a chunked body ends, found in the main loop as its bytes arrive.

    Only to know when to hand the request to a thread: the thread's parser (gunicorn's ``ChunkedReader``)
    decodes the same bytes and refuses what is malformed. The rules are gunicorn's, so that a thread finds
    every byte it reads already buffered: :meth:`ready` is true at the end of the trailer section, at the
    first byte gunicorn would refuse (the thread then answers 400 without reading further), or once more
    than ``max_body`` bytes of content have arrived (``over``: the application reads ``max_body + 1`` and
    answers 413, and a read past what arrived raises PayloadTooLarge).
    """

    SIZE, DATA, TRAILERS = range(3)

    def __init__(self, start: int, max_body: int, line_limit: int, trailer_limit: int):
        self.pos = start  # the first byte of the buffer not yet followed
        self.max_body = max_body
        self.line_limit = line_limit
        self.trailer_limit = trailer_limit
        self.state = self.SIZE
        self.content = 0  # bytes of the chunks already passed
        self.left = 0  # bytes of the current chunk still expected, with its CRLF
        self.whole = False  # the trailer section has ended: the body is complete
        self.over = False  # more than max_body bytes of content arrived

    def ready(self, buf: bytearray) -> bool:
        """Whether ``buf`` (the head and what followed it) holds all the thread will read of the body."""
        while True:
            if self.state == self.DATA:
                arrived = len(buf) - self.pos
                if arrived < self.left:
                    self.over = self.content + min(arrived, self.left - 2) > self.max_body
                    return self.over
                self.content += self.left - 2
                self.pos += self.left
                self.over = self.content > self.max_body
                if buf[self.pos - 2:self.pos] != b"\r\n" or self.over:
                    return True
                self.state = self.SIZE
            elif self.state == self.SIZE:
                end = buf.find(b"\r\n", self.pos)
                if end < 0:
                    return len(buf) - self.pos > self.line_limit
                size = chunk_size(bytes(buf[self.pos:end]))
                if size is None:
                    return True
                self.pos = end + 2
                if size == 0:
                    self.state = self.TRAILERS
                else:
                    self.state, self.left = self.DATA, size + 2
            else:
                trailers = buf[self.pos:]
                self.whole = trailers[:2] == b"\r\n" or trailers.find(b"\r\n\r\n") >= 0
                return (self.whole or len(trailers) > self.trailer_limit
                        or trailers.count(b"\n") != trailers.count(b"\r\n"))


def _peer(addr) -> str:
    if isinstance(addr, tuple) and addr:
        return str(addr[0])
    return "unix socket"


def log_refusal(addr, error: BastionError, request_id: str, req=None) -> None:
    """The ``bastion.call`` line of a request the worker answered itself: at WARNING, with the fixed reason."""
    method = getattr(req, "method", None) if req is not None else None
    path = getattr(req, "path", None) if req is not None else None
    log_event(CALL, logging.WARNING, "call", {
        "origin": _peer(addr), "method": method if isinstance(method, str) else None,
        "path": clip(path) if isinstance(path, str) else None, "status": error.status, "exc": error.exc,
        "err": "; ".join(error.err), "by": "worker",
    }, request_id)


def _body_consumed(req) -> bool:
    """Whether the whole body of ``req`` has been read (an empty body has)."""
    reader = getattr(req.body, "reader", None)
    if isinstance(reader, LengthReader):
        return reader.length == 0
    if isinstance(reader, ChunkedReader):
        return reader.parser is None
    return False


class BastionUnreader(SocketUnreader):
    """The socket reader of one connection.

    No socket read while a head is parsed (``reads_allowed``: the main loop gathered it already), nor for a
    request the main loop gathered whole (``sealed``: a read past what it gathered finds the end, or, past
    ``max_body``, raises PayloadTooLarge). Otherwise, while the application runs, every read is bounded by
    the body deadline, and the first one sends the ``100 Continue`` the client may be waiting for.
    """

    def __init__(self, sock, max_chunk: int = 8192):
        super().__init__(sock, max_chunk)
        self.reads_allowed = True
        self.sealed = False
        self.over_limit: int | None = None  # the body is over this many bytes (max_body)
        self.deadline: float | None = None
        self.body_timeout = 0.0
        self.req = None
        self.resp = None
        self.continue_pending = False

    def start_body(self, req, resp, expect_continue: bool, timeout: float) -> None:
        """The application starts on ``req``: reads from now on have ``timeout`` seconds in total."""
        self.req, self.resp = req, resp
        self.continue_pending = expect_continue
        self.body_timeout = timeout
        self.deadline = time.monotonic() + timeout

    def response_started(self) -> None:
        """The application answers: no ``100 Continue`` any more, and close if the body was never asked for."""
        if self.continue_pending:
            self.continue_pending = False
            if not _body_consumed(self.req):
                self.resp.force_close()  # the client may still send the body it was waiting to send

    def end_body(self) -> None:
        """The application is done; later reads (gunicorn draining an unread body) have no deadline of ours."""
        self.deadline = None
        self.continue_pending = False
        self.req = self.resp = None

    def chunk(self, size_hint=None):
        if not self.reads_allowed:
            # The head was handed over cut at HEADER_CAP, without its end: the parser wants more of it.
            raise http_errors.LimitRequestHeaders("request headers too large")
        if self.sealed:
            if self.over_limit is not None and self.deadline is not None:
                if self.resp is not None:
                    self.resp.force_close()
                raise PayloadTooLarge(f"request body over {self.over_limit} bytes")
            return b""
        if self.deadline is None:
            return super().chunk(size_hint)
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise self._timed_out()
        self.sock.settimeout(remaining)
        try:
            if self.continue_pending:
                self.continue_pending = False
                if not self.resp.headers_sent:
                    self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            return super().chunk(size_hint)
        except TimeoutError:
            raise self._timed_out() from None
        finally:
            self.sock.settimeout(None)

    def _timed_out(self) -> RequestTimeout:
        self.deadline = 0.0  # every later read fails at once
        if self.resp is not None:
            self.resp.force_close()
        return RequestTimeout(f"the request body did not arrive within {self.body_timeout:g} s")


class BastionParser(RequestParser):
    """gunicorn's HTTP/1 request parser over a :class:`BastionUnreader` that may not read while parsing a head."""

    def __init__(self, cfg, sock, client):
        super().__init__(cfg, sock, client)
        self.unreader = BastionUnreader(sock)

    def __next__(self):
        # The previous body was read to its end before the connection was kept alive, and the main loop
        # gathered this head: parsing it needs no socket read.
        self.unreader.reads_allowed = False
        try:
            return super().__next__()
        finally:
            self.unreader.reads_allowed = True

    next = __next__


class RequestBody:
    """``wsgi.input``: gunicorn's body, whose malformed framing is answered 400 InvalidCall by the application.

    Without this a bad chunk would reach the application as an unexpected exception (a 500).
    Errors close the connection after the answer: where the next request would start is unknown.
    """

    def __init__(self, body, resp, log, peer: str):
        self._body = body
        self._resp = resp
        self._log = log
        self._peer = peer

    def read(self, size=None):
        return self._guard(self._body.read, size)

    def readline(self, size=None):
        return self._guard(self._body.readline, size)

    def readlines(self, hint=None):
        return self._guard(self._body.readlines, hint)

    def __iter__(self):
        return self

    def __next__(self):
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def _guard(self, method, arg):
        try:
            return method(arg)
        except BastionError as error:
            self._refused(error)
            raise
        except http_errors.NoMoreData:
            error = InvalidCall("the request body ended before its end")
        except _CHUNK_ERRORS:
            error = InvalidCall("malformed chunked body")
        except http_errors.ParseException:
            error = InvalidCall("malformed trailer section")
        self._resp.force_close()
        self._refused(error)
        raise error

    def _refused(self, error: BastionError) -> None:
        # The application answers it, and its call line says so; the reason, in fixed words, is here.
        self._log.debug("request body refused from %s: %d %s: %s", self._peer, error.status, error.exc, "; ".join(error.err))


class BastionConn(TConn):
    """A connection of the worker: with its request gathered in the main loop when ``gathers`` is true."""

    def __init__(self, cfg, sock, client, server, gathers: bool):
        super().__init__(cfg, sock, client, server)
        self.gathers = gathers
        #: What arrived of the request being gathered: its head, then its body (None once handed over).
        self.buf: bytearray | None = None
        self.head_deadline = 0.0
        self.body_deadline = 0.0
        self.linger_deadline = 0.0
        self.lingered = 0
        self.reset()
        if gathers:
            self.parser = BastionParser(cfg, self.sock, client)

    def reset(self) -> None:
        """Forget what was known of the previous request (a kept-alive connection gathers the next one)."""
        self.look: Request | None = None  # the head as parsed in the loop, to follow its body
        self.body_start = 0  # where the body starts in ``buf``
        self.body_end: int | None = None  # where a Content-Length body ends in ``buf``
        self.chunks: ChunkedEnd | None = None  # where a chunked body is
        self.counted = 0  # bytes of ``buf`` counted in the worker's body buffer
        self.paused = False  # out of the selector until the body buffer has room
        self.whole_body = False  # the loop gathered the whole body: the thread never reads the socket for it
        self.continued = False  # the loop sent 100 Continue (or the body came without waiting for it)
        self.continuing = False  # handed over before its body, for the application to decide on 100 Continue

    def init(self):
        super().init()
        # TLS, h2c and PROXY protocol connections are set up by gunicorn in the thread; an HTTP/1 parser made
        # there still gets the body deadline and the deferred 100 Continue.
        parser = self.parser
        if not self.is_http2 and isinstance(parser, RequestParser) and not isinstance(parser.unreader, BastionUnreader):
            unreader = BastionUnreader(self.sock)
            unreader.unread(parser.unreader.take_buffered())
            parser.unreader = unreader


class Starting:
    """The application of a worker whose application could not be built while the storage was unavailable.

    Each request is answered 503 ServiceUnavailable (``retry_after``, the security headers), except that
    at most once every :attr:`RETRY` seconds one request first tries to build the application again
    (``load()``, gunicorn's application loader); once that succeeds, every request goes to it.
    """

    RETRY = 1.0

    def __init__(self, load, log):
        self._load = load
        self._log = log
        self._lock = threading.Lock()
        self._next = time.monotonic() + self.RETRY
        self.app = None

    def __call__(self, environ, start_response):
        app = self.app or self._retry()
        if app is not None:
            return app(environ, start_response)
        error = ServiceUnavailable()
        body = dumps(error.body())
        request_id = new_request_id()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                   ("X-Request-Id", request_id), *SECURITY_HEADERS, *error.headers.items()]
        log_event(CALL, logging.WARNING, "call", {
            "origin": environ.get("REMOTE_ADDR"), "method": environ.get("REQUEST_METHOD"),
            "path": clip(environ.get("PATH_INFO")), "status": error.status, "exc": error.exc,
            "err": "the application is not built yet: the storage does not answer", "by": "worker"}, request_id)
        start_response(f"{error.status} {HTTPStatus(error.status).phrase}", headers)
        return [body]

    def _retry(self):
        if time.monotonic() < self._next or not self._lock.acquire(blocking=False):
            return None
        try:
            if self.app is None and time.monotonic() >= self._next:
                try:
                    self.app = self._load()
                    self._log.info("the storage answers again: the application is ready")
                except ServiceUnavailable:
                    self._next = time.monotonic() + self.RETRY
            return self.app
        finally:
            self._lock.release()


class BastionWorker(ThreadWorker):
    """gunicorn's threaded worker that gathers requests in its main loop and answers every refusal in JSON."""

    header_timeout: float = SERVER_SCHEMA["header_timeout"].default
    body_timeout: float = SERVER_SCHEMA["body_timeout"].default

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        #: Connections whose head is arriving, whose body is arriving, and closing ones waiting for the client
        #: to close: each sorted by its deadline, since each is appended with now plus a constant.
        self.gathering_conns: deque[BastionConn] = deque()
        self.body_conns: deque[BastionConn] = deque()
        self.lingering_conns: deque[BastionConn] = deque()
        #: Connections of ``body_conns`` out of the selector until the body buffer has room.
        self.paused_conns: list[BastionConn] = []
        self.buffered = 0  # bytes of bodies held beyond each connection's BODY_ALLOWANCE
        self.continuing = 0  # requests with Expect: 100-continue in threads before their body arrived
        self.max_body: int = BASTION_SCHEMA["max_body"].default
        self.body_buffer = BODY_BUFFER
        self.continue_threads = self.cfg.threads // 2
        self.evicted = 0  # connections closed at the limit since the last log line about them
        self.evicted_logged = 0.0

    def init_process(self):
        config = load_config()
        server = config.server
        self.header_timeout = server.header_timeout
        self.body_timeout = server.body_timeout
        self.max_body = config.bastion.max_body
        self.body_buffer = max(BODY_BUFFER, self.max_body)
        self.fit_open_files()
        super().init_process()

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
        self.log.warning("cannot accept a connection (%s): at most %d connections per worker from now on",
                         errno.errorcode.get(exc.errno, exc.errno), max(1, self.nr_conns))
        self.worker_connections = max(1, self.nr_conns)
        if not self.make_room():
            super().set_accept_enabled(False)

    # -- gathering a request --

    def gather(self, conn: BastionConn, head: bytes = b"") -> None:
        """Wait in the selector for the rest of the head that starts with ``head``."""
        conn.reset()
        conn.buf = bytearray(head)
        complete = bool(head) and head_complete(conn.buf)
        try:
            conn.sock.setblocking(False)  # after a thread too: the body and 100 Continue are read and sent here
            if not complete:
                self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_head_readable, conn))
        except (OSError, ValueError, KeyError):
            self.nr_conns -= 1
            conn.close()
            return
        if complete:
            self.head_arrived(conn)
            return
        conn.head_deadline = time.monotonic() + self.header_timeout
        self.gathering_conns.append(conn)

    def on_head_readable(self, conn: BastionConn, _sock) -> None:
        """Read what arrived of a head; follow its body once the head is complete."""
        try:
            data = conn.sock.recv(min(RECV_SIZE, HEADER_CAP + 1 - len(conn.buf)))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # closed or reset before the head was complete: nobody to answer
            self._stop_gathering(conn)
            self.nr_conns -= 1
            conn.close()
            return
        start = len(conn.buf)
        conn.buf += data
        if head_complete(conn.buf, start):
            self._stop_gathering(conn)
            self.head_arrived(conn)

    def head_arrived(self, conn: BastionConn) -> None:
        """The head is complete (the connection in no selector): hand it over, or gather its body first."""
        look = self.look(conn)
        if look is None:
            self.hand_over(conn)
            return
        reader = look.body.reader
        head_end = len(conn.buf) - len(look.unreader.buf.getvalue())
        if isinstance(reader, ChunkedReader):
            conn.chunks = ChunkedEnd(head_end, self.max_body, reader.limit_chunk_size_line, reader.limit_trailer_section)
        elif isinstance(reader, LengthReader) and 0 < reader.length <= self.max_body:
            conn.body_end = head_end + reader.length
        else:  # no body, or one declared over max_body: the application answers 413 without reading it
            self.hand_over(conn, over=isinstance(reader, LengthReader) and reader.length > self.max_body)
            return
        conn.look, conn.body_start = look, head_end
        if look._expected_100_continue and len(conn.buf) == head_end:
            if self.continuing < self.continue_threads:  # the application decides, in a thread
                conn.continuing = True
                self.continuing += 1
                self.hand_over(conn)
                return
            try:
                sent = conn.sock.send(CONTINUE)
            except OSError:
                sent = 0
            if sent != len(CONTINUE):  # the client does not even read 25 bytes: give up on it
                self.nr_conns -= 1
                conn.close()
                return
        conn.continued = look._expected_100_continue
        if self.body_ready(conn):
            self.hand_over_body(conn)
            return
        try:
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_body_readable, conn))
        except (OSError, ValueError, KeyError):
            self.nr_conns -= 1
            conn.close()
            return
        conn.body_deadline = time.monotonic() + self.body_timeout
        self.body_conns.append(conn)

    def look(self, conn: BastionConn) -> Request | None:
        """The head parsed by gunicorn's parser, to learn its body's framing; None if it has no body or is refused.

        The parse is thrown away: the thread parses the same bytes again, and answers what is refused.
        """
        if not _BODY_FIELDS.search(conn.buf):
            return None
        try:
            return Request(self.cfg, IterUnreader((bytes(conn.buf),)), conn.client, conn.parser.req_count + 1)
        except Exception:
            return None

    def body_ready(self, conn: BastionConn) -> bool:
        """Whether the thread will find in ``conn.buf`` every byte it reads of the body."""
        if conn.chunks is not None:
            return conn.chunks.ready(conn.buf)
        return len(conn.buf) >= conn.body_end

    def on_body_readable(self, conn: BastionConn, _sock) -> None:
        """Read what arrived of a body, within the worker's body buffer; hand the request over once ready."""
        room = max(0, BODY_ALLOWANCE - (len(conn.buf) - conn.body_start)) + self.body_buffer - self.buffered
        if room <= 0:
            self._unregister(conn)
            conn.paused = True
            self.paused_conns.append(conn)
            return
        wanted = RECV_SIZE if conn.chunks is not None else conn.body_end - len(conn.buf)
        try:
            data = conn.sock.recv(min(wanted, room, RECV_SIZE))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # closed or reset before the body was complete: nobody to answer (as gunicorn does)
            self._stop_body(conn)
            self.nr_conns -= 1
            conn.close()
            return
        conn.buf += data
        counted = max(0, len(conn.buf) - conn.body_start - BODY_ALLOWANCE)
        self.buffered += counted - conn.counted
        conn.counted = counted
        if self.body_ready(conn):
            self._stop_body(conn)
            self.hand_over_body(conn)

    def hand_over_body(self, conn: BastionConn) -> None:
        """Hand over a request whose body :meth:`body_ready` found ready: whole, over max_body, or malformed."""
        chunks = conn.chunks
        self.hand_over(conn, whole=chunks is None or chunks.whole, over=chunks is not None and chunks.over)

    def hand_over(self, conn: BastionConn, whole: bool = False, over: bool = False) -> None:
        """Give the gathered bytes back to the parser and the connection to the thread pool.

        ``whole``: the whole body is among them; ``over``: the body is over ``max_body``. Only a request
        handed over before its body for the application to decide on 100 Continue reads the socket.
        """
        unreader = conn.parser.unreader
        unreader.unread(bytes(conn.buf))
        unreader.sealed = not conn.continuing
        unreader.over_limit = self.max_body if over else None
        conn.buf = None
        conn.look = conn.chunks = None
        conn.whole_body = whole
        conn.data_ready = True  # gunicorn's thread must not wait for a first byte again
        self.enqueue_req(conn)

    def on_client_socket_readable(self, conn, client):
        """A kept-alive connection sends its next request: gather its head."""
        if not getattr(conn, "gathers", False):
            return super().on_client_socket_readable(conn, client)
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self.gather(conn)

    def finish_request(self, conn, fs):
        """A request is done (in the main loop): keep the connection alive, gather what follows, or close it."""
        if not getattr(conn, "gathers", False):
            return super().finish_request(conn, fs)
        if conn.continuing:
            conn.continuing = False
            self.continuing -= 1
        try:
            keep = fs.result() if not fs.cancelled() else False
            if not keep:
                self.linger(conn)
                return
            following = conn.parser.unreader.take_buffered()
            if following:  # pipelined: read with the previous body, so the socket may not look readable again
                self.gather(conn, following)
                return
            conn.sock.setblocking(False)
            conn.set_timeout()
            if not self.alive:
                conn.timeout = min(conn.timeout, time.monotonic() + STOP_KEEPALIVE_LINGER)
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_client_socket_readable, conn))
            self.keepalived_conns.append(conn)  # after register: a connection that failed is in no deque
        except Exception:
            self.nr_conns -= 1
            conn.close()

    def linger(self, conn: BastionConn) -> None:
        """Close after the answer: send FIN, then discard what the client still sends until it closes.

        gunicorn does this with blocking reads of up to 2 s in the main loop; here it waits in the selector.
        """
        try:
            conn.sock.setblocking(False)
            conn.sock.shutdown(socket.SHUT_WR)
            conn.linger_deadline = time.monotonic() + LINGER_SECONDS
            conn.lingered = 0
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_linger_readable, conn))
        except (OSError, ValueError, KeyError):
            self.nr_conns -= 1
            conn.close()
            return
        self.lingering_conns.append(conn)

    def on_linger_readable(self, conn: BastionConn, _sock) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        conn.lingered += len(data)
        if not data or conn.lingered >= LINGER_BYTES:
            self.lingering_conns.remove(conn)
            self._unregister(conn)
            self.nr_conns -= 1
            conn.close()

    def refuse_now(self, conn: BastionConn, error: BastionError) -> None:
        """Answer ``error`` from the main loop (one non-blocking send, best effort) and close."""
        request_id = new_request_id()
        log_refusal(conn.client, error, request_id, conn.look)
        conn.buf = conn.look = conn.chunks = None
        try:
            conn.sock.send(error_response(error, request_id))
        except OSError:
            pass
        self.linger(conn)

    def murder_pending(self):
        """Besides gunicorn's pending connections: heads and bodies past their deadline, lingering closes past theirs."""
        super().murder_pending()
        now = time.monotonic()
        while self.gathering_conns and self.gathering_conns[0].head_deadline <= now:
            conn = self.gathering_conns.popleft()
            self._unregister(conn)
            if conn.buf:
                self.refuse_now(conn, RequestTimeout(f"the request headers did not arrive within {self.header_timeout:g} s"))
            else:  # not one byte: no request began, so none is answered (gunicorn closes idle connections so)
                self.nr_conns -= 1
                conn.close()
        while self.body_conns and self.body_conns[0].body_deadline <= now:
            conn = self.body_conns.popleft()
            self._unregister(conn)
            self._release(conn)
            self.refuse_now(conn, RequestTimeout(f"the request body did not arrive within {self.body_timeout:g} s"))
        while self.lingering_conns and self.lingering_conns[0].linger_deadline <= now:
            conn = self.lingering_conns.popleft()
            self._unregister(conn)
            self.nr_conns -= 1
            conn.close()

    def murder_keepalived(self, force=False):
        super().murder_keepalived(force)
        if force:  # the worker stops: what is still gathering or lingering is closed too
            for queue in (self.gathering_conns, self.body_conns, self.lingering_conns):
                while queue:
                    conn = queue.popleft()
                    self._unregister(conn)
                    if queue is self.body_conns:
                        self._release(conn)
                    self.nr_conns -= 1
                    conn.close()

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
        now = time.monotonic()
        for queue, deadline in ((self.gathering_conns, "head_deadline"), (self.body_conns, "body_deadline"),
                                (self.lingering_conns, "linger_deadline")):
            if queue:
                timeout = min(timeout, getattr(queue[0], deadline) - now)
        try:
            events = self.poller.select(max(0.0, timeout))
            registered = self.poller.get_map()
            for key, _ in events:
                if registered.get(key.fd) is key:
                    key.data(key.fileobj)
        except OSError as e:
            if e.errno != errno.EINTR:
                raise

    def _stop_gathering(self, conn: BastionConn) -> None:
        self._unregister(conn)
        self.gathering_conns.remove(conn)

    def _stop_body(self, conn: BastionConn) -> None:
        self._unregister(conn)
        self.body_conns.remove(conn)
        self._release(conn)

    def _release(self, conn: BastionConn) -> None:
        """``conn`` (out of ``body_conns``) holds no more of the body buffer: paused bodies may go on."""
        self.buffered -= conn.counted
        conn.counted = 0
        if conn.paused:
            conn.paused = False
            self.paused_conns.remove(conn)
        if self.paused_conns and self.buffered < self.body_buffer:
            for paused in self.paused_conns:
                paused.paused = False
                self.poller.register(paused.sock, selectors.EVENT_READ, partial(self.on_body_readable, paused))
            self.paused_conns.clear()

    def _unregister(self, conn: BastionConn) -> None:
        try:
            self.poller.unregister(conn.sock)
        except (OSError, KeyError, ValueError):
            pass

    # -- in a pool thread ---------------------------------------------------

    def _keepalive_after(self, conn, keepalive):
        # A body the loop did not gather whole and the application did not read is not drained by a thread
        # (a slow client would hold it): the connection closes. Draining a gathered body reads only the
        # buffer, and can meet malformed chunks after the answer went out: nothing more may be written then.
        if keepalive and getattr(conn, "gathers", False) and not conn.whole_body and not _body_consumed(conn.parser.mesg):
            self.log.debug("Closing connection: unread request body")
            return False
        try:
            return super()._keepalive_after(conn, keepalive)
        except (http_errors.ParseException, http_errors.NoMoreData) as exc:
            self.log.debug("Closing connection: unread request body not drained (%s)", type(exc).__name__)
            return False

    def handle_request(self, req, conn):
        """gunicorn 27's ``ThreadWorker.handle_request``, with the body deadline and the deferred 100 Continue."""
        unreader = getattr(conn.parser, "unreader", None)
        if not isinstance(unreader, BastionUnreader):
            return super().handle_request(req, conn)
        # gunicorn would send "100 Continue" in wsgi.create(), before the application has seen the request;
        # the main loop may have sent it already, before gathering the body.
        expect_continue = req._expected_100_continue and not getattr(conn, "continued", False)
        req._expected_100_continue = False
        environ = {}
        resp = None
        try:
            self.cfg.pre_request(self, req)
            request_start = datetime.now()
            resp, environ = wsgi.create(req, conn.sock, conn.client, conn.server, self.cfg)
            environ["wsgi.multithread"] = True
            environ["wsgi.input"] = RequestBody(req.body, resp, self.log, _peer(conn.client))
            self.nr += 1
            if self.nr >= self.max_requests:
                if self.alive:
                    self.log.info("Autorestarting worker after current request.")
                    self.alive = False
                resp.force_close()
            if not self.alive or not self.cfg.keepalive:
                resp.force_close()
            elif len(self.keepalived_conns) >= self.max_keepalived:
                resp.force_close()

            def start_response(status, headers, exc_info=None):
                unreader.response_started()
                return resp.start_response(status, headers, exc_info)

            unreader.start_body(req, resp, expect_continue, self.body_timeout)
            respiter = self.wsgi(environ, start_response)
            try:
                if isinstance(respiter, environ["wsgi.file_wrapper"]):
                    resp.write_file(respiter)
                else:
                    for item in respiter:
                        resp.write(item)
                resp.close()
            finally:
                self.log.access(resp, req, environ, datetime.now() - request_start)
                if hasattr(respiter, "close"):
                    respiter.close()
            if resp.should_close():
                self.log.debug("Closing connection.")
                return False
        except OSError:
            raise
        except (Exception, SystemExit):
            if resp and resp.headers_sent:
                # Timeout abort is SystemExit. If the response started, writing an error answer corrupts it.
                self.log.exception("Error handling request")
                util.close_graceful(conn.sock)
                raise StopIteration() from None
            raise
        finally:
            unreader.end_body()
            try:
                self.cfg.post_request(self, req, environ, resp)
            except Exception:
                self.log.exception("Exception in post_request hook")
        return True

    def handle_error(self, req, client, addr, exc):
        """Answer what gunicorn refused (or failed at) before the application answered: JSON, then close."""
        error = refusal(exc)
        request_id = new_request_id()
        req = req if req is not None else getattr(exc, "req", None)
        if isinstance(error, Error):
            self.log.error("unexpected error handling a request from %s, request id %s", _peer(addr), request_id,
                           exc_info=exc)
            error = Error(f"internal error; request id {request_id}")
        log_refusal(addr, error, request_id, req)
        answer = error_response(error, request_id)
        self._log_access(req, client, addr, error, len(answer))
        try:
            util.write_nonblock(client, answer)
        except Exception:
            self.log.debug("Failed to send error message.")

    def _log_access(self, req, client, addr, error: BastionError, length: int) -> None:
        """An access log line for a refused request whose request line was read (as gunicorn writes one)."""
        if req is None or getattr(req, "method", None) is None or getattr(req, "version", None) is None:
            return
        try:
            environ = wsgi.default_environ(req, client, self.cfg)
            if isinstance(addr, tuple):
                environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = str(addr[0]), str(addr[1])
            resp = wsgi.Response(req, client, self.cfg)
            resp.status = f"{error.status} {HTTPStatus(error.status).phrase}"
            resp.response_length = length
            self.log.access(resp, req, environ, timedelta(0))
        except Exception:
            self.log.debug("Failed to log the refused request.")


class BastionLogger(glogging.Logger):
    """gunicorn's logger, sending its messages through Bastion's logging (``kernel.ops.logs``): the INI file's
    ``[loggers]``/``[handlers]``/``[formatters]``, else the default line on standard error.

    ``gunicorn.error`` keeps gunicorn's ``--log-level`` (info) and propagates to the root logger's handlers
    instead of having its own; gunicorn's access log is off, since ``bastion.call`` has one line per request
    (``--access-logfile`` and ``--error-logfile`` are not used). ``kill -USR1`` reopens every file handler.
    """

    def setup(self, cfg):
        self.cfg = cfg
        self._access_log_enabled = False
        self.loglevel = self.LOG_LEVELS.get(cfg.loglevel.lower(), logging.INFO)
        for log in (self.error_log, self.access_log):
            for handler in list(log.handlers):
                if getattr(handler, "_gunicorn", False):
                    log.removeHandler(handler)
            log.propagate = True
        self.error_log.setLevel(self.loglevel)
        self.access_log.setLevel(logging.WARNING)
        # In the master, when gunicorn starts (and again on a reload): workers inherit what it set up.
        try:
            configure_logging(load_config())
        except ConfigError as exc:
            sys.exit(f"bastion: {exc}")

    def access(self, resp, req, environ, request_time):
        """Nothing: ``bastion.call`` has the line of every request."""

    def _handlers(self):
        loggers = [logging.getLogger()] + [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
        for log in loggers:
            yield from getattr(log, "handlers", [])

    def reopen_files(self):
        """Reopen every file handler (``kill -USR1``, after logrotate moved the files)."""
        for handler in self._handlers():
            if isinstance(handler, logging.FileHandler):
                handler.acquire()
                try:
                    if handler.stream:
                        handler.stream.close()
                        handler.stream = handler._open()
                finally:
                    handler.release()

    def close_on_exec(self):
        for handler in self._handlers():
            if isinstance(handler, logging.FileHandler) and handler.stream:
                util.close_on_exec(handler.stream.fileno())
