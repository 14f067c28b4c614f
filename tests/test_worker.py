"""kernel.worker.BastionWorker behind real gunicorn processes, spoken to over raw sockets.

Slow heads wait in the worker's main loop, not in its threads; heads and bodies have deadlines; every
refusal is the JSON of docs/protocol.md section 2 with the security headers; 100 Continue waits for the
application to read the body.
"""

from __future__ import annotations

import http.client
import json
import re
import select
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
        "auth": {"argon2_memory_cost": 64, "argon2_time_cost": 1},
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


# -- slow heads ----------------------------------------------------------------


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


def test_the_worker_sends_the_same_content_security_policy_as_the_application():
    from kernel.app import API_CSP
    from kernel.worker import SECURITY_HEADERS as WORKER_HEADERS

    assert dict(WORKER_HEADERS)["Content-Security-Policy"] == API_CSP
    assert {name.lower(): value for name, value in WORKER_HEADERS} == SECURITY_HEADERS
