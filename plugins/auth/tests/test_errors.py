"""Every row of the docs/protocol.md section 2 table that the auth plugin answers, with its exact exc and status."""

from __future__ import annotations

import json

import pytest
from auth_helpers import PASSWORD, assert_error, cheap_hash, is_signed, login_body, send, sign

from kernel import StaleCall, b64url
from kernel.testing import new_nonce

SID = "c2Vzc2lvbi1pZC0x"
MAC = "D-GiMl3943t4dmzqWSRViRjYgmcO5xtAoV66f7KzwkI"
NONCE = "AAECAwQFBgcICQoLDA0ODw"
TS = "1767222000"


# -- 400 InvalidCall -----------------------------------------------------------

@pytest.mark.parametrize("body", [
    pytest.param(login_body(extra="x"), id="extra-key"),
    pytest.param(json.dumps({"username": 1, "password": PASSWORD}).encode(), id="username-not-string"),
    pytest.param(json.dumps({"username": "alice", "password": None}).encode(), id="password-null"),
    pytest.param(json.dumps({"username": "alice"}).encode(), id="password-missing"),
    pytest.param(json.dumps({"password": PASSWORD}).encode(), id="username-missing"),
    pytest.param(login_body(force="yes"), id="force-not-boolean"),
    pytest.param(login_body(force=None), id="force-null"),
    pytest.param(b'{"username": "alice", "password": ', id="not-json"),
    pytest.param(b'["alice", "pw"]', id="array"),
    pytest.param(b'"alice"', id="string"),
    pytest.param(b"\xff\xfe{}", id="not-utf8"),
    pytest.param(b'{"username": "bob", "username": "alice", "password": "x"}', id="duplicate-key"),
    pytest.param(b'{"username": "alice", "password": "x", "force": NaN}', id="nan"),
])
def test_login_with_a_bad_body_shape_is_invalid_call(app, body):
    assert_error(send(app, "/auth/login", body), 400, "InvalidCall")


def test_login_with_an_empty_body_is_invalid_call(app):
    assert_error(send(app, "/auth/login", b""), 400, "InvalidCall")


@pytest.mark.parametrize("path", ["/auth/login", "/api/echo", "/auth/logout"])
def test_a_query_string_is_invalid_call(app, path):
    assert_error(send(app, path, login_body(), query_string="next=/"), 400, "InvalidCall")


def test_a_valid_login_is_not_invalid_call(app):
    result = send(app, "/auth/login", login_body(force=False))
    assert result.status_code == 200
    assert set(result.json) == {"sid", "key", "expires", "server_time", "user", "limits"}
    assert result.json["user"] == {"username": "alice", "domain": "localhost"}
    assert len(b64url_decode(result.json["key"])) == 32


def b64url_decode(text):
    from kernel import b64url_decode as decode

    return decode(text)


def test_arguments_that_do_not_bind_are_invalid_call_and_signed(app, alice):
    body = b'{"args": [1]}'
    headers, nonce = sign(alice, "/api/echo", body)
    result = send(app, "/api/echo", body, headers)
    assert_error(result, 400, "InvalidCall")
    assert is_signed(result, alice.session.key, nonce)


# -- 400 InvalidHost -----------------------------------------------------------

def test_no_host_is_invalid_host(app):
    result = send(app, "/auth/login", login_body(), http_version="1.0")
    assert_error(result, 400, "InvalidHost")


def test_two_hosts_are_invalid_host(app):
    # WSGI servers join repeated headers with commas.
    result = send(app, "/auth/login", login_body(), extras={"HTTP_HOST": "localhost, localhost"})
    assert_error(result, 400, "InvalidHost")


def test_a_host_not_allowed_is_invalid_host(app):
    assert_error(send(app, "/auth/login", login_body(), host="evil.example.com"), 400, "InvalidHost")


def test_a_host_that_looks_like_localhost_is_invalid_host(app):
    assert_error(send(app, "/auth/login", login_body(), host="localhost.evil.com"), 400, "InvalidHost")


def test_the_domain_ignores_case_port_and_one_trailing_dot(app):
    result = send(app, "/auth/login", login_body(), extras={"HTTP_HOST": "LOCALHOST.:9000"})
    assert result.status_code == 200
    assert result.json["user"]["domain"] == "localhost"


