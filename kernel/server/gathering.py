"""Requests gathered in the worker's main loop, head and body, before a thread is committed to them.

The ``Gathering`` mixin of :class:`kernel.server.worker.BastionWorker` (the why is in that module's
docstring, "A request is gathered in the main loop"). A new or kept-alive connection waits in the worker's
selector, read without blocking, until its whole request has arrived; only then is it handed to the pool
(:meth:`Gathering.hand_over`), the bytes given back to its parser. On the way:

* a head still incomplete ``[server] header_timeout`` seconds after the connection began waiting for it,
  and a body not whole ``[server] body_timeout`` seconds after its head was, are answered 408 from the
  loop and closed (:meth:`Gathering.murder_pending`);
* a head is parsed once here by gunicorn's own parser, only to learn its body's framing
  (:meth:`Gathering.look`); where the body ends is :mod:`kernel.server.framing`'s;
* ``Expect: 100-continue`` goes to a thread before its body while fewer than ``threads // 2`` such requests
  are in threads, else the loop sends ``100 Continue`` itself and gathers the body;
* the bodies the loop holds are bounded: each connection's first :data:`BODY_ALLOWANCE` bytes, and beyond
  them ``body_buffer`` bytes for the whole worker; a body past that waits unread (paused);
* a connection closing after its answer lingers in the selector (not in a blocking read, as gunicorn's
  does) until the client closes, :data:`LINGER_SECONDS` or :data:`LINGER_BYTES`.

The mixin keeps its connections in ``gathering_conns``, ``body_conns`` and ``lingering_conns`` (each sorted by
its deadline), which the connection limit (:mod:`kernel.server.limit`) closes from. It relies on gunicorn 27's
``ThreadWorker`` (``poller``, ``nr_conns``, ``keepalived_conns``, ``enqueue_req``, ``finish_request``, ...):
tests/test_gunicorn_internals.py checks those.
"""

from __future__ import annotations

import selectors
import socket
import time
from collections import deque
from functools import partial

from gunicorn.http.body import ChunkedReader, LengthReader
from gunicorn.http.message import Request
from gunicorn.http.unreader import IterUnreader
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER

