"""Sessions: login answer, logout, sliding idle expiry capped by the absolute lifetime, races with logout."""

from __future__ import annotations

import pytest
from auth_helpers import ALICE_HASH, PASSWORD, assert_error, auth_of, login_body, send, sign

from kernel import UnknownSession, b64url_decode


def test_login_answers_a_fresh_session(app, fake_clock):
    first = send(app, "/auth/login", login_body()).json
    second = send(app, "/auth/login", login_body()).json
    assert first["sid"] != second["sid"] and first["key"] != second["key"]
    assert 16 <= len(first["sid"]) <= 128
    assert len(b64url_decode(first["key"])) == 32
    assert first["expires"] == int(fake_clock()) + 1800
    assert first["server_time"] == fake_clock()


def test_the_session_key_is_not_stored_under_its_sid_alone(app):
    # the key travels once; nothing in the login answer but the key itself lets anyone sign
    body = send(app, "/auth/login", login_body()).json
    assert body["key"] not in body["sid"]


def test_logout_ends_the_session(app, alice):
    session = alice.session
    assert alice.logout() is True
    alice.session = session
    with pytest.raises(UnknownSession):
        alice.call("echo", "x")
    assert alice.session is None


def test_logout_of_one_session_leaves_the_others(app, alice, client_for):
    other = client_for()
    other.login("alice", PASSWORD)
    alice.logout()
    assert other.call("echo", "x")["user"] == "alice"


def test_calls_slide_the_idle_expiry(app, alice, fake_clock):
    for _ in range(10):
        fake_clock.advance(1700)
        assert alice.call("echo", "x")["x"] == "x"
    assert fake_clock() - 1_767_222_000 == 17000  # far past one idle timeout


def test_refused_calls_do_not_slide_the_idle_expiry(app, alice, fake_clock):
    fake_clock.advance(1000)
    headers, _ = sign(alice, "/api/echo", b"", ts=str(int(fake_clock()) - 3600))
    assert_error(send(app, "/api/echo", b"", headers), 401, "StaleCall")
    fake_clock.advance(800)
    headers, _ = sign(alice, "/api/echo", b"")
    assert_error(send(app, "/api/echo", b"", headers), 401, "ExpiredSession")


def test_sliding_never_passes_the_absolute_lifetime(auth_app, client_for, fake_clock):
    app = auth_app(auth={"idle_timeout": 600, "absolute_timeout": 1000})
    alice = client_for(target=app)
    alice.login("alice", PASSWORD)
    fake_clock.advance(500)
    alice.call("echo", "x")  # slides to 1100, capped at 1000
    fake_clock.advance(450)
    alice.call("echo", "x")
    fake_clock.advance(49)
    alice.call("echo", "x")
    fake_clock.advance(1)
    headers, _ = sign(alice, "/api/echo", b"")
    assert_error(send(app, "/api/echo", b"", headers), 401, "ExpiredSession")


def test_a_logout_racing_a_call_is_not_undone_by_the_call(app, alice, fake_clock):
    """A call loads the session, a concurrent logout ends it, then the call slides the expiry."""
    sessions = auth_of(app).sessions
    loaded = sessions.load("localhost", alice.session.sid, fake_clock())
    sessions.end("localhost", loaded.sid, loaded.username)
    fake_clock.advance(10)  # far enough for the slide to be written
    sessions.touch(loaded, fake_clock())
    with pytest.raises(UnknownSession):
        sessions.load("localhost", alice.session.sid, fake_clock())


def test_ending_all_sessions_races_the_same_way(app, alice, fake_clock):
    sessions = auth_of(app).sessions
    loaded = sessions.load("localhost", alice.session.sid, fake_clock())
    assert sessions.end_all("localhost", "alice") == 1
    fake_clock.advance(10)
    sessions.touch(loaded, fake_clock())
    with pytest.raises(UnknownSession):
        alice.call("echo", "x")


def test_a_slide_is_written_only_when_it_moves_the_expiry_a_second(app, alice, fake_clock):
    state = auth_of(app).state
    writes = []
    original = state.replace

    def counting(*args):
        writes.append(args[1])
        return original(*args)

    state.replace = counting
    try:
        alice.call("echo", "x")
        # The session's first call stores the roles it read (with the domain's roles epoch): its one write.
        assert writes == [f"session:{alice.session.sid}"]
        fake_clock.advance(0.5)
        alice.call("echo", "x")
        alice.call("echo", "x")
        assert len(writes) == 1  # within a second of the first call: nothing more to write
        fake_clock.advance(0.6)
        alice.call("echo", "x")
        assert writes == [f"session:{alice.session.sid}"] * 2
    finally:
        state.replace = original
    stored = state.get("localhost", f"session:{alice.session.sid}")
    assert stored["i"] == fake_clock() + 1800