# -- 401 Unauthorized ----------------------------------------------------------

def good(**override) -> str:
    params = {"sid": SID, "ts": TS, "nonce": NONCE, "mac": MAC, **override}
    return ", ".join(f'{k}="{v}"' for k, v in params.items())


MALFORMED = {
    "empty": "",
    "scheme-only": "Bastion-HMAC",
    "wrong-scheme": "Hawk " + good(),
    "bearer": "Bearer " + SID,
    "no-space-after-scheme": "Bastion-HMAC" + good(),
    "missing-mac": f'Bastion-HMAC sid="{SID}", ts="{TS}", nonce="{NONCE}"',
    "missing-sid": f'Bastion-HMAC ts="{TS}", nonce="{NONCE}", mac="{MAC}"',
    "duplicate-sid": f'Bastion-HMAC sid="{SID}", sid="{SID}", ts="{TS}", nonce="{NONCE}", mac="{MAC}"',
    "extra-param": "Bastion-HMAC " + good() + ', ext="x"',
    "uppercase-param-name": "Bastion-HMAC " + good().replace("sid=", "SID="),
    "unquoted": f"Bastion-HMAC sid={SID}, ts={TS}, nonce={NONCE}, mac={MAC}",
    "no-commas": "Bastion-HMAC " + good().replace(", ", " "),
    "trailing-comma": "Bastion-HMAC " + good() + ",",
    "leading-comma": "Bastion-HMAC , " + good(),
    "sid-too-short": "Bastion-HMAC " + good(sid="A" * 15),
    "sid-too-long": "Bastion-HMAC " + good(sid="A" * 129),
    "sid-not-b64url": "Bastion-HMAC " + good(sid="c2Vzc2lvbi1pZC0x+/="),
    "ts-empty": "Bastion-HMAC " + good(ts=""),
    "ts-too-long": "Bastion-HMAC " + good(ts="1" * 13),
    "ts-negative": "Bastion-HMAC " + good(ts="-1767222000"),
    "ts-decimal": "Bastion-HMAC " + good(ts="1767222000.5"),
    "nonce-too-short": "Bastion-HMAC " + good(nonce="A" * 15),
    "nonce-too-long": "Bastion-HMAC " + good(nonce="A" * 65),
    "mac-too-short": "Bastion-HMAC " + good(mac=MAC[:42]),
    "mac-too-long": "Bastion-HMAC " + good(mac=MAC + "A"),
    "mac-padded": "Bastion-HMAC " + good(mac=MAC[:42] + "="),
    "newline-in-ts": "Bastion-HMAC " + good(ts=TS + "\nPOST"),
    "newline-in-nonce": "Bastion-HMAC " + good(nonce=NONCE + "\n/api/boom"),
    "newline-between-params": "Bastion-HMAC " + good().replace(", ", ",\n"),
    "quote-in-value": "Bastion-HMAC " + good(nonce=NONCE + '"x'),
}


@pytest.mark.parametrize("header", list(MALFORMED.values()), ids=list(MALFORMED))
def test_a_malformed_authorization_header_is_unauthorized(app, header):
    result = send(app, "/api/echo", b'{"args": ["x"]}', {"Authorization": header})
    assert_error(result, 401, "Unauthorized")
    assert "Server-Authorization" not in result.headers


def test_no_authorization_header_is_unauthorized(app):
    assert_error(send(app, "/api/echo", b'{"args": ["x"]}'), 401, "Unauthorized")


def test_two_authorization_headers_are_unauthorized(app, alice):
    headers, _ = sign(alice, "/api/echo", b"")
    value = headers["Authorization"]
    result = send(app, "/api/echo", b"", [("Authorization", value), ("Authorization", value)])
    assert_error(result, 401, "Unauthorized")


def test_logout_without_authorization_is_unauthorized(app):
    assert_error(send(app, "/auth/logout", b"{}"), 401, "Unauthorized")


