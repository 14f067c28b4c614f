"""docs/protocol-v2-vectors.json (docs/protocol.md section 16) reproduced byte for byte: by the sealing module, by
the server (a session planted with the vector's keys answers the vector's calls) and by the Python client (its
login derives the vector's keys; it opens the vector's answers). bastion.js is checked against the same file in
Chromium (plugins/todo/tests/test_version2_ui.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kernel.client import Client, ProtocolError
from kernel.core import sealing, signing
from kernel.core.signing import b64url, b64url_decode

V2 = json.loads((Path(__file__).resolve().parents[1] / "docs" / "protocol-v2-vectors.json").read_text("utf-8"))
CALLS = V2["calls"]
IDS = [call["path"] for call in CALLS]


def pair(party: dict) -> sealing.KeyPair:
    return sealing.KeyPair.from_private_value(int.from_bytes(b64url_decode(party["private_key"]), "big"))


def keys() -> sealing.SessionKeys:
    return sealing.SessionKeys(*(b64url_decode(V2["keys"][label]) for label in sealing.LABELS))


def test_the_key_agreement_and_the_keys():
    client, server = pair(V2["client"]), pair(V2["server"])
    assert (client.public, server.public) == (V2["client"]["public_key"], V2["server"]["public_key"])
    jwk = V2["client"]["jwk"]
    assert b64url_decode(client.public) == b"\x04" + b64url_decode(jwk["x"]) + b64url_decode(jwk["y"])
    secret = client.agree(server.public)
    assert secret == server.agree(client.public) and b64url(secret) == V2["shared_secret"]
    for label in sealing.LABELS:
        info = sealing.kdf_info(label, V2["sid"], V2["domain"], client.public, server.public)
        assert info.decode() == V2["info"][label]
    assert sealing.derive_keys(secret, V2["sid"], V2["domain"], client.public, server.public) == keys()


@pytest.mark.parametrize("call", CALLS, ids=IDS)
def test_the_envelopes_and_macs(call):
    k, domain = keys(), V2["domain"]
    aad = sealing.call_aad(call["ts"], call["nonce"], call["path"], domain)
    assert aad.decode() == call["aad"]
    envelope = sealing.seal(k.call_enc, call["plaintext"].encode(), aad, b64url_decode(call["iv"]))
    assert b64url(envelope) == call["envelope"]
    assert sealing.open_envelope(k.call_enc, envelope, aad).decode() == call["plaintext"]
    assert signing.string_to_sign(call["ts"], call["nonce"], call["path"], domain, envelope).decode() == call["S"]
    mac = signing.request_mac(k.call_mac, call["ts"], call["nonce"], call["path"], domain, envelope)
    assert mac == call["mac"]
    assert signing.authorization(V2["sid"], call["ts"], call["nonce"], mac) == call["authorization"]
    answer_aad = sealing.answer_aad(call["nonce"], call["status"])
    assert answer_aad.decode() == call["answer_aad"]
    answer = sealing.seal(k.answer_enc, call["answer_plaintext"].encode(), answer_aad, b64url_decode(call["answer_iv"]))
    assert b64url(answer) == call["answer_envelope"]
    assert signing.response_string(call["nonce"], call["status"], answer).decode() == call["R"]
    assert signing.response_mac(k.answer_mac, call["nonce"], call["status"], answer) == call["answer_mac"]
    assert signing.server_authorization(call["answer_mac"]) == call["server_authorization"]


def test_an_envelope_opens_only_with_its_key_and_associated_data():
    call, k = CALLS[0], keys()
    envelope = b64url_decode(call["envelope"])
    aad = call["aad"].encode()
    for key, data in ((k.answer_enc, aad), (k.call_enc, aad + b"x"), (k.call_enc, call["answer_aad"].encode())):
        with pytest.raises(ValueError):
            sealing.open_envelope(key, envelope, data)
    with pytest.raises(ValueError):
        sealing.open_envelope(k.call_enc, envelope[:27], aad)


# -- the Python client ---------------------------------------------------------------------------------------------


class VectorServer:
    """A WSGI app that answers a login with the vector's sid and server key, and each vector call with its answer."""

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, environ, start_response):
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        if environ["PATH_INFO"] == "/auth/login":
            assert json.loads(body)["public_key"] == V2["client"]["public_key"]
            answer = json.dumps({"sid": V2["sid"], "version": 2, "public_key": V2["server"]["public_key"],
                                 "expires": 1767223800, "server_time": 1767222000,
                                 "user": {"username": "alice", "domain": V2["domain"]}}).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [answer]
        call = next(c for c in CALLS if c["path"] == environ["PATH_INFO"])
        self.calls.append({"body": body, "authorization": environ["HTTP_AUTHORIZATION"],
                           "content_type": environ["CONTENT_TYPE"]})
        # The answer is the vector's: bound to the vector's nonce, so the client must have sent it.
        start_response(f"{call['status']} X", [("Content-Type", sealing.SEALED_TYPE),
                                               ("Server-Authorization", call["server_authorization"])])
        return [b64url_decode(call["answer_envelope"])]


