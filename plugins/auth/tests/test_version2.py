"""Protocol version 2 (docs/protocol.md section 16): the key agreement at login, sealed calls and answers, and the
tenant settings that require them; in process, on the memory driver (the drivers' own runs are in
tests/test_version2_e2e.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from auth_helpers import PASSWORD, assert_error, auth_of, is_signed, login_body, send
from bastion_auth.sessions import Session as StoredSession

from kernel import (
    EncryptionRequired,
    InvalidCall,
    InvalidCiphertext,
    InvalidSignature,
    KeyAgreementRequired,
    KeyPair,
    ReplayedCall,
    UnknownSession,
    UnsupportedMediaType,
    b64url_decode,
    derive_keys,
    hookimpl,
    service,
)
from kernel.testing import (
    SEALED_TYPE,
    Client,
    DowngradeRefused,
    Response,
    Session,
    authorization,
    call_aad,
    new_nonce,
    open_envelope,
    parse_authorization,
    request_mac,
    seal,
)

V2 = {"key_agreement": "required"}
SEALED = {"encryption": "required"}


def v2_client(app, fake_clock, host="localhost", **kwargs) -> Client:
    return Client(app=app, host=host, clock=fake_clock, version=2, **kwargs)


# -- the login -----------------------------------------------------------------------------------------------------


def test_a_version_2_login_answer_carries_no_key_and_both_sides_agree(app, fake_clock):
    pair = KeyPair()
    result = send(app, "/auth/login", login_body(public_key=pair.public))
    assert result.status_code == 200, result.json
    answer = result.json
    assert "key" not in answer
    assert answer["version"] == 2 and len(answer["public_key"]) == 87
    assert list(answer) == ["sid", "version", "public_key", "expires", "server_time", "user", "limits"]
    # The client derives the keys from what it holds and the answer; the server stored the same ones.
    keys = derive_keys(pair.agree(answer["public_key"]), answer["sid"], "localhost", pair.public, answer["public_key"])
    stored = auth_of(app).sessions.load("localhost", answer["sid"], fake_clock())
    assert (stored.key, stored.answer_key, stored.call_enc, stored.answer_enc) == (
        keys.call_mac, keys.answer_mac, keys.call_enc, keys.answer_enc)
    assert len({keys.call_mac, keys.answer_mac, keys.call_enc, keys.answer_enc}) == 4


def test_a_version_1_login_is_unchanged(app):
    answer = send(app, "/auth/login", login_body()).json
    assert list(answer) == ["sid", "key", "expires", "server_time", "user", "limits"]


@pytest.mark.parametrize("public_key, why", [
    ("", "87 characters"),
    (12, "87 characters"),
    (None, "87 characters"),
    ("A" * 87, "uncompressed"),
    ("BA" + "A" * 85, "not a point"),
])
def test_a_bad_public_key_is_invalid_call_and_checks_no_password(app, public_key, why):
    body = assert_error(send(app, "/auth/login", login_body(public_key=public_key)), 400, "InvalidCall")
    assert why in body["err"][0]


def test_calls_of_a_version_2_session_are_signed_with_the_agreed_keys(app, fake_clock):
    client = v2_client(app, fake_clock)
    client.login("alice", PASSWORD)
    assert client.session.version == 2
    assert client.call("echo", "hi")["x"] == "hi"
    # The answer is signed with the answer key, not the call key.
    body = b'{"args": ["x"]}'
    response, nonce = client.send_signed("/api/echo", body)
    assert response.status == 200
    mac = response.headers["server-authorization"]
    client.verify(response, nonce)
    assert mac and client.session.answer_key != client.session.key
    assert client.logout() is True


def test_key_agreement_required_refuses_a_version_1_login_with_its_own_error(auth_app, fake_clock):
    app = auth_app(auth=V2)
    with pytest.raises(KeyAgreementRequired):
        Client(app=app, clock=fake_clock).login("alice", PASSWORD)
    # and a version-2 client logs in
    v2_client(app, fake_clock).login("alice", PASSWORD)


def test_encryption_required_implies_key_agreement(auth_app, fake_clock):
    app = auth_app(auth=SEALED)
    with pytest.raises(KeyAgreementRequired):
        Client(app=app, clock=fake_clock).login("alice", PASSWORD)


def test_a_downgraded_login_is_refused_and_its_session_ended(app, fake_clock):
    """A proxy strips the public key from a version-2 login: the server answers a version-1 login (it cannot tell),
    the client refuses the answer, and ends the session whose key travelled."""
    seen: list[dict] = []

    def stripping_proxy(environ, start_response):
        if environ["PATH_INFO"] == "/auth/login":
            body = json.loads(environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"])))
            body.pop("public_key")
            raw = json.dumps(body).encode()
            environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(raw), str(len(raw))
            chunks = list(app(environ, start_response))
            seen.append(json.loads(b"".join(chunks)))
            return chunks
        return app(environ, start_response)

    client = Client(app=stripping_proxy, clock=fake_clock, version=2)
    with pytest.raises(DowngradeRefused):
        client.login("alice", PASSWORD)
    assert client.session is None
    leaked = seen[0]
    assert "key" in leaked
    # What the proxy read signs nothing: the session is gone.
    thief = Client(app=app, clock=fake_clock)
    thief.session = Session(leaked["sid"], b64url_decode(leaked["key"]), 0, {})
    with pytest.raises(UnknownSession):
        thief.call("echo", "x")


# -- sealed calls -------------------------------------------------------------------------------------------------


def test_a_sealed_call_and_its_sealed_answer(app, fake_clock):
    client = v2_client(app, fake_clock, encrypt=True)
    client.login("alice", PASSWORD)
    secret = "a very private note"
    response, nonce = client.send_signed("/api/echo", json.dumps({"args": [secret]}).encode())
    assert response.status == 200
    assert response.headers["content-type"] == SEALED_TYPE
    assert secret.encode() not in response.body
    assert is_signed(_as_result(response), client.session.answer_key, nonce)
    assert client.call("echo", secret, n=2)["x"] == secret
    # errors are sealed too
    with pytest.raises(InvalidCall):
        client.call("echo")
    assert client.logout() is True


def _as_result(response):
    class Result:
        status_code = response.status
        content = response.body
        headers = {"Server-Authorization": response.headers.get("server-authorization")}
    return Result()


def test_the_sealed_call_is_what_the_mac_covers(app, fake_clock):
    """A flipped bit, a truncated envelope: the MAC covers the envelope as sent, so both are InvalidSignature."""
    client = v2_client(app, fake_clock, encrypt=True)
    client.login("alice", PASSWORD)
    ts, nonce = str(int(fake_clock())), new_nonce()
    envelope = seal(client.session.keys.call_enc, b'{"args": ["x"]}',
                            call_aad(ts, nonce, "/api/echo", "localhost"))
    mac = request_mac(client.session.key, ts, nonce, "/api/echo", "localhost", envelope)
    headers = {"Authorization": authorization(client.session.sid, ts, nonce, mac),
               "Content-Type": SEALED_TYPE}
    flipped = bytearray(envelope)
    flipped[20] ^= 1
    assert_error(send(app, "/api/echo", bytes(flipped), headers), 401, "InvalidSignature")
    assert_error(send(app, "/api/echo", envelope[:-1], headers), 401, "InvalidSignature")
    ok = send(app, "/api/echo", envelope, headers)
    assert ok.status_code == 200
    replayed = send(app, "/api/echo", envelope, headers)
    assert replayed.status_code == 401 and replayed.headers["content-type"] == SEALED_TYPE
    with pytest.raises(ReplayedCall):
        client._result_or_raise(_response(replayed), nonce=nonce, sealed=True)


def _response(result) -> Response:
    return Response(result.status_code, {k.lower(): v for k, v in result.headers.items()}, result.content)


@pytest.mark.parametrize("wrong", ["key", "path", "ts", "nonce", "domain"])
def test_an_envelope_sealed_for_another_call_or_key_does_not_open(app, fake_clock, wrong):
    """Signed right but sealed with the wrong key, or for another call (its associated data): InvalidCiphertext,
    sealed and signed, and the service does not run."""
    client = v2_client(app, fake_clock, encrypt=True)
    client.login("alice", PASSWORD)
    ts, nonce = str(int(fake_clock())), new_nonce()
    aad = dict(ts=ts, nonce=nonce, path="/api/echo", domain="localhost")
    if wrong != "key":
        aad[wrong] = {"path": "/api/whoami", "ts": str(int(ts) - 1), "nonce": new_nonce(),
                      "domain": "other.localhost"}[wrong]
    key = client.session.keys.answer_enc if wrong == "key" else client.session.keys.call_enc
    envelope = seal(key, b'{"args": ["x"]}', call_aad(**aad))
    mac = request_mac(client.session.key, ts, nonce, "/api/echo", "localhost", envelope)
    headers = {"Authorization": authorization(client.session.sid, ts, nonce, mac), "Content-Type": SEALED_TYPE}
    result = send(app, "/api/echo", envelope, headers)
    assert result.status_code == 400
    with pytest.raises(InvalidCiphertext):
        client._result_or_raise(_response(result), nonce=nonce, sealed=True)


def test_a_plain_call_where_encryption_is_required(auth_app, fake_clock):
    app = auth_app(auth=SEALED)
    plain = v2_client(app, fake_clock)
    plain.login("alice", PASSWORD)
    with pytest.raises(EncryptionRequired):
        plain.call("echo", "x")
    plain.encrypt = True
    assert plain.call("echo", "x")["x"] == "x"
    plain.encrypt = False
    assert plain.logout() is True  # a logout carries nothing: it may be plain


def test_a_sealed_call_of_a_version_1_session_is_unsupported(app, fake_clock):
    client = Client(app=app, clock=fake_clock)
    client.login("alice", PASSWORD)
    ts, nonce = str(int(fake_clock())), new_nonce()
    body = b"\0" * 40
    mac = request_mac(client.session.key, ts, nonce, "/api/echo", "localhost", body)
    headers = {"Authorization": authorization(client.session.sid, ts, nonce, mac), "Content-Type": SEALED_TYPE}
    result = send(app, "/api/echo", body, headers)
    with pytest.raises(UnsupportedMediaType):
        client._result_or_raise(_response(result), nonce=nonce)


def test_the_login_is_never_sealed(app):
    assert_error(send(app, "/auth/login", b"\0" * 40, {"Content-Type": SEALED_TYPE}), 415,
                 "UnsupportedMediaType")


# -- the server against docs/protocol-v2-vectors.json ----------------------------------------------------------------

V2_VECTORS = json.loads((Path(__file__).resolve().parents[3] / "docs" / "protocol-v2-vectors.json").read_text("utf-8"))


@pytest.mark.parametrize("call", V2_VECTORS["calls"], ids=[c["path"] for c in V2_VECTORS["calls"]])
def test_the_server_opens_the_vectors_calls_and_seals_their_answers(auth_app, fake_clock, call):
    """A session planted with the vector's sid and keys: the server opens each vector call (its envelope, MAC and
    associated data as the file gives them) and answers what the vector says, sealed for the vector's nonce."""
    domain, keys = V2_VECTORS["domain"], V2_VECTORS["keys"]
    app = auth_app(bastion={"development": True, "allowed_hosts": domain})
    fake_clock.set(float(call["ts"]))
    auth, now = auth_of(app), float(call["ts"])
    limits = auth.tenant(domain).settings
    auth.sessions.save(StoredSession(
        sid=V2_VECTORS["sid"], username="alice", domain=domain, key=b64url_decode(keys["call-mac"]), created=now,
        idle_expires=now + limits.idle_timeout, absolute_expires=now + limits.absolute_timeout,
        answer_key=b64url_decode(keys["answer-mac"]), call_enc=b64url_decode(keys["call-enc"]),
        answer_enc=b64url_decode(keys["answer-enc"])), now)
    result = send(app, call["path"], b64url_decode(call["envelope"]),
                  {"Authorization": call["authorization"], "Content-Type": SEALED_TYPE}, host=domain)
    assert result.status_code == call["status"]
    assert result.headers["content-type"] == SEALED_TYPE
    assert is_signed(result, b64url_decode(keys["answer-mac"]), call["nonce"])
    plain = open_envelope(b64url_decode(keys["answer-enc"]), result.content,
                                  call["answer_aad"].encode())
    assert plain.decode() == call["answer_plaintext"]