@pytest.mark.parametrize("shape", ["lowercase-scheme", "any-order", "no-spaces", "several-spaces"])
def test_well_formed_variants_of_the_header_are_accepted(app, alice, shape):
    headers, _ = sign(alice, "/api/echo", b'{"args": ["x"]}')
    value = headers["Authorization"]
    scheme, params = value.split(" ", 1)
    items = params.split(", ")
    value = {
        "lowercase-scheme": "bastion-hmac " + params,
        "any-order": scheme + " " + ", ".join(reversed(items)),
        "no-spaces": scheme + " " + ",".join(items),
        "several-spaces": scheme + "   " + "  ,  ".join(items),
    }[shape]
    result = send(app, "/api/echo", b'{"args": ["x"]}', {"Authorization": value})
    assert result.status_code == 200, result.json


# -- 401 InvalidCredential -----------------------------------------------------

def test_unknown_user_and_wrong_password_answer_the_same_body(app):
    unknown = send(app, "/auth/login", login_body("mallory"))
    wrong = send(app, "/auth/login", login_body("alice", "not the password"))
    assert_error(unknown, 401, "InvalidCredential")
    assert unknown.content == wrong.content
    assert unknown.status_code == wrong.status_code
    # Every answer has its own X-Request-Id; nothing else differs.
    assert {k: v for k, v in unknown.headers.items() if k != "x-request-id"} == \
        {k: v for k, v in wrong.headers.items() if k != "x-request-id"}


def test_a_user_of_another_domain_is_invalid_credential(auth_app):
    app = auth_app(users={"bob@beta.localhost": cheap_hash(PASSWORD)})
    assert_error(send(app, "/auth/login", login_body("bob"), host="alpha.localhost"), 401, "InvalidCredential")
    assert send(app, "/auth/login", login_body("bob"), host="beta.localhost").status_code == 200


def test_usernames_are_case_sensitive(app):
    assert_error(send(app, "/auth/login", login_body("Alice")), 401, "InvalidCredential")


def test_an_overlong_password_is_invalid_credential(app):
    assert_error(send(app, "/auth/login", login_body(password="x" * 5000)), 401, "InvalidCredential")


# -- 401 UnknownSession --------------------------------------------------------

def test_a_random_sid_is_unknown_session(app, alice):
    headers, _ = sign(alice, "/api/echo", b"", sid=b64url(b"r" * 24))
    assert_error(send(app, "/api/echo", b"", headers), 401, "UnknownSession")


def test_a_session_after_logout_is_unknown_session(app, alice):
    headers, _ = sign(alice, "/api/echo", b'{"args": ["x"]}')
    session = alice.session
    assert alice.logout() is True
    assert_error(send(app, "/api/echo", b'{"args": ["x"]}', headers), 401, "UnknownSession")
    alice.session = session
    headers, _ = sign(alice, "/auth/logout", b"{}")
    assert_error(send(app, "/auth/logout", b"{}", headers), 401, "UnknownSession")


def test_a_session_from_another_domain_is_unknown_session(auth_app, client_for):
    app = auth_app(users={"alice@alpha.localhost": cheap_hash(PASSWORD)})
    alice = client_for(target=app)
    alice.login("alice", PASSWORD)
    headers, _ = sign(alice, "/api/echo", b"", domain="alpha.localhost")
    assert_error(send(app, "/api/echo", b"", headers, host="alpha.localhost"), 401, "UnknownSession")


# -- 401 ExpiredSession --------------------------------------------------------

def test_an_idle_session_is_expired(app, alice, fake_clock):
    fake_clock.advance(1799)
    assert alice.call("echo", "still here")["x"] == "still here"
    fake_clock.advance(1800)
    headers, _ = sign(alice, "/api/echo", b"")
    assert_error(send(app, "/api/echo", b"", headers), 401, "ExpiredSession")


def test_a_session_past_its_absolute_lifetime_is_expired(app, alice, fake_clock):
    for _ in range(43):
        fake_clock.advance(1000)
        alice.call("echo", "busy")
    fake_clock.advance(200)  # 43,200 s after login: idle expiry would be 800 s away
    headers, _ = sign(alice, "/api/echo", b"")
    assert_error(send(app, "/api/echo", b"", headers), 401, "ExpiredSession")


def test_an_expired_session_is_forgotten_idle_timeout_later(app, alice, fake_clock):
    fake_clock.advance(1800 + 1799)
    headers, _ = sign(alice, "/api/echo", b"")
    assert_error(send(app, "/api/echo", b"", headers), 401, "ExpiredSession")
    fake_clock.advance(1)
    headers, _ = sign(alice, "/api/echo", b"")
    assert_error(send(app, "/api/echo", b"", headers), 401, "UnknownSession")