def test_a_signed_call_reads_ban_session_and_roles_epoch_in_one_round_trip(app, alice):
    """One read (the ban, the session, the domain's roles epoch) and the nonce: a session's later calls write
    nothing else (its first call stored its roles; a slide comes at most once a second)."""
    state = auth_of(app).state
    alice.call("echo", "x")
    calls = []
    for name in ("get", "get_many", "add", "replace", "set"):
        original = getattr(state, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        setattr(state, name, spy)
    try:
        alice.call("echo", "x")
    finally:
        for name in ("get", "get_many", "add", "replace", "set"):
            delattr(state, name)
    assert calls == ["get_many", "add"]


def test_force_without_a_maximum_ends_the_other_sessions(app, alice, client_for):
    other = client_for()
    other.login("alice", PASSWORD, force=True)
    with pytest.raises(UnknownSession):
        alice.call("echo", "x")
    assert other.call("echo", "x")["user"] == "alice"


def test_the_caller_is_known_to_services(alice):
    assert alice.call("echo", "x") == {"x": "x", "n": 1, "user": "alice", "domain": "localhost"}


def test_api_responses_carry_the_protocol_headers(app, alice):
    headers, _ = sign(alice, "/api/echo", b'{"args": ["x"]}')
    result = send(app, "/api/echo", b'{"args": ["x"]}', headers)
    assert result.headers["Cache-Control"] == "no-store"
    assert result.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert result.headers["X-Content-Type-Options"] == "nosniff"
    assert result.headers["X-Frame-Options"] == "DENY"
    assert result.headers["Referrer-Policy"] == "no-referrer"
    login = send(app, "/auth/login", login_body())
    assert login.headers["Cache-Control"] == "no-store"


# -- what a client is told of its session and the server's limits -------------------------------------------------

def test_the_login_answer_tells_the_limits_a_client_meets(auth_app, client_for):
    app = auth_app(auth={"skew": 30, "idle_timeout": 600, "absolute_timeout": 7200}, bastion={"max_body": "64KiB"})
    answer = send(app, "/auth/login", login_body()).json
    assert answer["limits"] == {"skew": 30, "idle_timeout": 600, "absolute_timeout": 7200, "max_body": 65536}
    assert answer["expires"] == int(answer["server_time"]) + 600


def test_the_default_limits_are_the_protocols(app):
    answer = send(app, "/auth/login", login_body()).json
    assert answer["limits"] == {"skew": 60, "idle_timeout": 1800, "absolute_timeout": 43200, "max_body": 1048576}


def test_every_answer_of_a_call_that_slid_the_session_says_when_it_now_ends(app, alice, fake_clock):
    fake_clock.advance(100.5)
    headers, nonce = sign(alice, "/api/echo", b'{"args": ["x"]}')
    result = send(app, "/api/echo", b'{"args": ["x"]}', headers)
    assert result.headers["Session-Expires"] == str(int(fake_clock()) + 1800)
    forbidden = send(app, "/api/secret", b"", sign(alice, "/api/secret", b"")[0])  # refused after step 10: slid too
    assert forbidden.status_code == 403 and forbidden.headers["Session-Expires"] == str(int(fake_clock()) + 1800)


def test_the_session_expires_header_stops_at_the_absolute_lifetime(auth_app, client_for, fake_clock):
    app = auth_app(auth={"idle_timeout": 600, "absolute_timeout": 1000})
    client = client_for(target=app)
    client.login("alice", PASSWORD)
    login_time = fake_clock()
    fake_clock.advance(500)
    client.call("echo", "x")
    assert client.session.expires == int(login_time) + 1000  # not 500 + 600: the absolute lifetime comes first


def test_answers_that_slid_nothing_say_nothing_of_the_expiry(app, alice, fake_clock):
    stale_headers, _ = sign(alice, "/api/echo", b"", ts=str(int(fake_clock()) - 3600))
    assert "Session-Expires" not in send(app, "/api/echo", b"", stale_headers).headers
    headers, _ = sign(alice, "/api/echo", b'{"args": ["x"]}')
    send(app, "/api/echo", b'{"args": ["x"]}', headers)
    replayed = send(app, "/api/echo", b'{"args": ["x"]}', headers)
    assert replayed.json["exc"] == "ReplayedCall" and "Session-Expires" not in replayed.headers
    logout = send(app, "/auth/logout", b"", sign(alice, "/auth/logout", b"")[0])
    assert logout.status_code == 200 and "Session-Expires" not in logout.headers


def test_the_python_client_keeps_the_expiry_the_server_tells(alice, fake_clock):
    fake_clock.advance(900)
    alice.call("echo", "x")
    assert alice.session.expires == int(fake_clock()) + 1800


def test_the_python_client_keeps_the_limits_of_its_login(alice):
    assert alice.session.limits == {"skew": 60, "idle_timeout": 1800, "absolute_timeout": 43200, "max_body": 1048576}


def test_the_limits_of_the_login_answer_are_its_tenants(auth_app):
    app = auth_app(users={"alice@alpha.localhost": ALICE_HASH}, **{"auth:alpha.localhost": {"skew": 30,
                                                                                             "idle_timeout": 60}})
    alpha = send(app, "/auth/login", login_body(), host="alpha.localhost").json["limits"]
    local = send(app, "/auth/login", login_body()).json["limits"]
    assert (alpha["skew"], alpha["idle_timeout"], local["skew"], local["idle_timeout"]) == (30, 60, 60, 1800)
