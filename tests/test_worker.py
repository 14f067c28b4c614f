"""kernel.server.worker.BastionWorker behind real gunicorn processes, spoken to over raw sockets.

Slow heads and bodies wait in the worker's main loop, not in its threads; heads and bodies have deadlines;
every refusal is the JSON of docs/protocol.md section 2 with the security headers; 100 Continue waits for
the application to read the body, in at most half the threads; beyond worker_connections a new connection
closes the oldest waiting one. The main loop's own choices (which connection makes room, the body buffer,
where a chunked body ends) are also tested on a worker built in the test process.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import select
import selectors
import socket
import threading
import time
from typing import NamedTuple

import pytest

from kernel.testing import GunicornServer

pytestmark = pytest.mark.slow

#: Put in what the tests send where it is refused; it must never come back in an answer or in the log.
MARKER = "m4rker-from-the-client"
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
}
READ_TIMEOUT = 10.0  # no answer expected here takes more than a few seconds


def _sections(tmp_path, server=None):
    sections = {
        "bastion": {"development": True, "storage": f"sqlite:///{tmp_path}/db.sqlite3"},
        # The tests post wrong passwords for "nobody" to see how requests are carried, not to lock it (the fifth
        # failure would answer 429 AccountLocked).
        "auth": {"argon2_memory_cost": 64, "argon2_time_cost": 1, "account_max_failures": 0},
    }
    if server:
        sections["server"] = server
    return sections


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Default timeouts, 2 workers x 4 threads."""
    with GunicornServer(_sections(tmp_path_factory.mktemp("worker")), workers=2, threads=4) as srv:
        yield srv


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """Heads and bodies have 1 s."""
    sections = _sections(tmp_path_factory.mktemp("quick"), {"header_timeout": 1, "body_timeout": 1})
    with GunicornServer(sections, workers=1, threads=2) as srv:
        yield srv


class Answer(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes
    raw: bytes

    @property
    def json(self):
        return json.loads(self.body)


def connect(server, timeout: float = READ_TIMEOUT) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=timeout)