# -- 401 InvalidSignature ------------------------------------------------------

def test_a_tampered_body_is_invalid_signature(app, alice):
    headers, _ = sign(alice, "/api/echo", b'{"args": ["x"]}')
    assert_error(send(app, "/api/echo", b'{"args": ["y"]}', headers), 401, "InvalidSignature")


def test_a_tampered_path_is_invalid_signature(app, alice):
    headers, _ = sign(alice, "/api/echo", b"")
    assert_error(send(app, "/api/boom", b"", headers), 401, "InvalidSignature")


def test_a_signature_for_another_domain_is_invalid_signature(app, alice):
    headers, _ = sign(alice, "/api/echo", b"", domain="alpha.localhost")
    assert_error(send(app, "/api/echo", b"", headers), 401, "InvalidSignature")


def test_a_tampered_ts_is_invalid_signature(app, alice):
    headers, _ = sign(alice, "/api/echo", b"")
    value = headers["Authorization"]
    ts = value.split('ts="')[1].split('"')[0]
    headers = {"Authorization": value.replace(f'ts="{ts}"', f'ts="{int(ts) + 1}"')}
    assert_error(send(app, "/api/echo", b"", headers), 401, "InvalidSignature")


def test_a_tampered_nonce_is_invalid_signature(app, alice):
    headers, nonce = sign(alice, "/api/echo", b"")
    headers = {"Authorization": headers["Authorization"].replace(nonce, new_nonce())}
    assert_error(send(app, "/api/echo", b"", headers), 401, "InvalidSignature")


def test_another_sessions_key_is_invalid_signature(app, alice, client_for):
    other = client_for()
    other.login("alice", PASSWORD)
    headers, _ = sign(other, "/api/echo", b"", sid=alice.session.sid)
    assert_error(send(app, "/api/echo", b"", headers), 401, "InvalidSignature")


# -- 401 StaleCall -------------------------------------------------------------

@pytest.mark.parametrize("delta", [-61, 61, -100000])
def test_a_ts_outside_the_skew_is_a_signed_stale_call(app, alice, fake_clock, delta):
    ts = str(int(fake_clock()) + delta)
    headers, nonce = sign(alice, "/api/echo", b'{"args": ["x"]}', ts=ts)
    result = send(app, "/api/echo", b'{"args": ["x"]}', headers)
    body = assert_error(result, 401, "StaleCall")
    assert body["server_time"] == fake_clock()
    assert is_signed(result, alice.session.key, nonce)


@pytest.mark.parametrize("delta", [-60, 60])
def test_a_ts_at_the_edge_of_the_skew_passes(app, alice, fake_clock, delta):
    headers, _ = sign(alice, "/api/echo", b'{"args": ["x"]}', ts=str(int(fake_clock()) + delta))
    assert send(app, "/api/echo", b'{"args": ["x"]}', headers).status_code == 200


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.999])
@pytest.mark.parametrize("delta, status", [(-61, 401), (-60, 200), (60, 200), (61, 401)])
def test_the_skew_window_is_symmetric_around_the_servers_whole_second(app, alice, fake_clock, fraction, delta,
                                                                      status):
    """floor(now) - 60 and floor(now) + 60 pass, one second more either way is stale, whatever the fraction of
    the server's clock: a client's ts is its clock rounded down, and the server rounds its own down too."""
    fake_clock.set(1_767_222_100 + fraction)
    ts = str(1_767_222_100 + delta)
    headers, nonce = sign(alice, "/api/echo", b'{"args": ["x"]}', ts=ts)
    result = send(app, "/api/echo", b'{"args": ["x"]}', headers)
    assert result.status_code == status
    if status == 401:
        assert_error(result, 401, "StaleCall")
        assert is_signed(result, alice.session.key, nonce)


def test_the_client_retries_a_stale_call_once_with_a_corrected_offset(alice, fake_clock):
    alice.offset = -300.0  # its clock is five minutes late
    sent = []
    original = alice.send_signed

    def counting(path, body, ts=None, nonce=None):
        sent.append(path)
        return original(path, body, ts, nonce)

    alice.send_signed = counting
    assert alice.call("echo", "late")["x"] == "late"
    assert len(sent) == 2
    assert alice.offset == 0.0


