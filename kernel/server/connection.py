"""One connection of the worker: its socket reader, its parser, and what the main loop knows of its request.

gunicorn's thread reads a request through the connection's parser (``RequestParser``) and its socket reader
(``SocketUnreader``). Bastion's main loop gathers the bytes first (:mod:`kernel.server.gathering`) and gives
them back to the reader before a thread parses them; the reader here then keeps the thread from reading the
socket where the loop already has (a head; a body gathered whole) and bounds every other read by the body
deadline, sending the ``100 Continue`` a client waits for on the application's first read.
"""

from __future__ import annotations

import time
from typing import Any

from gunicorn.http import errors as http_errors
from gunicorn.http.message import Request
from gunicorn.http.parser import RequestParser
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers.gthread import TConn

from kernel.core.errors import PayloadTooLarge, RequestTimeout
from kernel.server.framing import ChunkedEnd, Head, body_consumed


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
        #: gunicorn's request and response while the application runs (gunicorn ships no types).
        self.req: Any = None
        self.resp: Any = None
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
            if not body_consumed(self.req):
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


class BastionConn(TConn):
    """A connection of the worker: with its request gathered in the main loop when ``gathers`` is true."""

    def __init__(self, cfg, sock, client, server, gathers: bool):
        super().__init__(cfg, sock, client, server)
        self.gathers = gathers
        #: What arrived of the request being gathered: its head, then its body (emptied once handed over).
        self.buf = bytearray()
        self.head_deadline = 0.0
        self.body_deadline = 0.0
        self.linger_deadline = 0.0
        self.lingered = 0
        self.reset()
        if gathers:
            self.parser = BastionParser(cfg, self.sock, client)

    def reset(self) -> None:
        """Forget what was known of the previous request (a kept-alive connection gathers the next one)."""
        self.look: Request | Head | None = None  # the head as read in the loop, to follow its body
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


__all__ = ["BastionUnreader", "BastionParser", "BastionConn"]
