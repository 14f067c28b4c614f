"""The protocol vectors (docs/protocol.md section 11) reproduced byte for byte: by the signing module, the server, the client."""

from __future__ import annotations

import pytest
from auth_helpers import VECTORS, auth_of, send
from bastion_auth.sessions import Session

from kernel import b64url_decode
from kernel.testing import (
    Client,
    authorization,
    parse_authorization,
    parse_server_authorization,
    request_mac,
    response_mac,
    response_string,
    server_authorization,
    string_to_sign,
)
from kernel.testing import Session as ClientSession

IDS = [v["path"] + "@" + v["domain"] for v in VECTORS]


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_signing_reproduces_the_vector(vector):
    key = b64url_decode(vector["key"])
    body = vector["body"].encode("utf-8")
    s = string_to_sign(vector["ts"], vector["nonce"], vector["path"], vector["domain"], body)
    assert s == vector["S"].encode("utf-8")
    mac = request_mac(key, vector["ts"], vector["nonce"], vector["path"], vector["domain"], body)
    assert mac == vector["mac"]
    assert authorization(vector["sid"], vector["ts"], vector["nonce"], mac) == vector["authorization"]
    assert parse_authorization(vector["authorization"]) == {
        "sid": vector["sid"], "ts": vector["ts"], "nonce": vector["nonce"], "mac": vector["mac"]}
    response = vector["response_body"].encode("utf-8")
    r = response_string(vector["nonce"], vector["status"], response)
    assert r == vector["R"].encode("utf-8")
    assert response_mac(key, vector["nonce"], vector["status"], response) == vector["response_mac"]
    assert server_authorization(vector["response_mac"]) == vector["server_authorization"]
    assert parse_server_authorization(vector["server_authorization"]) == vector["response_mac"]


def plant_session(app, vector) -> None:
    """Store the vector's sid and key as a live session of its domain, opened at its ts."""
    sessions, limits = auth_of(app).sessions, auth_of(app).tenant(vector["domain"]).settings
    now = float(vector["ts"])
    sessions.save(Session(sid=vector["sid"], username="alice", domain=vector["domain"],
                          key=b64url_decode(vector["key"]), created=now,
                          idle_expires=now + limits.idle_timeout, absolute_expires=now + limits.absolute_timeout), now)


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_server_accepts_the_vector_and_signs_its_answer(app, fake_clock, vector):
    fake_clock.set(float(vector["ts"]))
    plant_session(app, vector)
    result = send(app, vector["path"], vector["body"].encode("utf-8"),
                  {"Authorization": vector["authorization"]}, host=vector["domain"])
    assert result.status_code == vector["status"]
    # The test services answer exactly the vector's body, so the whole response is reproduced.
    assert result.content == vector["response_body"].encode("utf-8")
    assert result.headers["Server-Authorization"] == vector["server_authorization"]


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_server_refuses_the_vector_with_one_byte_changed(app, fake_clock, vector):
    fake_clock.set(float(vector["ts"]))
    plant_session(app, vector)
    body = vector["body"].encode("utf-8") + b" "
    result = send(app, vector["path"], body, {"Authorization": vector["authorization"]}, host=vector["domain"])
    assert result.status_code == 401
    assert result.json["exc"] == "InvalidSignature"
    assert "Server-Authorization" not in result.headers


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_python_client_writes_the_vectors_authorization(app, fake_clock, vector):
    fake_clock.set(float(vector["ts"]))
    client = Client(app=app, host=vector["domain"], clock=fake_clock)
    client.session = ClientSession(vector["sid"], b64url_decode(vector["key"]), 0, {})
    sent = {}

    def capture(path, body=b"", headers=None, method="POST"):
        sent.update(path=path, body=body, headers=dict(headers or {}))
        return Client.request(client, path, body, headers, method)

    client.request = capture
    plant_session(app, vector)
    response, nonce = client.send_signed(vector["path"], vector["body"].encode("utf-8"), ts=vector["ts"],
                                         nonce=vector["nonce"])
    assert sent["headers"]["Authorization"] == vector["authorization"]
    assert response.status == vector["status"]
    client.verify(response, nonce)  # the client accepts the server's signature
    assert response.headers["server-authorization"] == vector["server_authorization"]