def test_the_client_gives_up_after_one_retry(alice, fake_clock):
    original = alice.send_signed

    def always_stale(path, body, ts=None, nonce=None):
        return original(path, body, ts=str(int(fake_clock()) - 3600), nonce=nonce)

    alice.send_signed = always_stale
    with pytest.raises(StaleCall):
        alice.call("echo", "hopeless")


# -- 401 ReplayedCall ----------------------------------------------------------

def test_the_same_call_twice_is_a_signed_replayed_call(app, alice):
    headers, nonce = sign(alice, "/api/echo", b'{"args": ["x"]}')
    assert send(app, "/api/echo", b'{"args": ["x"]}', headers).status_code == 200
    result = send(app, "/api/echo", b'{"args": ["x"]}', headers)
    assert_error(result, 401, "ReplayedCall")
    assert is_signed(result, alice.session.key, nonce)


def test_a_nonce_is_remembered_as_long_as_its_ts_can_pass(app, alice, fake_clock):
    ts = str(int(fake_clock()) + 60)  # signed a minute ahead: passes until now = ts + 60
    headers, _ = sign(alice, "/api/echo", b"", ts=ts)
    send(app, "/api/echo", b"", headers)
    fake_clock.advance(120)
    assert_error(send(app, "/api/echo", b"", headers), 401, "ReplayedCall")
    fake_clock.advance(1)
    assert_error(send(app, "/api/echo", b"", headers), 401, "StaleCall")


def test_a_nonce_is_remembered_for_the_last_fraction_of_its_last_second(app, alice, fake_clock):
    fake_clock.set(1_767_222_100.999)
    body = b'{"args": ["x"]}'
    headers, _ = sign(alice, "/api/echo", body, ts=str(1_767_222_100 + 60))  # as far ahead as passes
    assert send(app, "/api/echo", body, headers).status_code == 200
    fake_clock.set(1_767_222_100 + 120.999)  # floor(now) is ts + 60: the ts still passes, so the nonce must count
    assert_error(send(app, "/api/echo", body, headers), 401, "ReplayedCall")
    fake_clock.set(1_767_222_100 + 121)
    assert_error(send(app, "/api/echo", body, headers), 401, "StaleCall")


def test_a_nonce_may_be_reused_by_another_session(app, alice, client_for):
    other = client_for()
    other.login("alice", PASSWORD)
    nonce = new_nonce()
    h1, _ = sign(alice, "/api/echo", b'{"args": ["x"]}', nonce=nonce)
    h2, _ = sign(other, "/api/echo", b'{"args": ["x"]}', nonce=nonce)
    assert send(app, "/api/echo", b'{"args": ["x"]}', h1).status_code == 200
    assert send(app, "/api/echo", b'{"args": ["x"]}', h2).status_code == 200


# -- 403 Forbidden -------------------------------------------------------------

def test_a_denied_service_is_a_signed_forbidden(app, alice):
    headers, nonce = sign(alice, "/api/secret_stuff", b"")
    result = send(app, "/api/secret_stuff", b"", headers)
    assert_error(result, 403, "Forbidden")
    assert is_signed(result, alice.session.key, nonce)


# -- 403 RequireSSL ------------------------------------------------------------

PRODUCTION = {"development": False, "allowed_hosts": "localhost"}


@pytest.mark.parametrize("path", ["/auth/login", "/auth/logout", "/api/echo"])
def test_plain_http_in_production_is_require_ssl(auth_app, path):
    app = auth_app(bastion=PRODUCTION)
    result = send(app, path, login_body())
    assert_error(result, 403, "RequireSSL")
    assert result.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


def test_https_in_production_passes_and_carries_hsts(auth_app):
    app = auth_app(bastion=PRODUCTION)
    result = send(app, "/auth/login", login_body(), protocol="https")
    assert result.status_code == 200
    assert result.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


def test_https_from_a_trusted_proxy_passes(auth_app):
    app = auth_app(bastion={**PRODUCTION, "trusted_proxies": "10.0.0.1"})
    result = send(app, "/auth/login", login_body(), {"X-Forwarded-Proto": "https"}, remote_addr="10.0.0.1")
    assert result.status_code == 200


