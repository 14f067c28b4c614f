"""The order of checks of docs/protocol.md section 4, where two failures meet."""

from __future__ import annotations

from auth_helpers import PASSWORD, assert_error, is_signed, login_body, send, sign

from kernel import b64url


def ban(app, origin: str = "127.0.0.1", host: str = "localhost", **kwargs) -> None:
    for _ in range(10):
        send(app, "/api/echo", b"", host=host, remote_addr=origin, **kwargs)
    assert_error(send(app, "/api/echo", b"", host=host, remote_addr=origin, **kwargs), 429, "Abusive")


def test_a_bad_host_comes_before_everything(auth_app):
    app = auth_app(bastion={"development": False, "allowed_hosts": "localhost"})
    ban(app, protocol="https")
    # plain HTTP, banned origin, oversized non-JSON body with a query string and no header
    result = send(app, "/api/echo", b"x" * 2_000_000, {"Content-Type": "text/plain"}, host="evil.example",
                  query_string="a=1")
    assert_error(result, 400, "InvalidHost")


def test_require_ssl_comes_before_the_ban(auth_app):
    app = auth_app(bastion={"development": False, "allowed_hosts": "localhost"})
    ban(app, protocol="https")
    assert_error(send(app, "/auth/login", login_body()), 403, "RequireSSL")


def test_a_banned_origin_is_abusive_before_anything_about_its_request(app):
    ban(app)
    assert_error(send(app, "/auth/login", login_body()), 429, "Abusive")
    assert_error(send(app, "/api/echo", b"x" * 2_000_000), 429, "Abusive")
    assert_error(send(app, "/api/echo", b"x", {"Content-Type": "text/plain"}), 429, "Abusive")
    assert_error(send(app, "/api/echo", b"", query_string="a=1"), 429, "Abusive")


def test_payload_too_large_comes_before_the_media_type_and_the_header(auth_app):
    app = auth_app(bastion={"max_body": 100})
    assert_error(send(app, "/api/echo", b"x" * 101, {"Content-Type": "text/plain"}), 413, "PayloadTooLarge")
    assert_error(send(app, "/auth/login", b"x" * 101), 413, "PayloadTooLarge")
    assert send(app, "/auth/login", login_body() + b" " * (100 - len(login_body()))).status_code == 200


def test_unsupported_media_type_comes_before_the_header(app):
    assert_error(send(app, "/api/echo", b'{"args": ["x"]}', {"Content-Type": "text/plain"}), 415,
                 "UnsupportedMediaType")
    assert_error(send(app, "/auth/login", login_body(), json_type=False), 415, "UnsupportedMediaType")


def test_json_with_a_charset_is_accepted(app):
    result = send(app, "/auth/login", login_body(), {"Content-Type": "application/json; charset=utf-8"})
    assert result.status_code == 200


def test_a_query_string_comes_before_the_header(app):
    assert_error(send(app, "/api/echo", b"", query_string="a=1"), 400, "InvalidCall")


def test_unknown_session_comes_before_the_signature(app, alice):
    headers, _ = sign(alice, "/api/echo", b"", sid=b64url(b"u" * 24))
    assert_error(send(app, "/api/echo", b"", headers), 401, "UnknownSession")


def test_expired_session_comes_before_the_signature(app, alice, fake_clock):
    fake_clock.advance(1800)
    headers, _ = sign(alice, "/api/echo", b"", domain="wrong.localhost")
    assert_error(send(app, "/api/echo", b"", headers), 401, "ExpiredSession")


def test_invalid_signature_comes_before_stale_call(app, alice, fake_clock):
    headers, _ = sign(alice, "/api/echo", b"", ts=str(int(fake_clock()) - 3600))
    assert_error(send(app, "/api/echo", b"x", headers), 401, "InvalidSignature")


def test_stale_call_comes_before_replayed_call(app, alice, fake_clock):
    headers, _ = sign(alice, "/api/echo", b'{"args": ["x"]}')
    send(app, "/api/echo", b'{"args": ["x"]}', headers)
    fake_clock.advance(61)
    assert_error(send(app, "/api/echo", b'{"args": ["x"]}', headers), 401, "StaleCall")


def test_a_stale_call_does_not_use_up_its_nonce(app, alice, fake_clock):
    ts = str(int(fake_clock()))
    headers, _ = sign(alice, "/api/echo", b'{"args": ["x"]}', ts=ts)
    fake_clock.advance(-61)  # the server's clock was behind, then catches up
    assert_error(send(app, "/api/echo", b'{"args": ["x"]}', headers), 401, "StaleCall")
    fake_clock.advance(61)
    assert send(app, "/api/echo", b'{"args": ["x"]}', headers).status_code == 200


def test_replayed_call_comes_before_forbidden(app, alice):
    headers, _ = sign(alice, "/api/secret", b"")
    assert_error(send(app, "/api/secret", b"", headers), 403, "Forbidden")
    assert_error(send(app, "/api/secret", b"", headers), 401, "ReplayedCall")


def test_forbidden_comes_before_not_found(app, alice):
    headers, _ = sign(alice, "/api/secret_no_such_service", b"")
    assert_error(send(app, "/api/secret_no_such_service", b"", headers), 403, "Forbidden")


def test_not_found_comes_before_a_bad_body(app, alice):
    body = b'{"bad": 1}'
    headers, nonce = sign(alice, "/api/nope", body)
    result = send(app, "/api/nope", body, headers)
    assert_error(result, 404, "NotFound")
    assert is_signed(result, alice.session.key, nonce)


def test_a_bad_body_shape_of_a_signed_call_is_invalid_call(app, alice):
    for body in (b'{"bad": 1}', b"[]", b'{"args": {}}', b'{"kwargs": []}', b"{", b'{"args": [], "args": []}'):
        headers, nonce = sign(alice, "/api/echo", body)
        result = send(app, "/api/echo", body, headers)
        assert_error(result, 400, "InvalidCall")
        assert is_signed(result, alice.session.key, nonce)


def test_a_login_password_is_never_checked_for_a_banned_origin(app):
    ban(app)
    assert_error(send(app, "/auth/login", login_body("alice", PASSWORD)), 429, "Abusive")
