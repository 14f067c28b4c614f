"""Bastion's gunicorn worker: gunicorn's threaded worker, hardened against slow and malformed requests.

The packaged settings (``kernel.gunicorn_conf``, which ``bastion serve`` runs with and a checkout's
``gunicorn.conf.py`` imports) always select it (``worker_class = "kernel.worker.BastionWorker"``), with one
thread as with many. What it changes in gunicorn 27's ``ThreadWorker`` (``gunicorn/workers/gthread.py``):

* **Headers are gathered in the main loop, not in a thread.** gunicorn waits (5 s) only for the first
  byte of a request before committing a pool thread, which then blocks reading the rest of the head
  with no deadline: a few clients sending one header line every few seconds hold every thread. Here a
  new or kept-alive connection stays in the worker's selector, read without blocking, until its whole
  head (up to the blank line) has arrived; only then is it handed to the pool, the bytes given back to
  the parser. A head still incomplete ``[server] header_timeout`` seconds after the connection began
  waiting for it is answered 408 RequestTimeout and closed. A head cut at :data:`HEADER_CAP` bytes
  without its end is handed over too: the parser may not read the socket while parsing a head, so it
  answers its limit error instead of waiting for more.
* **The body has a deadline.** The application's reads of the body together may take at most
  ``[server] body_timeout`` seconds from the start of the application; past it a read raises
  :class:`kernel.errors.RequestTimeout`, which the application answers (408), and the connection closes.
* **``100 Continue`` is sent when the application first reads the body from the socket**, not before
  the application runs: a request refused on its headers (413 by Content-Length) never gets it, and the
  connection closes after such an answer since the client may still send the body.
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
set up by gunicorn in a pool thread, as before: their heads are read the way gunicorn reads them, with
no header deadline. Once an HTTP/1 request is parsed, the body deadline and the deferred ``100
Continue`` apply to every connection. None of this replaces the buffering reverse proxy (nginx) that
production runs behind.

The two timeouts come from the ``[server]`` section, read in each worker process with
:func:`kernel.config.load_config`, the way :mod:`kernel.wsgi` reads the application's configuration:
``bastion serve``, plain ``gunicorn kernel.wsgi:app`` in a checkout and the test launchers all get them.

This module is imported by gunicorn's master process (which loads the worker class) and what it imports
there is not reloaded with the code in development: it imports no more of Bastion than
``kernel.gunicorn_conf`` already does.
"""

from __future__ import annotations

import errno
import logging
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
from gunicorn.http.body import ChunkedReader, LengthReader
from gunicorn.http.parser import RequestParser
from gunicorn.http.unreader import SocketUnreader
from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, TConn, ThreadWorker

from kernel.config import SERVER_SCHEMA, load_config
from kernel.errors import (
    BastionError,
    ConfigError,
    Error,
    Forbidden,
    InvalidCall,
    InvalidHost,
    RequestTimeout,
    ServiceUnavailable,
)
from kernel.jsonio import dumps
from kernel.logs import CALL, clip, configure_logging, log_event, new_request_id

if gunicorn.version_info < (27, 0):  # the worker relies on the structure of gunicorn 27's threaded worker
    raise ImportError(f"kernel.worker needs gunicorn 27 or later, found {gunicorn.__version__}")

#: Most bytes of a request head gathered in the main loop; a head without its end by then goes to the
#: parser, which answers 400 (its own limits, ``limit_request_line`` and ``limit_request_field_size``,
#: are smaller for one line).
HEADER_CAP = 64 * 1024
#: How long a closing connection is read and discarded after the answer, and how much of it at most.
LINGER_SECONDS = 2.0
LINGER_BYTES = 64 * 1024
RECV_SIZE = 64 * 1024