def read_answer(sock: socket.socket, buf: bytes = b"") -> tuple[Answer, bytes]:
    """Read one answer (a head, and a body of Content-Length bytes); return it and what followed it."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before a complete answer: {buf!r}"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed inside an answer: {buf + rest!r}"
        rest += chunk
    raw = head + b"\r\n\r\n" + rest[:length]
    return Answer(int(status_line.split(" ")[1]), headers, rest[:length], raw), rest[length:]


def assert_closed(sock: socket.socket, rest: bytes = b"") -> None:
    """Nothing follows the answer, and the server closes the connection."""
    assert rest == b""
    assert sock.recv(65536) == b"", "the server sent more after its answer"


def assert_refusal(answer: Answer, status: int, exc: str) -> None:
    """A JSON refusal with the security headers that closes the connection, saying nothing the client sent."""
    assert answer.status == status, answer.raw
    assert answer.headers["content-type"] == "application/json"
    body = answer.json
    request_id = answer.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", request_id), answer.raw
    expected = {"exc", "err", "request_id"} if status == 500 else {"exc", "err"}
    assert set(body) == expected and body["exc"] == exc, body
    assert body.get("request_id", request_id) == request_id
    assert isinstance(body["err"], list) and body["err"] and all(isinstance(m, str) for m in body["err"])
    for name, value in SECURITY_HEADERS.items():
        assert answer.headers.get(name) == value, f"{name} missing or wrong: {answer.raw!r}"
    assert answer.headers["connection"] == "close"
    assert MARKER.encode() not in answer.raw


def exchange(server, data: bytes) -> Answer:
    """Send ``data`` on a new connection; return the answer after checking the connection then closes."""
    with connect(server) as sock:
        sock.sendall(data)
        answer, rest = read_answer(sock)
        assert_closed(sock, rest)
    return answer


def health(conn: http.client.HTTPConnection) -> None:
    conn.request("GET", "/healthz", headers={"Host": "localhost"})
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read())["status"] == "ok"


# -- slow heads and bodies ------------------------------------------------------


def test_trickling_heads_do_not_take_the_threads(server):
    """16 clients sending one header line every 2 s (twice the 8 threads) while /healthz keeps answering."""
    stop = threading.Event()
    started = [threading.Event() for _ in range(16)]
    socks = [connect(server) for _ in started]

    def trickle(sock, started_event):
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        line = 0
        while not stop.wait(2.0):  # the slow client of the scenario
            sock.sendall(b"X-Trickle-%d: 1\r\n" % line)
            line += 1
            started_event.set()

    tricklers = [threading.Thread(target=trickle, args=pair, daemon=True) for pair in zip(socks, started, strict=True)]
    try:
        for thread in tricklers:
            thread.start()
        for event in started:  # every trickler has sent its request line and one more header line
            assert event.wait(30)
        for _ in range(3):  # on new connections, each kept alive for a second request
            conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
            try:
                health(conn)
                health(conn)
            finally:
                conn.close()
        stop.set()
        for thread in tricklers:
            thread.join(10)
        for sock in socks:  # still connected and never answered: their heads are not complete
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        stop.set()
        for sock in socks:
            sock.close()


def assert_waiting(socks: list[socket.socket]) -> None:
    """Each connection is still open and unanswered."""
    for sock in socks:
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(1)
        sock.setblocking(True)


def test_trickling_bodies_and_heads_do_not_take_the_threads(tmp_path):
    """64 bodies and 64 heads trickling a byte or a line a second on 2 workers x 4 threads: /healthz answers every probe.

    Half the bodies are declared by Content-Length, half chunked. The clients of the scenario renew their hold
    when answered 408; here the deadlines are far enough for every one to be held through the probes.
    """
    sections = _sections(tmp_path, {"header_timeout": 300, "body_timeout": 300})
    with GunicornServer(sections, workers=2, threads=4) as srv:
        login = b"POST /auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        bodies = [connect(srv) for _ in range(64)]
        heads = [connect(srv) for _ in range(64)]
        stop = threading.Event()
        rounds = threading.Semaphore(0)

        def trickle():
            while not stop.wait(1.0):  # the slow clients of the scenario
                for number, sock in enumerate(bodies):
                    sock.sendall(b" " if number % 2 else b"1\r\n \r\n")
                for sock in heads:
                    sock.sendall(b"X-Trickle: 1\r\n")
                rounds.release()

        trickler = threading.Thread(target=trickle, daemon=True)
        try:
            for number, sock in enumerate(bodies):
                framing = b"Content-Length: 1000\r\n\r\n{" if number % 2 else b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n"
                sock.sendall(login + framing)
            for sock in heads:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
            trickler.start()
            assert rounds.acquire(timeout=30)  # every client has sent more after its first bytes
            for _ in range(5):  # on new connections, each kept alive for a second request
                conn = http.client.HTTPConnection(srv.host, srv.port, timeout=15)
                try:
                    health(conn)
                    health(conn)
                finally:
                    conn.close()
            assert rounds.acquire(timeout=30)
            stop.set()
            trickler.join(30)
            assert not trickler.is_alive()
            assert_waiting(bodies + heads)  # all held through the probes, none answered
        finally:
            stop.set()
            for sock in bodies + heads:
                sock.close()


@pytest.mark.parametrize("kept_alive", [False, True], ids=["new-connection", "kept-alive-connection"])
def test_a_head_still_arriving_after_header_timeout_is_answered_408(quick, kept_alive):
    began = time.monotonic()  # before the server can have accepted the connection
    with connect(quick) as sock:
        rest = b""
        if kept_alive:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            answer, rest = read_answer(sock)
            assert answer.status == 200 and answer.headers["connection"] == "keep-alive"
            began = time.monotonic()  # before the first byte of the next request
        sock.sendall(b"POST /auth/login HTTP/1.1\r\nHost: localhost\r\n")
        while not select.select([sock], [], [], 0.3)[0]:  # one header line every 0.3 s until the server answers
            assert time.monotonic() - began < READ_TIMEOUT, "no answer to a head that never ends"
            sock.sendall(b"X-Trickle: 1\r\n")
        answer, rest = read_answer(sock, rest)
        assert time.monotonic() - began >= 1.0  # not before header_timeout
        assert_refusal(answer, 408, "RequestTimeout")
        assert_closed(sock, rest)
    assert re.search(r"WARNING bastion\.call event=call request_id=[0-9a-f]{16} origin=127\.0\.0\.1 status=408 "
                     r"exc=RequestTimeout err=\"the request headers did not arrive within 1 s\" by=worker", quick.log())


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(quick):
    """No request began, so none is answered (a 408 would be read as the answer to the client's next request)."""
    with connect(quick) as sock:
        assert sock.recv(65536) == b""


@pytest.mark.parametrize("framing", [b"Content-Length: 100\r\n\r\n{\"user", b"Transfer-Encoding: chunked\r\n\r\n20\r\n{\"user"],
                         ids=["content-length", "chunked"])
def test_a_body_that_stalls_is_answered_408_after_body_timeout(quick, framing):
    with connect(quick) as sock:
        sock.sendall(b"POST /auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n" + framing)
        answer, rest = read_answer(sock)
        assert_refusal(answer, 408, "RequestTimeout")
        assert_closed(sock, rest)
    assert re.search(r"WARNING bastion\.call event=call request_id=[0-9a-f]{16} origin=127\.0\.0\.1 method=POST "
                     r"path=/auth/login status=408 exc=RequestTimeout err=\"the request body did not arrive within 1 s\" "
                     r"by=worker", quick.log())


def test_a_chunked_body_in_pieces_with_trailers_is_served_and_the_connection_kept(server):
    body = json.dumps({"username": "nobody", "password": "wrong password"}).encode()
    chunked = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(part), part) for part in (body[:5], body[5:20], body[20:]))
    request = (b"POST /auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + chunked + b"0\r\nX-Trailer: 1\r\n\r\n")
    with connect(server) as sock:
        for start in range(0, len(request), 7):  # seven bytes at a time, the loop following the chunks
            sock.sendall(request[start:start + 7])
        answer, rest = read_answer(sock)
        assert answer.status == 401 and answer.json["exc"] == "InvalidCredential", answer.raw
        assert answer.headers["connection"] == "keep-alive"
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer, rest = read_answer(sock, rest)
        assert answer.status == 200


@pytest.mark.parametrize("framing", [
    b"Content-Length: 1048577\r\n\r\n{",
    b"Transfer-Encoding: chunked\r\n\r\n100001\r\n" + b" " * 0x100001,
], ids=["content-length", "chunked"])
def test_a_body_over_max_body_is_413_and_the_connection_closes(server, framing):
    """Content-Length over max_body is refused unread; a chunked body once more than max_body (1 MiB) arrived.

    What the client may still send is not read by a thread: the connection closes after the answer.
    """
    with connect(server) as sock:
        sock.sendall(b"POST /auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n" + framing)
        answer, rest = read_answer(sock)
        assert answer.status == 413 and answer.json["exc"] == "PayloadTooLarge", answer.raw
        assert rest == b""
        while data := sock.recv(65536):  # the server closes: the loop ends without a timeout
            pytest.fail(f"the server sent more after its answer: {data!r}")


# -- malformed requests --------------------------------------------------------


def test_a_repeated_host_is_invalid_host(server):
    answer = exchange(server, f"GET /healthz HTTP/1.1\r\nHost: localhost\r\nHost: {MARKER}.example\r\n\r\n".encode())
    assert_refusal(answer, 400, "InvalidHost")
    log = server.log()
    assert (f"request_id={answer.headers['x-request-id']} origin=127.0.0.1 method=GET path=/healthz status=400 "
            'exc=InvalidHost err="more than one Host header" by=worker') in log
    assert MARKER not in log


LOGIN = "POST /auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
MALFORMED = {
    "repeated-content-length": LOGIN + "Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
    "content-length-and-chunked": LOGIN + "Content-Length: 7\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "bad-chunk-size": LOGIN + f"Transfer-Encoding: chunked\r\n\r\n{MARKER}\r\n{{}}\r\n0\r\n\r\n",
    "chunk-without-its-crlf": LOGIN + f"Transfer-Encoding: chunked\r\n\r\n2\r\n{{}}{MARKER}\r\n0\r\n\r\n",
    "unsupported-transfer-coding": LOGIN + "Transfer-Encoding: br\r\n\r\n",
    "unknown-expectation": LOGIN + f"Expect: {MARKER}\r\nContent-Length: 2\r\n\r\n{{}}",
    "oversized-header-line": f"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: {MARKER}{'a' * 10000}\r\n\r\n",
    "oversized-request-line": f"GET /{MARKER}{'a' * 10000} HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "head-over-64KiB-without-its-end": "GET /healthz HTTP/1.1\r\nHost: localhost\r\n"
                                        + "".join(f"X-Fill-{i}: {MARKER}{'a' * 1000}\r\n" for i in range(70)),
    "too-many-header-fields": "GET /healthz HTTP/1.1\r\nHost: localhost\r\n"
                              + "".join(f"X-Field-{i}: {MARKER}\r\n" for i in range(120)) + "\r\n",
    "malformed-request-line": f"{MARKER}\r\n\r\n",
    "lowercase-method": "get /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "unsupported-version": "GET /healthz HTTP/2.0\r\nHost: localhost\r\n\r\n",
    "control-character-in-value": f"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Note: {MARKER}\x01\r\n\r\n",
    "obsolete-line-folding": f"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Note: a\r\n {MARKER}\r\n\r\n",
    "bare-lf": "GET /healthz HTTP/1.1\nHost: localhost\n\n",
    "repeated-content-type": LOGIN + "Content-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}",
}


@pytest.mark.parametrize("request_text", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_request_is_invalid_call(server, request_text):
    assert_refusal(exchange(server, request_text.encode("latin-1")), 400, "InvalidCall")
    assert MARKER not in server.log()


def test_an_unexpected_failure_is_a_500_with_only_its_request_id(tmp_path):
    # SCRIPT_NAME in gunicorn's environment that the path does not start with: gunicorn's own failure.
    with GunicornServer(_sections(tmp_path), env={"SCRIPT_NAME": "/elsewhere"}) as srv:
        answer = exchange(srv, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert_refusal(answer, 500, "Error")
        [message] = answer.json["err"]
        request_id = re.fullmatch(r"internal error; request id ([0-9a-f]{16})", message).group(1)
        assert answer.json["request_id"] == request_id
        log = srv.log()
    assert f"request id {request_id}" in log and "ConfigurationProblem" in log
    assert f"request_id={request_id} origin=127.0.0.1 method=GET path=/healthz status=500 exc=Error" in log


# -- 100 Continue ----------------------------------------------------------------


@pytest.mark.parametrize("headers, status, exc", [
    ("Content-Type: application/json\r\nContent-Length: 104857600\r\n", 413, "PayloadTooLarge"),
    ("Content-Type: text/plain\r\nContent-Length: 20\r\n", 415, "UnsupportedMediaType"),
], ids=["over-max-body", "not-json"])
def test_expect_continue_for_a_body_refused_on_its_headers_gets_no_100(server, headers, status, exc):
    with connect(server) as sock:
        sock.sendall(f"POST /auth/login HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n{headers}\r\n".encode())
        answer, rest = read_answer(sock)
        assert answer.status == status and answer.json["exc"] == exc, answer.raw
        assert answer.headers["connection"] == "close"  # the client may still send the body
        assert_closed(sock, rest)


def test_expect_continue_for_a_body_the_application_reads(server):
    body = json.dumps({"username": "nobody", "password": "wrong password"}).encode()
    with connect(server) as sock:
        sock.sendall(b"POST /auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        interim, rest = read_answer(sock)
        assert interim.status == 100 and rest == b""
        sock.sendall(body)
        answer, rest = read_answer(sock)
        assert answer.status == 401 and answer.json["exc"] == "InvalidCredential"
        assert answer.headers["connection"] == "keep-alive"
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer, rest = read_answer(sock, rest)
        assert answer.status == 200


def test_expect_continue_waits_for_its_body_in_at_most_half_the_threads(tmp_path):
    """With 2 threads, one request may wait in a thread for the body it was sent 100 Continue for.

    The next gets 100 Continue from the main loop, which gathers its body: its refusal on its headers (415)
    comes after the body.
    """
    login = json.dumps({"username": "nobody", "password": "wrong password"}).encode()
    with GunicornServer(_sections(tmp_path), workers=1, threads=2) as srv, connect(srv) as first, connect(srv) as second:
        first.sendall(b"POST /auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                      b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(login))
        interim, rest = read_answer(first)
        assert interim.status == 100 and rest == b""  # the application read the body: its thread waits for it
        second.sendall(b"POST /auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n"
                       b"Expect: 100-continue\r\nContent-Length: 20\r\n\r\n")
        interim, rest = read_answer(second)
        assert interim.status == 100 and rest == b""  # the loop's: the one thread for such waits is taken
        second.sendall(b"x" * 20)
        answer, rest = read_answer(second, rest)
        assert answer.status == 415 and answer.json["exc"] == "UnsupportedMediaType", answer.raw
        first.sendall(login)
        answer, rest = read_answer(first)
        assert answer.status == 401 and answer.json["exc"] == "InvalidCredential", answer.raw


# -- the connection limit -------------------------------------------------------------


def is_closed(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (without an answer), without waiting."""
    sock.setblocking(False)
    try:
        data = sock.recv(1)
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.setblocking(True)
    assert data == b"", f"an answer to a request that never ended: {data!r}"
    return True


def test_beyond_worker_connections_a_new_connection_closes_the_oldest_waiting_one(tmp_path):
    """One worker holding at most 8 connections: 20 clients that send nothing or a head that never ends do not
    keep /healthz out; the oldest of them are closed, one for each new connection past the 8th."""
    sections = _sections(tmp_path, {"worker_connections": 8, "header_timeout": 300})
    with GunicornServer(sections, workers=1, threads=2) as srv:
        waiting = [connect(srv) for _ in range(20)]
        try:
            for sock in waiting[1::2]:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
            conn = http.client.HTTPConnection(srv.host, srv.port, timeout=15)  # accepted after the 20
            try:
                health(conn)
                health(conn)
            finally:
                conn.close()
            # Oldest first, the 9th to the 20th and the probe each closed one (one more if the launcher's own
            # first connection was still in a thread then): the worker held at most 8 connections.
            states = [is_closed(sock) for sock in waiting]
            closed = states.count(True)
            assert states == [True] * closed + [False] * (20 - closed) and closed in (13, 14), states
            for _ in range(3):
                conn = http.client.HTTPConnection(srv.host, srv.port, timeout=15)
                try:
                    health(conn)
                finally:
                    conn.close()
        finally:
            for sock in waiting:
                sock.close()
        assert re.search(r"connection limit \(worker_connections = 8\) reached: \d+ connections that were idle or "
                         r"still sending their request closed to serve new ones", srv.log())


# -- keep-alive ---------------------------------------------------------------------


def test_keep_alive_serves_several_requests_on_one_connection(server):
    get = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
    login = json.dumps({"username": "nobody", "password": "wrong password"}).encode()
    post = (b"POST /auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(login), login))
    with connect(server) as sock:
        rest = b""
        for piece in (get[:10], get[10:30], get[30:]):  # one head in three sends
            sock.sendall(piece)
        answer, rest = read_answer(sock, rest)
        assert answer.status == 200 and answer.headers["connection"] == "keep-alive"
        sock.sendall(post + get + get)  # pipelined: a body, then two heads behind it
        for status in (401, 200, 200):
            answer, rest = read_answer(sock, rest)
            assert answer.status == status and answer.headers["connection"] == "keep-alive", answer.raw
        sock.sendall(get)
        answer, rest = read_answer(sock, rest)
        assert answer.status == 200 and rest == b""


def test_a_pipelined_request_whose_body_is_still_arriving_waits_for_it(server):
    """The second request's head came with the first request: its body is gathered after the first answer."""
    login = json.dumps({"username": "nobody", "password": "wrong password"}).encode()
    post = (b"POST /auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(login))
    with connect(server) as sock:
        sock.sendall(post + login + post + login[:10])
        answer, rest = read_answer(sock)
        assert answer.status == 401 and answer.headers["connection"] == "keep-alive", answer.raw
        sock.sendall(login[10:])
        answer, rest = read_answer(sock, rest)
        assert answer.status == 401 and answer.headers["connection"] == "keep-alive", answer.raw
        assert rest == b""


def test_the_worker_sends_the_same_content_security_policy_as_the_application():
    from kernel.http.app import API_CSP
    from kernel.server.worker import SECURITY_HEADERS as WORKER_HEADERS

    assert dict(WORKER_HEADERS)["Content-Security-Policy"] == API_CSP
    assert {name.lower(): value for name, value in WORKER_HEADERS} == SECURITY_HEADERS


# -- the main loop, on a worker built in the test process ----------------------------


@pytest.fixture
def loop_worker():
    """A BastionWorker with its selector but no process: what it hands to the pool is kept in ``handed``."""
    from gunicorn.config import Config

    from kernel.server.worker import BastionWorker

    cfg = Config()
    cfg.set("threads", 2)
    cfg.set("worker_connections", 4)
    worker = BastionWorker(1, os.getpid(), [], None, 30, cfg, logging.getLogger("test.worker"))
    worker.poller = selectors.DefaultSelector()
    worker.handed = []
    worker.enqueue_req = worker.handed.append
    pairs = []

    def new_conn(data: bytes = b""):
        """A connection of the worker (gathering its head) and the client's end, which has sent ``data``."""
        from kernel.server.worker import BastionConn

        ours, client = socket.socketpair()
        pairs.append((ours, client))
        if data:
            client.sendall(data)
        worker.nr_conns += 1
        conn = BastionConn(cfg, ours, ("127.0.0.1", 1), ("127.0.0.1", 2), True)
        worker.gather(conn)
        return conn, client

    worker.new_conn = new_conn
    yield worker
    worker.poller.close()
    worker.tmp.close()
    for ours, client in pairs:
        ours.close()
        client.close()


def read_until_waiting(worker, conn) -> None:
    """Let the worker read ``conn`` until it would block or stops reading it (at most 100 reads)."""
    for _ in range(100):
        key = worker.poller.get_map().get(conn.sock) if conn.sock.fileno() >= 0 else None
        if key is None or not select.select([conn.sock], [], [], 0)[0]:
            return
        key.data(conn.sock)
    pytest.fail("the worker kept reading")


def test_at_the_limit_the_connection_closed_is_the_one_that_gives_up_least(loop_worker):
    """Closing after its answer, idle kept-alive, a head arriving, a body arriving: never one in a thread."""
    worker = loop_worker
    body, _ = worker.new_conn(b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\n{")
    read_until_waiting(worker, body)
    head, _ = worker.new_conn(b"GET /x HTTP/1.1\r\n")
    read_until_waiting(worker, head)
    kept, _ = worker.new_conn()
    worker._stop_gathering(kept)
    worker.keepalived_conns.append(kept)
    lingering, _ = worker.new_conn()
    worker._stop_gathering(lingering)
    worker.linger(lingering)
    in_thread, _ = worker.new_conn(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
    read_until_waiting(worker, in_thread)
    assert (list(worker.body_conns), list(worker.gathering_conns), worker.handed) == ([body], [head], [in_thread])
    conns = {"lingering": lingering, "kept-alive": kept, "head": head, "body": body, "in a thread": in_thread}
    order = []
    while worker.make_room():
        order += [name for name, conn in conns.items() if conn.sock.fileno() < 0 and name not in order]
    assert order == ["lingering", "kept-alive", "head", "body"]
    assert worker.nr_conns == 1 and not worker.can_make_room()


def test_a_connection_closed_to_make_room_gets_no_event_of_the_same_wait(loop_worker):
    """A new connection and the next request of the kept-alive one it displaces, both seen in one wait."""
    from functools import partial

    worker = loop_worker
    worker.worker_connections = 1
    kept, kept_client = worker.new_conn()
    worker._stop_gathering(kept)
    worker.poller.register(kept.sock, selectors.EVENT_READ, partial(worker.on_client_socket_readable, kept))
    worker.keepalived_conns.append(kept)
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.create_connection(listener.getsockname()):
        listener.setblocking(False)
        worker.poller.register(listener, selectors.EVENT_READ, worker.accept)
        kept_client.sendall(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        select_all = worker.poller.select
        # The listener's event first, whatever order the kernel gives: its accept closes the kept-alive one.
        worker.poller.select = lambda timeout=None: sorted(select_all(timeout), key=lambda e: e[0].fileobj is not listener)
        worker.wait_for_and_dispatch_events(5.0)
        assert kept.sock.fileno() < 0 and not worker.handed
        [new] = worker.gathering_conns
        assert new is not kept and worker.nr_conns == 1
        new.sock.close()


def kept_alive(worker, client_data: bytes = b""):
    """A connection of ``worker`` kept alive after an answer, as ``finish_request`` leaves it, whose client has
    then sent ``client_data``; and the client's end."""
    from functools import partial

    conn, client = worker.new_conn()
    worker._stop_gathering(conn)
    worker.poller.register(conn.sock, selectors.EVENT_READ, partial(worker.on_client_socket_readable, conn))
    worker.keepalived_conns.append(conn)
    if client_data:
        client.sendall(client_data)
    return conn, client


def test_a_kept_alive_connections_whole_next_request_is_handed_over_in_the_turn_that_saw_it(loop_worker):
    """The selector said the socket is readable: it is read at once, not registered to be seen again."""
    worker = loop_worker
    conn, _ = kept_alive(worker, b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}")
    worker.wait_for_and_dispatch_events(5.0)
    assert worker.handed == [conn] and not worker.keepalived_conns and not worker.gathering_conns
    assert conn.sock not in worker.poller.get_map().values() and worker.nr_conns == 1
    assert bytes(conn.parser.unreader.buf.getvalue()).endswith(b"\r\n\r\n{}")  # every byte given to the parser


def test_a_kept_alive_connections_partial_next_head_waits_with_its_deadline(loop_worker):
    worker = loop_worker
    conn, client = kept_alive(worker, b"POST /x HTTP/1.1\r\nHost: loc")
    began = time.monotonic()
    worker.wait_for_and_dispatch_events(5.0)
    assert not worker.handed and list(worker.gathering_conns) == [conn] and bytes(conn.buf).endswith(b"Host: loc")
    assert began <= conn.head_deadline - worker.header_timeout <= time.monotonic()
    client.sendall(b"alhost\r\n\r\n")
    read_until_waiting(worker, conn)
    assert worker.handed == [conn] and not worker.gathering_conns


def test_a_kept_alive_connection_its_client_closed_is_closed_and_uncounted(loop_worker):
    worker = loop_worker
    conn, client = kept_alive(worker)
    client.close()
    worker.wait_for_and_dispatch_events(5.0)
    assert conn.sock.fileno() < 0 and worker.nr_conns == 0 and not worker.handed
    assert not worker.keepalived_conns and not worker.gathering_conns


def test_bodies_past_the_body_buffer_wait_unread_and_small_ones_do_not(loop_worker):
    from kernel.server.worker import BODY_ALLOWANCE

    worker = loop_worker
    worker.body_buffer = 4096
    big = b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 200000\r\n\r\n"
    first, _ = worker.new_conn(big + b"a" * (BODY_ALLOWANCE + 8192))
    read_until_waiting(worker, first)
    assert worker.paused_conns == [first] and worker.buffered == 4096  # its allowance and the whole buffer
    second, _ = worker.new_conn(big + b"b" * (BODY_ALLOWANCE + 100))
    read_until_waiting(worker, second)
    assert worker.paused_conns == [first, second] and worker.buffered == 4096  # its allowance only
    small, _ = worker.new_conn(b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nsmall")
    read_until_waiting(worker, small)
    assert worker.handed == [small]  # within its allowance, whatever the others hold
    first.body_deadline = 0.0
    worker.murder_pending()  # the first is answered 408: what it held is free, the second goes on
    assert list(worker.body_conns) == [second] and worker.lingering_conns[0] is first
    assert not worker.paused_conns and worker.buffered == 0
    read_until_waiting(worker, second)
    assert worker.buffered == 100 and not second.paused and second.sock in worker.poller.get_map()


# -- where a chunked body ends -----------------------------------------------------------

LIMITS = {"max_body": 16, "line_limit": 20, "trailer_limit": 40}
CHUNKED = {
    "one-chunk": b"5\r\nhello\r\n0\r\n\r\n",
    "several-with-extensions-and-trailers": b"2;a=1\r\nhe\r\n3 ; b=\"x\"\r\nllo\r\n0\r\nX-T: 1\r\nX-U: 2\r\n\r\n",
    "uppercase-hex": b"A\r\n0123456789\r\n0\r\n\r\n",
    "exactly-max-body": b"10\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n",
}
REFUSED = {
    "bad-size": b"5x\r\nhello\r\n0\r\n\r\n",
    "empty-size": b"\r\nhello\r\n0\r\n\r\n",
    "bad-extension": b"5;=\r\nhello\r\n0\r\n\r\n",
    "missing-crlf-after-data": b"5\r\nhelloXX5\r\nhello\r\n0\r\n\r\n",
    "size-line-too-long": b"5" + b";a" * 20,
    "trailers-too-long": b"0\r\n" + b"X-T: 1\r\n" * 6,
    "bare-lf-in-trailers": b"0\r\nX-T: 1\nX-U: 2\r\n\r\n",
}
OVER_MAX_BODY = {
    "in-one-chunk": b"20\r\n" + b"x" * 32 + b"\r\n0\r\n\r\n",
    "in-two-chunks": b"10\r\n" + b"x" * 16 + b"\r\n1\r\ny\r\n0\r\n\r\n",
}


def _ready_at(body: bytes):
    """How many bytes of ``body``, fed one at a time, ChunkedEnd needs to be ready (None: never), and it."""
    from kernel.server.worker import ChunkedEnd

    head = b"POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
    end = ChunkedEnd(len(head), **LIMITS)
    buf = bytearray(head)
    for count in range(1, len(body) + 1):
        buf += body[count - 1:count]
        if end.ready(buf):
            return count, end
    return None, end


class ReadPast(Exception):
    """A thread read past what the loop gathered (a sealed reader refuses it)."""


def _gunicorn_decodes(body: bytes) -> tuple[int, bool]:
    """How many bytes of content gunicorn's own chunked reader gives from ``body`` alone, and whether it ended
    before reading past ``body``.

    Raises gunicorn's error where it refuses the body.
    """
    from gunicorn.http.body import ChunkedReader
    from gunicorn.http.unreader import Unreader

    class Sealed(Unreader):
        def __init__(self):
            super().__init__()
            self.unread(body)

        def chunk(self, size_hint=None):
            raise ReadPast

    class Req:  # the limits ChunkedReader takes from its request, and where it puts trailers
        limit_request_field_size = LIMITS["line_limit"]
        max_buffer_headers = LIMITS["trailer_limit"]
        trailers = []

        @staticmethod
        def parse_headers(data, from_trailer):
            return []

    decoded = 0
    try:
        for piece in ChunkedReader(Req(), Sealed()).parser:
            decoded += len(piece)
    except ReadPast:
        return decoded, False
    return decoded, True


@pytest.mark.parametrize("body", CHUNKED.values(), ids=CHUNKED.keys())
def test_a_chunked_body_is_ready_at_its_last_byte_and_not_before(body):
    count, end = _ready_at(body)
    assert count == len(body) and end.whole and not end.over
    assert _ready_at(body + b"GET / HTTP/1.1\r\n")[0] == len(body)  # what follows is the next request
    assert _gunicorn_decodes(body)[1]


@pytest.mark.parametrize("body", REFUSED.values(), ids=REFUSED.keys())
def test_a_chunked_body_is_ready_where_gunicorn_refuses_it(body):
    """Handed over with what arrived, the thread refuses it without reading more."""
    from gunicorn.http.errors import ParseException

    count, end = _ready_at(body)
    assert count is not None and not end.whole
    with pytest.raises(ParseException):
        _gunicorn_decodes(body[:count])


@pytest.mark.parametrize("body", OVER_MAX_BODY.values(), ids=OVER_MAX_BODY.keys())
def test_a_chunked_body_is_ready_once_more_than_max_body_arrived(body):
    """The thread finds more than max_body bytes of content (reading further, it gets 413)."""
    count, end = _ready_at(body)
    assert count is not None and end.over and not end.whole
    decoded, ended = _gunicorn_decodes(body[:count])
    assert decoded == LIMITS["max_body"] + 1 and not ended
