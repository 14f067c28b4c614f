"""gunicorn's refusals written as Bastion's: JSON bodies, the security headers, one ``bastion.call`` line.

Every request gunicorn refuses before the application runs (a malformed head, a limit, a deadline, a
framing error in a body) gets the ``{"exc", "err"}`` body of docs/protocol.md section 2 with Bastion's
security headers and an ``X-Request-Id``, a fixed message that never repeats what the client sent, and
one ``bastion.call`` line at WARNING. Three places answer so: the main loop's own refusals (a 408 before a
thread ever saw the request: :func:`error_response`, :func:`log_refusal`), a refusal raised in a thread by
gunicorn's parser (:class:`JsonRefusals`, gunicorn's ``handle_error``), and a body whose framing breaks while
the application reads it (:class:`RequestBody`, answered by the application as 400).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from http import HTTPStatus
from ssl import SSLError

from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.http import wsgi

from kernel.core.errors import BastionError, Error, Forbidden, InvalidCall, InvalidHost, RequestTimeout
from kernel.core.jsonio import dumps
from kernel.ops.logs import CALL, clip, log_event, new_request_id
from kernel.server.room import Room

#: The headers every Bastion answer carries (``kernel.http.app`` adds them to the application's answers;
#: ``kernel.http.app.API_CSP`` is the same policy, not imported here: the worker is imported by gunicorn's
#: master, which loads no more of Bastion than its settings need; tests/test_worker.py checks they agree).
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
)

CHUNK_ERRORS = (http_errors.InvalidChunkSize, http_errors.ChunkMissingTerminator, http_errors.InvalidChunkExtension)
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
    (CHUNK_ERRORS, "malformed chunked body"),
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
    fields = error.body()
    if isinstance(error, Error):
        fields["request_id"] = request_id
    body = dumps(fields)
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


def peer(addr) -> str:
    """The client's address as a call line names it."""
    if isinstance(addr, tuple) and addr:
        return str(addr[0])
    return "unix socket"


def log_refusal(addr, error: BastionError, request_id: str, req=None) -> None:
    """The ``bastion.call`` line of a request the worker answered itself: at WARNING, with the fixed reason."""
    method = getattr(req, "method", None) if req is not None else None
    path = getattr(req, "path", None) if req is not None else None
    log_event(CALL, logging.WARNING, "call", {
        "origin": peer(addr), "method": method if isinstance(method, str) else None,
        "path": clip(path) if isinstance(path, str) else None, "status": error.status, "exc": error.exc,
        "err": "; ".join(error.err), "by": "worker",
    }, request_id)


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
        except BastionError as refused:
            self._refused(refused)
            raise
        except http_errors.NoMoreData:
            error = InvalidCall("the request body ended before its end")
        except CHUNK_ERRORS:
            error = InvalidCall("malformed chunked body")
        except http_errors.ParseException:
            error = InvalidCall("malformed trailer section")
        self._resp.force_close()
        self._refused(error)
        raise error

    def _refused(self, error: BastionError) -> None:
        # The application answers it, and its call line says so; the reason, in fixed words, is here.
        self._log.debug("request body refused from %s: %d %s: %s", self._peer, error.status, error.exc, "; ".join(error.err))


class JsonRefusals(Room):
    """The worker's ``handle_error`` (gunicorn's ``Worker.handle_error``, called in a pool thread): JSON, then close.

    A mixin of :class:`kernel.server.worker.BastionWorker`: it uses the worker's ``cfg`` and ``log``.
    """

    def handle_error(self, req, client, addr, exc):
        """Answer what gunicorn refused (or failed at) before the application answered: JSON, then close."""
        error = refusal(exc)
        request_id = new_request_id()
        req = req if req is not None else getattr(exc, "req", None)
        if isinstance(error, Error):
            self.log.error("unexpected error handling a request from %s, request id %s", peer(addr), request_id,
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


__all__ = ["SECURITY_HEADERS", "CHUNK_ERRORS", "refusal", "error_response", "peer", "log_refusal", "RequestBody",
           "JsonRefusals"]