#: The headers every Bastion answer carries (``kernel.app`` adds them to the application's answers;
#: ``kernel.app.API_CSP`` is the same policy, not imported here: see the module's docstring).
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

    An :class:`~kernel.errors.Error` means the server is at fault; its message is replaced by a log id.
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

    No socket read while a head is parsed (``reads_allowed``: the main loop gathered it already); while
    the application runs, every read is bounded by the body deadline, and the first one sends the
    ``100 Continue`` the client may be waiting for.
    """

    def __init__(self, sock, max_chunk: int = 8192):
        super().__init__(sock, max_chunk)
        self.reads_allowed = True
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
    """A connection of the worker: with its head being gathered when ``gathers`` is true."""

    def __init__(self, cfg, sock, client, server, gathers: bool):
        super().__init__(cfg, sock, client, server)
        self.gathers = gathers
        self.head: bytearray | None = None
        self.head_deadline = 0.0
        self.linger_deadline = 0.0
        self.lingered = 0
        if gathers:
            self.parser = BastionParser(cfg, self.sock, client)

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
    """gunicorn's threaded worker that gathers heads in its main loop and answers every refusal in JSON."""

    header_timeout: float = SERVER_SCHEMA["header_timeout"].default
    body_timeout: float = SERVER_SCHEMA["body_timeout"].default

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        #: Connections whose head is arriving, and closing ones waiting for the client to close: both sorted
        #: by their deadline, since each is appended with now plus a constant.
        self.gathering_conns: deque[BastionConn] = deque()
        self.lingering_conns: deque[BastionConn] = deque()

    def init_process(self):
        server = load_config().server
        self.header_timeout = server.header_timeout
        self.body_timeout = server.body_timeout
        super().init_process()

    def load_wsgi(self):
        """Build the application; while the storage is unavailable, answer 503 and try again later (:class:`Starting`)."""
        try:
            super().load_wsgi()
        except ServiceUnavailable:
            self.log.warning("the storage is unavailable: answering 503 until the application can be built")
            self.wsgi = Starting(self.app.wsgi, self.log)

    # -- the main loop ------------------------------------------------------

    def can_gather(self, client) -> bool:
        """Whether the head of a connection from ``client`` is gathered in the main loop.

        Not for TLS (the handshake happens in the thread), HTTP/2 or the PROXY protocol (their prefaces
        are no HTTP/1 head): those are read the way gunicorn reads them.
        """
        cfg = self.cfg
        return not (cfg.is_ssl or cfg.proxy_protocol != "off"
                    or negotiation.prior_knowledge_allowed(cfg, client) or negotiation.upgrade_allowed(cfg, client))

    def accept(self, listener):
        """Accept a connection and start gathering its head (or hand it to the pool, the gunicorn way)."""
        try:
            sock, client = listener.accept()
            self.nr_conns += 1
            conn = BastionConn(self.cfg, sock, client, listener.getsockname(), self.can_gather(client))
            if conn.gathers:
                self.gather(conn)
            else:
                self.enqueue_req(conn)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise

    def gather(self, conn: BastionConn, head: bytes = b"") -> None:
        """Wait in the selector for the rest of the head that starts with ``head``."""
        conn.head = bytearray(head)
        if head and head_complete(conn.head):
            self.hand_over(conn)
            return
        try:
            conn.sock.setblocking(False)
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_head_readable, conn))
        except (OSError, ValueError, KeyError):
            self.nr_conns -= 1
            conn.close()
            return
        conn.head_deadline = time.monotonic() + self.header_timeout
        self.gathering_conns.append(conn)

    def on_head_readable(self, conn: BastionConn, _sock) -> None:
        """Read what arrived of a head; hand the connection to the pool once the head is complete."""
        try:
            data = conn.sock.recv(min(RECV_SIZE, HEADER_CAP + 1 - len(conn.head)))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # closed or reset before the head was complete: nobody to answer
            self._stop_gathering(conn)
            self.nr_conns -= 1
            conn.close()
            return
        start = len(conn.head)
        conn.head += data
        if head_complete(conn.head, start):
            self._stop_gathering(conn)
            self.hand_over(conn)

    def hand_over(self, conn: BastionConn) -> None:
        """Give the gathered bytes back to the parser and the connection to the thread pool."""
        conn.parser.unreader.unread(bytes(conn.head))
        conn.head = None
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
        log_refusal(conn.client, error, request_id)
        try:
            conn.sock.send(error_response(error, request_id))
        except OSError:
            pass
        self.linger(conn)

    def murder_pending(self):
        """Besides gunicorn's pending connections: heads past their deadline, lingering closes past theirs."""
        super().murder_pending()
        now = time.monotonic()
        while self.gathering_conns and self.gathering_conns[0].head_deadline <= now:
            conn = self.gathering_conns.popleft()
            self._unregister(conn)
            if conn.head:
                self.refuse_now(conn, RequestTimeout(f"the request headers did not arrive within {self.header_timeout:g} s"))
            else:  # not one byte: no request began, so none is answered (gunicorn closes idle connections so)
                self.nr_conns -= 1
                conn.close()
        while self.lingering_conns and self.lingering_conns[0].linger_deadline <= now:
            conn = self.lingering_conns.popleft()
            self._unregister(conn)
            self.nr_conns -= 1
            conn.close()

    def murder_keepalived(self, force=False):
        super().murder_keepalived(force)
        if force:  # the worker stops: what is still gathering or lingering is closed too
            for queue in (self.gathering_conns, self.lingering_conns):
                while queue:
                    conn = queue.popleft()
                    self._unregister(conn)
                    self.nr_conns -= 1
                    conn.close()

    def wait_for_and_dispatch_events(self, timeout):
        """Wait no longer than the first head or linger deadline (gunicorn's loop waits up to 1 s)."""
        now = time.monotonic()
        if self.gathering_conns:
            timeout = min(timeout, self.gathering_conns[0].head_deadline - now)
        if self.lingering_conns:
            timeout = min(timeout, self.lingering_conns[0].linger_deadline - now)
        super().wait_for_and_dispatch_events(max(0.0, timeout))

    def _stop_gathering(self, conn: BastionConn) -> None:
        self._unregister(conn)
        self.gathering_conns.remove(conn)

    def _unregister(self, conn: BastionConn) -> None:
        try:
            self.poller.unregister(conn.sock)
        except (OSError, KeyError, ValueError):
            pass

    # -- in a pool thread ---------------------------------------------------

    def _keepalive_after(self, conn, keepalive):
        # Draining a body the application did not read can meet malformed chunks after the answer went out:
        # nothing more may be written, the connection just closes.
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
        # gunicorn would send "100 Continue" in wsgi.create(), before the application has seen the request.
        expect_continue = req._expected_100_continue
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
    """gunicorn's logger, sending its messages through Bastion's logging (``kernel.logs``): the INI file's
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
