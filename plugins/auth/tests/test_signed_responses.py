"""Every answer after step 8 is signed; answers of steps 1 to 8 never are; the client checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from auth_helpers import PASSWORD, assert_error, is_signed, login_body, send, sign

from kernel import Abusive, Forbidden, ServiceUnavailable, UnknownSession
from kernel.testing import Client, InvalidResponseSignature, ServerFailure, Session


@pytest.fixture
def signed_call(app, alice):
    """Send a signed call; return (result, nonce)."""

    def call(path: str, body: bytes = b"", **sign_args):
        headers, nonce = sign(alice, path, body, **sign_args)
        return send(app, path, body, headers), nonce

    return call


@pytest.mark.parametrize("path, body, status, exc", [
    ("/api/echo", b'{"args": ["x"]}', 200, None),
    ("/api/echo", b'{"kwargs": {"x": "y", "n": "two"}}', 400, "InvalidCall"),
    ("/api/no_such_service", b"", 404, "NotFound"),
    ("/api/secret", b"", 403, "Forbidden"),
    ("/api/boom", b"", 500, "Error"),
    ("/auth/logout", b"{}", 200, None),
    ("/auth/logout", b"", 200, None),
], ids=["success", "args-not-binding", "not-found", "forbidden", "error-500", "logout", "logout-empty-body"])
def test_answers_after_the_mac_verified_are_signed(alice, signed_call, path, body, status, exc):
    result, nonce = signed_call(path, body)
    assert result.status_code == status
    assert result.json.get("exc") == exc
    assert is_signed(result, alice.session.key, nonce)


def test_stale_call_is_signed(alice, signed_call, fake_clock):
    result, nonce = signed_call("/api/echo", b"", ts=str(int(fake_clock()) - 3600))
    assert_error(result, 401, "StaleCall")
    assert is_signed(result, alice.session.key, nonce)


def test_replayed_call_is_signed(app, alice):
    headers, nonce = sign(alice, "/api/echo", b'{"args": ["x"]}')
    send(app, "/api/echo", b'{"args": ["x"]}', headers)
    result = send(app, "/api/echo", b'{"args": ["x"]}', headers)
    assert_error(result, 401, "ReplayedCall")
    assert is_signed(result, alice.session.key, nonce)


def test_a_500_says_nothing_of_its_cause_in_production(auth_app, fake_clock):
    from kernel import b64url_decode
    from kernel.testing import Session

    app = auth_app(bastion={"development": False, "allowed_hosts": "localhost"})
    login = send(app, "/auth/login", login_body(), protocol="https").json
    alice = Client(app=app, host="localhost", clock=fake_clock)
    alice.session = Session(login["sid"], b64url_decode(login["key"]), login["expires"], login["user"])
    headers, nonce = sign(alice, "/api/boom", b"")
    result = send(app, "/api/boom", b"", headers, protocol="https")
    body = assert_error(result, 500, "Error")
    assert set(body) == {"exc", "err", "request_id"} and body["request_id"] == result.headers["X-Request-Id"]
    assert "secret detail" not in result.text and "Traceback" not in result.text
    assert is_signed(result, alice.session.key, nonce)


UNSIGNED_CASES = {
    "invalid-host": dict(host="evil.example"),
    "payload-too-large": dict(body=b"x" * (1024 * 1024 + 1)),
    "unsupported-media-type": dict(headers={"Content-Type": "text/plain"}, body=b"x"),
    "query-string": dict(query_string="a=1"),
    "unauthorized": dict(authorization="Bastion-HMAC nonsense"),
    "unknown-session": dict(sid="dW5rbm93bi1zZXNzaW9uLWlk"),
    "invalid-signature": dict(domain="other.localhost"),
}


@pytest.mark.parametrize("case", list(UNSIGNED_CASES.values()), ids=list(UNSIGNED_CASES))
def test_answers_of_steps_1_to_8_are_never_signed(app, alice, case):
    case = dict(case)
    body = case.pop("body", b"")
    sign_args = {k: case.pop(k) for k in ("sid", "domain") if k in case}
    headers, _ = sign(alice, "/api/echo", body, **sign_args)
    if "authorization" in case:
        headers = {"Authorization": case.pop("authorization")}
    headers.update(case.pop("headers", {}))
    result = send(app, "/api/echo", body, headers, **case)
    assert result.status_code in (400, 401, 413, 415)
    assert "Server-Authorization" not in result.headers


def test_expired_session_and_abusive_are_never_signed(app, alice, fake_clock):
    fake_clock.advance(1800)
    headers, _ = sign(alice, "/api/echo", b"")
    assert "Server-Authorization" not in send(app, "/api/echo", b"", headers).headers
    for _ in range(10):
        send(app, "/api/echo", b"")
    headers, _ = sign(alice, "/api/echo", b"")
    result = send(app, "/api/echo", b"", headers)
    assert_error(result, 429, "Abusive")
    assert "Server-Authorization" not in result.headers


def test_login_answers_are_not_signed(app):
    assert "Server-Authorization" not in send(app, "/auth/login", login_body()).headers
    assert "Server-Authorization" not in send(app, "/auth/login", login_body(password="nope")).headers


class Tamper:
    """WSGI middleware that rewrites answers to signed calls, as a man in the middle would."""

    def __init__(self, app, rewrite):
        self.app = app
        self.rewrite = rewrite
        self.active = False

    def __call__(self, environ, start_response):
        if not self.active or not environ["PATH_INFO"].startswith("/api/"):
            return self.app(environ, start_response)
        captured = {}

        def capture(status, headers, exc_info=None):
            captured.update(status=status, headers=headers)

        body = b"".join(self.app(environ, capture))
        status, headers, body = self.rewrite(captured["status"], captured["headers"], body)
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        start_response(status, headers + [("Content-Length", str(len(body)))])
        return [body]


def tampered_client(app, fake_clock, rewrite) -> tuple[Client, Tamper]:
    proxy = Tamper(app, rewrite)
    client = Client(app=proxy, host="localhost", clock=fake_clock)
    client.login("alice", PASSWORD)
    proxy.active = True
    return client, proxy


def test_the_client_rejects_a_tampered_body(app, fake_clock):
    def rewrite(status, headers, body):
        return status, headers, body.replace(b'"alice"', b'"admin"')

    client, _ = tampered_client(app, fake_clock, rewrite)
    with pytest.raises(InvalidResponseSignature):
        client.call("echo", "hello")


def test_the_client_rejects_a_tampered_status(app, fake_clock):
    def rewrite(status, headers, body):
        return "201 Created", headers, body

    client, _ = tampered_client(app, fake_clock, rewrite)
    with pytest.raises(InvalidResponseSignature):
        client.call("echo", "hello")


def test_the_client_rejects_a_missing_server_authorization(app, fake_clock):
    def rewrite(status, headers, body):
        return status, [(k, v) for k, v in headers if k.lower() != "server-authorization"], body

    client, _ = tampered_client(app, fake_clock, rewrite)
    with pytest.raises(InvalidResponseSignature):
        client.call("echo", "hello")


def test_the_client_rejects_a_forged_unsigned_forbidden(app, fake_clock):
    def rewrite(status, headers, body):
        forged = json.dumps({"exc": "Forbidden", "err": ["no"]}).encode()
        return "403 Forbidden", [(k, v) for k, v in headers if k.lower() != "server-authorization"], forged

    client, _ = tampered_client(app, fake_clock, rewrite)
    with pytest.raises(InvalidResponseSignature):
        client.call("echo", "hello")


@pytest.mark.parametrize("status, body, request_id", [
    ("502 Bad Gateway", b"<h1>Bad Gateway</h1>", "proxy-7"),
    ("504 Gateway Timeout", b"", None),
    ("500 Internal Server Error", b'{"exc":"Error","err":["internal error"]}', "abc"),
    ("503 Service Unavailable", b"overloaded", None),
], ids=["proxy-502", "proxy-504-empty", "unsigned-500", "proxy-503-not-json"])
def test_the_client_reports_an_unsigned_5xx_as_a_server_failure_and_keeps_the_session(app, fake_clock, status, body,
                                                                                      request_id):
    def rewrite(_status, headers, _body):
        kept = [(k, v) for k, v in headers if k.lower() not in ("server-authorization", "x-request-id")]
        return status, kept + ([("X-Request-Id", request_id)] if request_id else []), body

    client, proxy = tampered_client(app, fake_clock, rewrite)
    with pytest.raises(ServerFailure) as failure:
        client.call("echo", "hello")
    assert (failure.value.status, failure.value.request_id) == (int(status[:3]), request_id)
    assert client.session is not None
    proxy.active = False
    assert client.call("echo", "again")["x"] == "again"


def test_an_unsigned_service_unavailable_with_its_body_is_still_service_unavailable(app, fake_clock):
    def rewrite(_status, headers, _body):
        kept = [(k, v) for k, v in headers if k.lower() != "server-authorization"]
        return "503 Service Unavailable", kept, b'{"exc":"ServiceUnavailable","err":["down"],"retry_after":5}'

    client, _ = tampered_client(app, fake_clock, rewrite)
    with pytest.raises(ServiceUnavailable) as unavailable:
        client.call("echo", "hello")
    assert unavailable.value.extra["retry_after"] == 5


def test_an_unsigned_answer_whose_status_is_not_its_excs_is_refused(app, fake_clock):
    def rewrite(_status, headers, _body):
        kept = [(k, v) for k, v in headers if k.lower() != "server-authorization"]
        return "200 OK", kept, b'{"exc":"Unauthorized","err":["no"]}'

    client, _ = tampered_client(app, fake_clock, rewrite)
    with pytest.raises(InvalidResponseSignature):
        client.call("echo", "hello")


def test_the_client_waits_the_bodys_retry_after_and_the_headers_only_without_one(app, fake_clock):
    bodies = iter([b'{"exc":"Abusive","err":["x"],"retry_after":600}', b'{"exc":"Abusive","err":["x"]}'])

    def rewrite(_status, headers, _body):
        kept = [(k, v) for k, v in headers if k.lower() not in ("server-authorization", "retry-after")]
        return "429 Too Many Requests", kept + [("Retry-After", "5")], next(bodies)

    client, _ = tampered_client(app, fake_clock, rewrite)
    with pytest.raises(Abusive) as first:
        client.call("echo", "hello")
    with pytest.raises(Abusive) as second:
        client.call("echo", "hello")
    assert (first.value.extra["retry_after"], second.value.extra["retry_after"]) == (600, 5)


def test_the_python_client_retries_a_stale_logout_once_and_ends_the_session(app, alice, fake_clock):
    alice.offset = -300.0  # five minutes late: its logout is stale once
    sid, key = alice.session.sid, alice.session.key
    assert alice.logout() is True
    assert alice.session is None and alice.offset == 0.0
    alice.session = Session(sid, key, 0, {})
    with pytest.raises(UnknownSession):
        alice.call("echo", "x")


def test_the_client_accepts_a_genuine_signed_error(app, alice):
    with pytest.raises(Forbidden):
        alice.call("secret")


# -- the logout's body ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [b"", b"  \r\n", b"{}", b" { } ", b'{"args": []}', b'{"kwargs": {}}',
                                  b'{"args": [], "kwargs": {}}'],
                         ids=["empty", "whitespace", "object", "object-spaced", "no-args", "no-kwargs", "neither"])
def test_a_logout_with_no_arguments_ends_the_session(app, alice, body):
    headers, nonce = sign(alice, "/auth/logout", body)
    result = send(app, "/auth/logout", body, headers)
    assert (result.status_code, result.json) == (200, {"result": True})
    assert is_signed(result, alice.session.key, nonce)
    headers, _ = sign(alice, "/api/echo", b'{"args": ["x"]}')
    assert_error(send(app, "/api/echo", b'{"args": ["x"]}', headers), 401, "UnknownSession")


@pytest.mark.parametrize("body", [b"[1]", b'{"x":1}', b"not json", b"[]", b"null", b'"bye"', b'{"args": [1]}',
                                  b'{"kwargs": {"all": true}}', b'{"args": {}}', b'{"a": 1, "a": 1}', b"{} {}"],
                         ids=["array", "other-key", "not-json", "empty-array", "null", "string", "an-arg",
                              "a-kwarg", "args-not-array", "repeated-key", "two-values"])
def test_a_logout_with_any_other_body_is_a_signed_invalid_call_and_ends_nothing(app, alice, body):
    headers, nonce = sign(alice, "/auth/logout", body)
    result = send(app, "/auth/logout", body, headers)
    assert_error(result, 400, "InvalidCall")
    assert is_signed(result, alice.session.key, nonce)
    assert alice.call("echo", "still here")["x"] == "still here"


def test_both_clients_logout_bodies_are_accepted(app, alice):
    """The Python client sends {}, bastion.js an empty body (its logout); both end the session."""
    assert alice.logout() is True
    source = (Path(__file__).resolve().parents[3] / "kernel" / "static" / "bastion.js").read_text("utf-8")
    assert 'signedPost("/auth/logout", "")' in source