@pytest.fixture
def vector_client(monkeypatch):
    client_pair = pair(V2["client"])
    monkeypatch.setattr(sealing, "KeyPair", lambda: client_pair)
    client = Client(app=VectorServer(), host=V2["domain"], encrypt=True, clock=lambda: 1767222000.0)
    client.login("alice", "whatever")
    return client


def test_the_python_client_derives_the_vectors_keys_at_login(vector_client):
    assert vector_client.session.keys == keys()
    assert vector_client.session.key == keys().call_mac


@pytest.mark.parametrize("call", CALLS, ids=IDS)
def test_the_python_client_opens_the_vectors_answer(vector_client, call):
    server = vector_client.app
    response, nonce = vector_client.send_signed(call["path"], call["plaintext"].encode(), ts=call["ts"],
                                                nonce=call["nonce"])
    sent = server.calls[-1]
    assert sent["content_type"] == sealing.SEALED_TYPE
    # Its IV is its own (random): the server side of the vector opens it all the same.
    aad = sealing.call_aad(call["ts"], call["nonce"], call["path"], V2["domain"])
    assert sealing.open_envelope(keys().call_enc, sent["body"], aad).decode() == call["plaintext"]
    if call["status"] == 200:
        assert vector_client._result_or_raise(response, nonce=nonce, sealed=True) == json.loads(call["answer_plaintext"])
    else:
        with pytest.raises(Exception) as refused:
            vector_client._result_or_raise(response, nonce=nonce, sealed=True)
        assert type(refused.value).__name__ == json.loads(call["answer_plaintext"])["exc"]


def test_the_python_client_refuses_an_answer_moved_to_another_call(vector_client):
    """The first vector's answer, signed for its nonce, given to a call with another nonce: refused unread."""
    from kernel.client import InvalidResponseSignature

    first, second = CALLS[0], CALLS[1]
    response, _ = vector_client.send_signed(first["path"], first["plaintext"].encode(), ts=first["ts"],
                                            nonce=first["nonce"])
    with pytest.raises(InvalidResponseSignature):
        vector_client._result_or_raise(response, nonce=second["nonce"], sealed=True)
    with pytest.raises(ProtocolError):  # verified, but not sealed when the call was
        plain = type(response)(response.status, {**response.headers, "content-type": "application/json"},
                               response.body)
        vector_client._result_or_raise(plain, nonce=first["nonce"], sealed=True)


def test_the_protocols_version_2_login_example_uses_the_vectors_keys():
    text = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text("utf-8")
    section = text[text.index("### 16.1 The login"):text.index("### 16.2")]
    assert f'"public_key": "{V2["client"]["public_key"]}"' in section
    assert f'"public_key": "{V2["server"]["public_key"]}"' in section
    assert f'"sid": "{V2["sid"]}"' in section
