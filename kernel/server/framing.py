"""Where a request ends in the bytes gathered so far: the end of a head, of a chunked body, of a read body.

Pure functions and one small state machine, no socket: the worker's main loop (:mod:`kernel.server.gathering`)
asks them when a request may go to a thread, so that the thread finds every byte it reads already buffered.
The rules are gunicorn 27's (its parser and ``gunicorn/http/body.py``): where Bastion would stop earlier or later
than gunicorn's parser, a thread would read the socket, or a request would wait for bytes gunicorn never reads.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import NamedTuple

from gunicorn.http.body import CHUNK_EXT_RE, ChunkedReader, LengthReader

#: Most bytes of a request head gathered in the main loop; a head without its end by then goes to the
#: parser, which answers 400 (its own limits, ``limit_request_line`` and ``limit_request_field_size``,
#: are smaller for one line).
HEADER_CAP = 64 * 1024
#: The only header fields that give a request a body (gunicorn's ``Message.set_body_reader``): a head
#: without either is handed over without being parsed in the loop.
BODY_FIELDS = re.compile(rb"content-length|transfer-encoding", re.IGNORECASE)
_HEX = frozenset(b"0123456789abcdefABCDEF")


def head_complete(head: bytearray, start: int = 0) -> bool:
    """Whether the parser can be given ``head`` (bytes from ``start`` on are new since the last look).

    True once the blank line that ends a head has arrived, past :data:`HEADER_CAP`, or at a bare LF,
    which gunicorn's parser refuses without reading further.
    """
    if head.find(b"\r\n\r\n", max(0, start - 3)) >= 0:
        return True
    return len(head) > HEADER_CAP or head.count(b"\n") != head.count(b"\r\n")


#: A header field's name (RFC 9110's token), as gunicorn's parser accepts it.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: The longest head :func:`length_framing` reads; a longer one goes to gunicorn's parser (its own limits).
SIMPLE_HEAD = 8192
#: A request line gunicorn's parser accepts without a doubt: an upper-case method, a target without spaces or
#: controls, HTTP/1.0 or 1.1 (anything else goes to the parser, which may refuse it at once).
_REQUEST_LINE = re.compile(rb"[A-Z]{3,20} [!-~]{1,4000} HTTP/1\.[01]")
#: Controls a field value may not hold (the parser refuses them).
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
#: gunicorn's default ``limit_request_fields``.
_MAX_FIELDS = 100


class Head(NamedTuple):
    """What the log line of a request the worker answers itself says of it (as gunicorn's parsed request)."""

    method: str
    path: str


def length_framing(head: bytes | bytearray) -> tuple[int, int, Head] | None:
    """Where the head ends, the ``Content-Length`` it declares and its method and path, for the common head of a
    call; None for any other (the caller then asks gunicorn's parser).

    Common means: complete and at most :data:`SIMPLE_HEAD` bytes, a plain request line, at most 100 field
    lines, each ``token:value`` (no folded line, no space before the colon, no control in the value), exactly
    one ``Content-Length`` of decimal digits (spaces and tabs around it are gunicorn's optional whitespace), and
    no ``Transfer-Encoding`` and no ``Expect``. Such a head has only that framing in gunicorn's parser too, and
    nothing the parser refuses before reading a body; anything else goes to the parser in the loop, as before.
    """
    end = head.find(b"\r\n\r\n")
    if end < 0 or end + 4 > SIMPLE_HEAD:
        return None
    lines = bytes(head[:end]).split(b"\r\n")
    if len(lines) > _MAX_FIELDS + 1 or not _REQUEST_LINE.fullmatch(lines[0]):
        return None
    length = None
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name) or _CONTROL.search(value):
            return None
        lowered = name.lower()
        if lowered in (b"transfer-encoding", b"expect"):
            return None
        if lowered == b"content-length":
            digits = value.strip(b" \t")
            if length is not None or not digits.isdigit():
                return None
            length = int(digits)
    if length is None:
        return None
    method, target, _ = lines[0].decode("ascii").split(" ")
    return end + 4, length, Head(method, urllib.parse.urlsplit(target).path or target)


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


def body_consumed(req) -> bool:
    """Whether the whole body of ``req`` (gunicorn's parsed request) has been read (an empty body has)."""
    reader = getattr(req.body, "reader", None)
    if isinstance(reader, LengthReader):
        return reader.length == 0
    if isinstance(reader, ChunkedReader):
        return reader.parser is None
    return False


__all__ = ["HEADER_CAP", "BODY_FIELDS", "head_complete", "Head", "length_framing", "chunk_size", "ChunkedEnd", "body_consumed"]