# -- what a proxy log of a version-2 session gives its reader ------------------------------------------------------

NOTED: list[str] = []


@service("note")
def note(text: str) -> int:
    """Keep a text (the test counts what ran)."""
    NOTED.append(text)
    return len(NOTED)


class NotePlugin:
    @hookimpl
    def bastion_services(self):
        return [note]


class Capture:
    """A WSGI layer in front of the app that records every request and answer, as a body-logging proxy does."""

    def __init__(self, app):
        self.app = app
        self.log: list[dict] = []

    def __call__(self, environ, start_response):
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)
        entry = {"path": environ["PATH_INFO"], "headers": {k: v for k, v in environ.items() if k.startswith("HTTP_")},
                 "content_type": environ.get("CONTENT_TYPE", ""), "body": body}
        self.log.append(entry)

        def recording(status, headers, exc_info=None):
            entry["status"], entry["answer_headers"] = status, dict(headers)
            return start_response(status, headers, exc_info)

        chunks = list(self.app(environ, recording))
        entry["answer"] = b"".join(chunks)
        return chunks


def test_a_captured_version_2_login_and_its_calls_sign_nothing_and_replay_nothing(auth_app, fake_clock):
    NOTED.clear()
    app = auth_app(plugins=[NotePlugin()])
    proxy = Capture(app)
    client = Client(app=proxy, clock=fake_clock, encrypt=True)
    client.login("alice", PASSWORD)
    for text in ("first private note", "second private note"):
        client.call("note", text)
    assert len(NOTED) == 2
    login, calls = proxy.log[0], proxy.log[1:]
    answer = json.loads(login["answer"])
    assert "key" not in answer
    for call in calls:
        assert b"private note" not in call["body"] and b"private note" not in call["answer"]

    # What the log holds: the sid, both public keys, the calls' headers and envelopes. Every byte string in the
    # login answer and request, tried as the key, signs nothing.
    sent = json.loads(login["body"])
    candidates = [b64url_decode(answer["public_key"]), b64url_decode(sent["public_key"]), answer["sid"].encode(),
                  b64url_decode(answer["public_key"])[1:33], b64url_decode(sent["public_key"])[1:33]]
    # (each try from an address of its own: three bad signatures from one address ban it, as they should)
    addresses = (f"198.51.100.{n}" for n in range(1, 100))
    for key in candidates:
        thief = Client(app=app, clock=fake_clock, remote_addr=next(addresses))
        thief.session = Session(answer["sid"], key, 0, {})
        with pytest.raises(InvalidSignature):
            thief.call("note", "forged")

    # Each captured call, sent again as it was: refused, and sealed (the thief cannot read why).
    for call in calls:
        headers = {"Authorization": call["headers"]["HTTP_AUTHORIZATION"], "Content-Type": call["content_type"]}
        again = send(app, call["path"], call["body"], headers, remote_addr=next(addresses))
        assert again.status_code == 401 and again.headers["content-type"] == SEALED_TYPE
        assert b"ReplayedCall" not in again.content
        # ... with a fresh ts and nonce under the old MAC, or to another path: the MAC does not verify.
        params = parse_authorization(call["headers"]["HTTP_AUTHORIZATION"])
        moved = authorization(params["sid"], str(int(fake_clock())), new_nonce(), params["mac"])
        assert_error(send(app, call["path"], call["body"], {"Authorization": moved, "Content-Type": call["content_type"]},
                          remote_addr=next(addresses)), 401, "InvalidSignature")
        assert_error(send(app, "/api/echo", call["body"], headers, remote_addr=next(addresses)), 401, "InvalidSignature")
    assert len(NOTED) == 2  # nothing ran
    # The session itself is untouched: its owner goes on.
    assert client.call("note", "third private note") == 3