from kernel.core.config import BASTION_SCHEMA, SERVER_SCHEMA
from kernel.core.errors import BastionError, RequestTimeout
from kernel.ops.logs import new_request_id
from kernel.server.connection import BastionConn
from kernel.server.framing import BODY_FIELDS, HEADER_CAP, ChunkedEnd, head_complete, length_framing
from kernel.server.refusals import error_response, log_refusal
from kernel.server.room import Room

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
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Gathering(Room):
    """The main loop's gathering of heads and bodies, its deadlines and its lingering closes (a worker mixin)."""

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

    # -- a head ---------------------------------------------------------------

    def gather(self, conn: BastionConn, head: bytes = b"", readable: bool = False) -> None:
        """Wait in the selector for the rest of the head that starts with ``head``.

        ``readable``: the selector has just said that the socket has bytes (a kept-alive connection's next
        request), so they are read at once, and a head that arrived whole goes on without waiting in the
        selector (a registration, a turn of the loop and an unregistration fewer).
        """
        conn.reset()
        conn.buf = bytearray(head)
        try:
            conn.sock.setblocking(False)  # after a thread too: the body and 100 Continue are read and sent here
        except (OSError, ValueError):
            self.nr_conns -= 1
            conn.close()
            return
        if readable:
            data = self._receive(conn)
            if data == b"":  # closed or reset before a head began: nobody to answer
                self.nr_conns -= 1
                conn.close()
                return
            conn.buf += data or b""
        if conn.buf and head_complete(conn.buf):
            self.head_arrived(conn)
            return
        if not self._follow(conn, self.on_head_readable):
            return
        conn.head_deadline = time.monotonic() + self.header_timeout
        self.gathering_conns.append(conn)

    def on_head_readable(self, conn: BastionConn, _sock) -> None:
        """Read what arrived of a head; follow its body once the head is complete."""
        data = self._receive(conn)
        if data is None:
            return
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

    @staticmethod
    def _receive(conn: BastionConn) -> bytes | None:
        """What has arrived of a head, up to its cap: ``b""`` when the client closed or reset the connection,
        None when nothing is there yet."""
        try:
            return conn.sock.recv(min(RECV_SIZE, HEADER_CAP + 1 - len(conn.buf)))
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return b""

    def head_arrived(self, conn: BastionConn) -> None:
        """The head is complete (the connection in no selector): hand it over, or gather its body first."""
        framing = length_framing(conn.buf) if BODY_FIELDS.search(conn.buf) else None
        if framing is not None:  # the common head of a call: its framing read without a parse
            head_end, length, head = framing
            if not 0 < length <= self.max_body:
                self.hand_over(conn, over=length > self.max_body)
                return
            conn.look, conn.body_end, conn.body_start, conn.continued = head, head_end + length, head_end, False
            self.follow_body(conn)
            return
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
        self.follow_body(conn)

    def follow_body(self, conn: BastionConn) -> None:
        """Hand over a request whose body has arrived, or follow the body in the selector until it has."""
        if self.body_ready(conn):
            self.hand_over_body(conn)
            return
        if not self._follow(conn, self.on_body_readable):
            return
        conn.body_deadline = time.monotonic() + self.body_timeout
        self.body_conns.append(conn)

    def look(self, conn: BastionConn) -> Request | None:
        """The head parsed by gunicorn's parser, to learn its body's framing; None if it has no body or is refused.

        The parse is thrown away: the thread parses the same bytes again, and answers what is refused. The
        common head of a call (one ``Content-Length``, nothing else about framing: :func:`length_framing`) is
        not parsed here at all.
        """
        if not BODY_FIELDS.search(conn.buf):
            return None
        try:
            return Request(self.cfg, IterUnreader((bytes(conn.buf),)), conn.client, conn.parser.req_count + 1)
        except Exception:
            return None

    # -- a body ---------------------------------------------------------------

    def body_ready(self, conn: BastionConn) -> bool:
        """Whether the thread will find in ``conn.buf`` every byte it reads of the body."""
        if conn.chunks is not None:
            return conn.chunks.ready(conn.buf)
        assert conn.body_end is not None  # a Content-Length body: head_arrived set where it ends
        return len(conn.buf) >= conn.body_end

    def on_body_readable(self, conn: BastionConn, _sock) -> None:
        """Read what arrived of a body, within the worker's body buffer; hand the request over once ready."""
        room = max(0, BODY_ALLOWANCE - (len(conn.buf) - conn.body_start)) + self.body_buffer - self.buffered
        if room <= 0:
            self._unregister(conn)
            conn.paused = True
            self.paused_conns.append(conn)
            return
        if conn.chunks is not None:
            wanted = RECV_SIZE
        else:
            assert conn.body_end is not None  # a Content-Length body: head_arrived set where it ends
            wanted = conn.body_end - len(conn.buf)
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
        conn.buf = bytearray()
        conn.look = conn.chunks = None
        conn.whole_body = whole
        conn.data_ready = True  # gunicorn's thread must not wait for a first byte again
        self.enqueue_req(conn)

    # -- after the answer (gunicorn's hooks of the main loop) -----------------

    def on_client_socket_readable(self, conn, client):
        """A kept-alive connection sends its next request: gather its head."""
        if not getattr(conn, "gathers", False):
            return super().on_client_socket_readable(conn, client)
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self.gather(conn, readable=True)

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
        conn.buf = bytearray()
        conn.look = conn.chunks = None
        try:
            conn.sock.send(error_response(error, request_id))
        except OSError:
            pass
        self.linger(conn)

    # -- deadlines --------------------------------------------------------------

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

    def next_deadline(self, timeout: float, now: float) -> float:
        """``timeout``, or less: the seconds until the first head, body or linger deadline."""
        for queue, deadline in ((self.gathering_conns, "head_deadline"), (self.body_conns, "body_deadline"),
                                (self.lingering_conns, "linger_deadline")):
            if queue:
                timeout = min(timeout, getattr(queue[0], deadline) - now)
        return timeout

    # -- bookkeeping ------------------------------------------------------------

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

    def _follow(self, conn: BastionConn, on_readable) -> bool:
        """Wait in the selector for ``conn`` to be readable, then call ``on_readable(conn, sock)``; False when it
        cannot be registered (the connection is closed and uncounted)."""
        try:
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(on_readable, conn))
        except (OSError, ValueError, KeyError):
            self.nr_conns -= 1
            conn.close()
            return False
        return True

    def _unregister(self, conn: BastionConn) -> None:
        try:
            self.poller.unregister(conn.sock)
        except (OSError, KeyError, ValueError):
            pass


__all__ = ["Gathering", "BODY_ALLOWANCE", "BODY_BUFFER", "LINGER_SECONDS", "LINGER_BYTES", "RECV_SIZE", "CONTINUE"]