def test_forwarded_https_from_an_untrusted_peer_is_require_ssl(auth_app):
    app = auth_app(bastion={**PRODUCTION, "trusted_proxies": "10.0.0.1"})
    result = send(app, "/auth/login", login_body(), {"X-Forwarded-Proto": "https"}, remote_addr="10.0.0.2")
    assert_error(result, 403, "RequireSSL")


def test_development_mode_sends_no_hsts(app):
    assert "Strict-Transport-Security" not in send(app, "/auth/login", login_body()).headers


# -- 409 MaxActiveSessions -----------------------------------------------------

def test_a_login_beyond_the_maximum_is_max_active_sessions(auth_app, client_for):
    app = auth_app(auth={"max_active_sessions": 1})
    first, second = client_for(target=app), client_for(target=app)
    first.login("alice", PASSWORD)
    assert_error(send(app, "/auth/login", login_body()), 409, "MaxActiveSessions")
    second.login("alice", PASSWORD, force=True)
    assert second.call("echo", "x")["user"] == "alice"
    headers, _ = sign(first, "/api/echo", b"")
    assert_error(send(app, "/api/echo", b"", headers), 401, "UnknownSession")


def test_ended_and_expired_sessions_do_not_count(auth_app, client_for, fake_clock):
    app = auth_app(auth={"max_active_sessions": 1})
    first = client_for(target=app)
    first.login("alice", PASSWORD)
    first.logout()
    first.login("alice", PASSWORD)
    fake_clock.advance(1800)
    client_for(target=app).login("alice", PASSWORD)


def test_sessions_are_unlimited_by_default(app, client_for):
    clients = [client_for() for _ in range(5)]
    for c in clients:
        c.login("alice", PASSWORD)
    assert all(c.call("echo", "x")["user"] == "alice" for c in clients)


# -- 429 Abusive ---------------------------------------------------------------

def test_a_banned_origin_is_abusive_with_retry_after(app):
    for _ in range(10):
        send(app, "/api/echo", b"")
    result = send(app, "/api/echo", b"")
    body = assert_error(result, 429, "Abusive")
    assert body["retry_after"] == 600
    assert result.headers["Retry-After"] == "600"


# -- 429 AccountLocked ---------------------------------------------------------

def fail_login(app, times: int, origin: str = "127.0.0.1", username: str = "alice"):
    return [send(app, "/auth/login", login_body(username, "wrong password"), remote_addr=origin)
            for _ in range(times)]


def test_the_fifth_failure_locks_the_account_and_says_so_and_the_sixth_attempt_is_account_locked(app):
    results = fail_login(app, 5)
    assert [r.json["exc"] for r in results] == ["InvalidCredential"] * 4 + ["AccountLocked"]
    locking = assert_error(results[-1], 429, "AccountLocked")
    assert locking["err"] == ["invalid username or password", "too many failed logins for this account; try again "
                              "later"]
    assert (locking["retry_after"], results[-1].headers["Retry-After"]) == (300, "300")
    result = send(app, "/auth/login", login_body(), remote_addr="127.0.0.1")
    body = assert_error(result, 429, "AccountLocked")
    assert body["retry_after"] == 300
    assert result.headers["Retry-After"] == "300"


def test_a_locked_account_is_locked_from_every_origin(app):
    fail_login(app, 5, origin="127.0.0.1")
    assert_error(send(app, "/auth/login", login_body(), remote_addr="10.9.8.7"), 429, "AccountLocked")


def test_the_lock_ends_after_account_lock_seconds(app, fake_clock):
    fail_login(app, 5)
    fake_clock.advance(299)
    body = assert_error(send(app, "/auth/login", login_body(), remote_addr="10.0.0.2"), 429, "AccountLocked")
    assert body["retry_after"] == 1
    fake_clock.advance(1)
    assert send(app, "/auth/login", login_body(), remote_addr="10.0.0.2").status_code == 200


def test_attempts_during_a_lock_do_not_extend_it(app, fake_clock):
    fail_login(app, 5)
    for origin in ("10.0.0.3", "10.0.0.4", "10.0.0.5"):
        fake_clock.advance(60)
        send(app, "/auth/login", login_body("alice", "wrong"), remote_addr=origin)
    fake_clock.advance(120)
    assert send(app, "/auth/login", login_body(), remote_addr="10.0.0.6").status_code == 200


