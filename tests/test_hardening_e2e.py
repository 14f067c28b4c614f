"""Hardening over a real gunicorn socket: what only raw bytes on the wire can send."""

from __future__ import annotations

import json
import socket
import time

import pytest

from kernel.client import Client
from kernel.core import signing
from kernel.testing import GunicornServer

from .e2e_support import DOMAIN, PASSWORD, USERNAME, sections

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    config = sections(f"sqlite:///{tmp_path_factory.mktemp('hardening')}/bastion.sqlite3")
    with GunicornServer(config, workers=2, threads=4) as srv:
        yield srv


@pytest.fixture(scope="module")
def production():
    config = sections("mem://")
    config["bastion"].update(development=False, allowed_hosts="localhost")
    with GunicornServer(config, workers=1, threads=4) as srv:
        yield srv


def exchange(server, data: bytes, timeout: float = 10) -> tuple[int, dict]:
    """Send raw bytes on a new connection; return the status and the JSON body of the answer."""
    with socket.create_connection((server.host, server.port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_answer(sock)


def read_answer(sock) -> tuple[int, dict]:
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    return int(head.split()[1]), json.loads(rest[:length])


def signed_request(client: Client, target: str, body: bytes, host: str = DOMAIN, signed_path: str | None = None) -> bytes:
    ts, nonce = str(int(time.time() + client.offset)), signing.new_nonce()
    mac = signing.request_mac(client.session.key, ts, nonce, signed_path or target, client.domain, body)
    return (f"POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n"
            f"Authorization: {signing.authorization(client.session.sid, ts, nonce, mac)}\r\n\r\n").encode() + body


def logged_in(server) -> Client:
    client = Client(server.url, host=DOMAIN)
    client.login(USERNAME, PASSWORD)
    return client


@pytest.mark.parametrize("target", ["//api/add", "/./api/add", "/api/../api/add", "/%61pi/add", "/api%2Fadd"])
def test_a_non_canonical_target_reaches_no_service(server, target):
    client = logged_in(server)
    body = b'{"args": ["smuggled"]}'
    status, answer = exchange(server, signed_request(client, target, body))
    assert (status, answer["exc"]) == (404, "NotFound")
    assert not [t for t in client.call("get_all") if t["text"] == "smuggled"]


def test_production_serves_no_plain_http_call_through_double_slashes(production):
    for target in ("//api/get_all", "//auth/login", "/api/get_all", "/auth/login"):
        status, answer = exchange(production, f"POST {target} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n"
                                              "Content-Type: application/json\r\nConnection: close\r\n\r\n{}".encode())
        assert status in (403, 404) and answer["exc"] in ("RequireSSL", "NotFound"), (target, answer)
        assert status != 200


def test_an_empty_query_string_is_refused(server):
    client = logged_in(server)
    status, answer = exchange(server, signed_request(client, "/api/get_all?", b"", signed_path="/api/get_all"))
    assert (status, answer["exc"]) == (400, "InvalidCall")


def test_an_absolute_form_target_is_served_as_the_tenant_it_names(server):
    client = logged_in(server)  # a session of localhost
    body = b'{"args": ["absolute"]}'
    status, answer = exchange(server, signed_request(client, "http://alpha.localhost/api/add", body,
                                                     host=DOMAIN, signed_path="/api/add"))
    assert (status, answer["exc"]) == (401, "UnknownSession")  # served as alpha.localhost, where it is unknown
    status, answer = exchange(server, signed_request(client, f"http://{DOMAIN}/api/add", body,
                                                     host="alpha.localhost", signed_path="/api/add"))
    assert status == 200 and answer["result"]["text"] == "absolute"


def test_a_call_whose_body_comes_after_logout_does_not_run(server):
    client = logged_in(server)
    body = b'{"args": ["after logout"]}'
    request = signed_request(client, "/api/add", body)
    head, body_part = request[: -len(body)], request[-len(body):]
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(head)  # the headers arrive; the body is late
        session = client.session
        client.logout()
        client.session = session
        sock.sendall(body_part)
        status, answer = read_answer(sock)
    assert (status, answer["exc"]) == (401, "UnknownSession")
    fresh = logged_in(server)
    assert not [t for t in fresh.call("get_all") if t["text"] == "after logout"]
