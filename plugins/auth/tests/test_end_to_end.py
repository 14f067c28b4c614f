"""End to end over real gunicorn: concurrent replays, and the tutorial's closing scenario."""

from __future__ import annotations

import http.client
import importlib.util
import json
import socket
import threading

import pytest
from auth_helpers import ALICE_HASH, CHEAP_AUTH, PASSWORD

from kernel import Abusive, InvalidCredential, UnknownSession
from kernel.testing import Client, GunicornServer, authorization, new_nonce, request_mac, skip_or_fail

pytestmark = pytest.mark.slow

#: The end-to-end tests call the todo plugin's services: it must be installed (it is looked up, never imported).
HAS_TODO = importlib.util.find_spec("bastion_todo") is not None


def SourceClient(*args, source: str = "127.0.0.1", **kwargs) -> Client:
    """A client whose connections leave from a chosen loopback address (another origin)."""
    return Client(*args, source_address=source, **kwargs)


@pytest.fixture(scope="module")
def server():
    if not HAS_TODO:
        skip_or_fail("bastion_todo is not installed: the end-to-end tests call its services")
    sections = {
        "bastion": {"development": True, "storage": "mem://"},
        "auth": dict(CHEAP_AUTH),
        "users": {"alice@localhost": ALICE_HASH, "alice@replay.localhost": ALICE_HASH},
    }
    with GunicornServer(sections, threads=8) as srv:
        yield srv


def test_one_signed_request_sent_50_times_at_once_succeeds_once(server):
    alice = Client(server.url, host="replay.localhost")
    alice.login("alice", PASSWORD)
    body = json.dumps({"args": ["only once"]}).encode()
    ts, nonce = str(int(alice.clock() + alice.offset)), new_nonce()
    mac = request_mac(alice.session.key, ts, nonce, "/api/add", "replay.localhost", body)
    headers = {"Host": "replay.localhost", "Content-Type": "application/json",
               "Authorization": authorization(alice.session.sid, ts, nonce, mac)}
    barrier = threading.Barrier(50)
    results: list = [None] * 50

    def fire(i: int) -> None:
        # each sender its own origin, so that no ban interferes (3 per replay would ban one origin)
        conn = http.client.HTTPConnection(server.host, server.port, timeout=30,
                                          source_address=(f"127.0.1.{i + 1}", 0))
        try:
            conn.connect()
            barrier.wait()
            conn.request("POST", "/api/add", body=body, headers=headers)
            raw = conn.getresponse()
            results[i] = (raw.status, json.loads(raw.read()), raw.getheader("Server-Authorization"))
        finally:
            conn.close()

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted((status, body.get("exc")) for status, body, _ in results)
    assert statuses == [(200, None)] + [(401, "ReplayedCall")] * 49
    assert all(sig is not None for _, _, sig in results)  # every answer after step 8 is signed
    assert [todo["text"] for todo in alice.call("get_all")] == ["only once"]


def test_the_tutorial_closing_scenario(server):
    alice = Client(server.url, host="localhost")
    assert alice.login("alice", PASSWORD) == {"username": "alice", "domain": "localhost"}
    todo = alice.call("add", "Play with Fanery")
    assert todo["vsn"] == 1 and todo["done"] is False
    assert alice.call("get_all") == [todo]
    updated = alice.call("update", todo["id"], todo["vsn"], done=True)
    assert updated["vsn"] == todo["vsn"] + 1 and updated["done"] is True
    assert alice.call("remove", updated["id"], updated["vsn"]) is True
    assert alice.call("get_all") == []
    session = alice.session
    assert alice.logout() is True
    alice.session = session
    with pytest.raises(UnknownSession):
        alice.call("get_all")

    anonymous = Client(server.url, host="localhost")
    statuses = []
    for _ in range(20):
        answer = anonymous.request("/api/get_all", b"")
        statuses.append((answer.status, answer.json()["exc"]))
        if answer.status == 429:
            assert int(answer.headers["retry-after"]) >= 1
            break
    # the UnknownSession after logout weighed nothing (a session the server ended): ten reach the maximum
    assert statuses == [(401, "Unauthorized")] * 10 + [(429, "Abusive")]
    with pytest.raises(Abusive):
        Client(server.url, host="localhost").login("alice", PASSWORD)

    elsewhere = SourceClient(server.url, host="localhost", source="127.0.0.2")
    elsewhere.login("alice", PASSWORD)
    assert elsewhere.call("get_all") == []
    with pytest.raises(InvalidCredential):
        SourceClient(server.url, host="beta.localhost", source="127.0.0.2").login("alice", PASSWORD)


def test_two_host_headers_over_http_are_refused(server):
    request = (b"POST /auth/login HTTP/1.1\r\nHost: localhost\r\nHost: beta.localhost\r\n"
               b"Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
    with socket.create_connection((server.host, server.port), timeout=30,
                                  source_address=("127.0.0.3", 0)) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.split(b" ", 2)[1] == b"400"