def test_a_success_resets_the_failure_count(app):
    fail_login(app, 4)
    assert send(app, "/auth/login", login_body(), remote_addr="10.0.0.2").status_code == 200
    fail_login(app, 4, origin="10.0.0.3")
    assert send(app, "/auth/login", login_body(), remote_addr="10.0.0.4").status_code == 200


def test_failures_age_out_of_the_account_window(app, fake_clock):
    fail_login(app, 4)
    fake_clock.advance(900)
    fail_login(app, 1, origin="10.0.0.2")
    assert send(app, "/auth/login", login_body(), remote_addr="10.0.0.3").status_code == 200


def test_after_a_lock_the_failure_count_restarts(app, fake_clock):
    fail_login(app, 5, origin="10.0.0.2")
    fake_clock.advance(300)
    fail_login(app, 4, origin="10.0.0.3")
    assert send(app, "/auth/login", login_body(), remote_addr="10.0.0.4").status_code == 200


def test_an_unknown_user_locks_the_same_way(app):
    results = fail_login(app, 6, origin="10.0.0.2", username="nobody")
    assert [r.json["exc"] for r in results] == ["InvalidCredential"] * 4 + ["AccountLocked"] * 2
    assert [r.json.get("retry_after") for r in results[4:]] == [300, 300]  # a lock tells nothing about the user


def test_account_max_failures_zero_disables_locks(auth_app):
    app = auth_app(auth={"account_max_failures": 0})
    fail_login(app, 7, origin="10.0.0.2")
    assert send(app, "/auth/login", login_body(), remote_addr="10.0.0.3").status_code == 200


# -- every 401 carries WWW-Authenticate -----------------------------------------------------------------------------

def test_every_401_of_the_auth_plugin_carries_the_challenge(app, alice, fake_clock):
    unauthorized = send(app, "/api/echo", b"")
    invalid_credential = send(app, "/auth/login", login_body(password="wrong password"))
    headers, _ = sign(alice, "/api/echo", b"", ts=str(int(fake_clock()) - 3600))
    stale = send(app, "/api/echo", b"", headers)
    headers, _ = sign(alice, "/api/echo", b"", sid="c2Vzc2lvbi1pZC0xMjM0")
    unknown = send(app, "/api/echo", b"", headers)
    answers = {"Unauthorized": unauthorized, "InvalidCredential": invalid_credential, "StaleCall": stale,
               "UnknownSession": unknown}
    assert {name: (r.status_code, r.json["exc"]) for name, r in answers.items()} == {
        name: (401, name) for name in answers}
    assert {r.headers.get("WWW-Authenticate") for r in answers.values()} == {"Bastion-HMAC"}
    assert "WWW-Authenticate" not in send(app, "/api/whoami", b"", sign(alice, "/api/whoami", b"")[0]).headers


# -- the trailing dot of a host ---------------------------------------------------------------------------------------

def test_a_trailing_dot_names_the_same_tenant_and_is_not_signed(app, client_for):
    dotted = client_for(host="localhost.")
    assert dotted.domain == "localhost"
    assert dotted.login("alice", PASSWORD) == {"username": "alice", "domain": "localhost"}
    body = b'{"args": ["x"]}'
    # The session made through "localhost." works through "localhost", and the other way round.
    headers, _ = sign(dotted, "/api/echo", body)
    assert send(app, "/api/echo", body, headers, host="localhost").json["result"]["domain"] == "localhost"
    headers, _ = sign(dotted, "/api/echo", body)
    assert send(app, "/api/echo", body, headers, host="localhost.:8000").status_code == 200
    # The MAC covers the domain without the dot.
    headers, _ = sign(dotted, "/api/echo", body, domain="localhost.")
    assert_error(send(app, "/api/echo", body, headers, host="localhost."), 401, "InvalidSignature")


@pytest.mark.parametrize("host", ["localhost..", ".localhost", "local..host", ".", "[::1]."])
def test_more_than_one_trailing_dot_or_a_dot_elsewhere_is_invalid_host(app, host):
    assert_error(send(app, "/auth/login", login_body(), host=host), 400, "InvalidHost")
