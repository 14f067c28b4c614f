"""Abuse bans per (domain, origin): the weights of docs/protocol.md section 6, the threshold, the sliding window."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from auth_helpers import PASSWORD, assert_error, login_body, send, sign

from kernel import b64url

ORIGIN = "192.0.2.10"


def no_header(app, alice, fake_clock):
    send(app, "/api/echo", b"", remote_addr=ORIGIN)


def malformed_header(app, alice, fake_clock):
    send(app, "/api/echo", b"", {"Authorization": "Bastion-HMAC x"}, remote_addr=ORIGIN)


def unknown_session(app, alice, fake_clock):
    headers, _ = sign(alice, "/api/echo", b"", sid=b64url(b"z" * 24))
    send(app, "/api/echo", b"", headers, remote_addr=ORIGIN)




def failed_login(app, alice, fake_clock):
    send(app, "/auth/login", login_body(b64url(fake_clock().hex().encode())[:20], "wrong"), remote_addr=ORIGIN)


def stale_call(app, alice, fake_clock):
    headers, _ = sign(alice, "/api/echo", b"", ts=str(int(fake_clock()) - 3600))
    send(app, "/api/echo", b"", headers, remote_addr=ORIGIN)


def invalid_signature(app, alice, fake_clock):
    headers, _ = sign(alice, "/api/echo", b"", domain="elsewhere.localhost")
    send(app, "/api/echo", b"", headers, remote_addr=ORIGIN)


def replayed_call(app, alice, fake_clock):
    if not hasattr(alice, "replay"):
        alice.replay, _ = sign(alice, "/api/whoami", b"")
        send(app, "/api/whoami", b"", alice.replay, remote_addr="198.51.100.1")
    send(app, "/api/whoami", b"", alice.replay, remote_addr=ORIGIN)


def forbidden(app, alice, fake_clock):
    headers, _ = sign(alice, "/api/secret", b"")
    send(app, "/api/secret", b"", headers, remote_addr=ORIGIN)


EVENTS = {
    "no-authorization": (no_header, 1),
    "malformed-authorization": (malformed_header, 1),
    "unknown-session": (unknown_session, 1),
    "failed-login": (failed_login, 1),
    "stale-call": (stale_call, 1),
    "invalid-signature": (invalid_signature, 3),
    "replayed-call": (replayed_call, 3),
}


def banned(app, origin: str = ORIGIN, host: str = "localhost") -> bool:
    result = send(app, "/api/whoami", b"", host=host, remote_addr=origin)
    if result.status_code == 429:
        assert result.json["exc"] == "Abusive"
        return True
    return False


@pytest.mark.parametrize("event, weight", list(EVENTS.values()), ids=list(EVENTS))
def test_each_refusal_weighs_as_the_table_says(app, alice, fake_clock, event, weight):
    needed = -(-10 // weight)  # the smallest count whose weight reaches 10
    for _ in range(needed - 1):
        event(app, alice, fake_clock)
        fake_clock.advance(1)
    # (probing with an unsigned call would add weight 1 itself: look at the stored ban instead)
    assert not is_banned(app)
    event(app, alice, fake_clock)
    assert is_banned(app)
    assert banned(app)


def is_banned(app) -> bool:
    from auth_helpers import auth_of

    auth = auth_of(app)
    until = auth.state.get("localhost", f"ban:{ORIGIN}")
    return until is not None and until > auth.clock()


def test_an_expired_session_weighs_nothing(app, alice, fake_clock):
    """The sid names a session this server made: a tab left open too long, not a guess."""
    fake_clock.advance(1800)
    for _ in range(12):
        headers, _ = sign(alice, "/api/echo", b"")
        assert_error(send(app, "/api/echo", b"", headers, remote_addr=ORIGIN), 401, "ExpiredSession")
    assert not is_banned(app)


def test_a_forbidden_call_weighs_nothing(app, alice, fake_clock):
    """A call that passed step 10 proved its key: what its user may not do is no attack on the origin."""
    for _ in range(12):
        headers, _ = sign(alice, "/api/secret", b"")
        assert_error(send(app, "/api/secret", b"", headers, remote_addr=ORIGIN), 403, "Forbidden")
    assert not is_banned(app)
    assert alice.call("echo", "still fine")["x"] == "still fine"


def test_a_login_attempt_on_a_locked_account_weighs_one(app):
    for _ in range(5):
        send(app, "/auth/login", login_body("alice", "wrong"), remote_addr="198.51.100.7")
    for _ in range(9):
        assert_error(send(app, "/auth/login", login_body(), remote_addr=ORIGIN), 429, "AccountLocked")
    assert not is_banned(app)
    send(app, "/auth/login", login_body(), remote_addr=ORIGIN)
    assert is_banned(app)


def test_refusals_outside_the_table_weigh_nothing(app, alice):
    for _ in range(12):
        send(app, "/auth/login", b"not json", remote_addr=ORIGIN)  # InvalidCall: not weighed
        send(app, "/api/echo", b"", query_string="x=1", remote_addr=ORIGIN)
        send(app, "/api/echo", b"x", {"Content-Type": "text/plain"}, remote_addr=ORIGIN)
        send(app, "/auth/login", login_body(), host="evil.example", remote_addr=ORIGIN)
        headers, _ = sign(alice, "/api/no_such_service", b"")
        send(app, "/api/no_such_service", b"", headers, remote_addr=ORIGIN)
        headers, _ = sign(alice, "/api/boom", b"")
        send(app, "/api/boom", b"", headers, remote_addr=ORIGIN)
        forbidden(app, alice, None)
    assert not is_banned(app)
    assert send(app, "/auth/login", login_body(), remote_addr=ORIGIN).status_code == 200


def test_the_ban_starts_at_exactly_weight_ten(app, alice, fake_clock):
    for _ in range(3):
        invalid_signature(app, alice, fake_clock)
    assert not is_banned(app)  # 9
    assert alice.call("echo", "fine")["x"] == "fine"
    no_header(app, alice, fake_clock)  # 10
    assert is_banned(app)


def test_a_correct_login_is_refused_while_banned(app):
    for _ in range(10):
        no_header(app, None, None)
    result = send(app, "/auth/login", login_body(), remote_addr=ORIGIN)
    body = assert_error(result, 429, "Abusive")
    assert body["retry_after"] == 600 and result.headers["Retry-After"] == "600"


def test_other_origins_and_other_domains_are_unaffected(app, client_for):
    for _ in range(10):
        no_header(app, None, None)
    assert banned(app)
    assert send(app, "/auth/login", login_body(), remote_addr="192.0.2.11").status_code == 200
    assert not banned(app, host="alpha.localhost")
    assert_error(send(app, "/api/echo", b"", host="alpha.localhost", remote_addr=ORIGIN), 401, "Unauthorized")


def test_the_ban_lasts_until_enough_weight_ages_out(app, fake_clock):
    for _ in range(5):
        no_header(app, None, None)
    fake_clock.advance(100)
    for _ in range(5):
        no_header(app, None, None)
    # the first five leave the window 600 s after they came, 500 s from now: weight 5 < 10
    result = send(app, "/auth/login", login_body(), remote_addr=ORIGIN)
    assert assert_error(result, 429, "Abusive")["retry_after"] == 500
    fake_clock.advance(499)
    assert assert_error(send(app, "/auth/login", login_body(), remote_addr=ORIGIN), 429, "Abusive")[
        "retry_after"] == 1
    fake_clock.advance(1)
    assert send(app, "/auth/login", login_body(), remote_addr=ORIGIN).status_code == 200
    # the window slides: five more on top of the five still inside it ban again, until those age out
    for _ in range(5):
        no_header(app, None, None)
    assert assert_error(send(app, "/auth/login", login_body(), remote_addr=ORIGIN), 429, "Abusive")[
        "retry_after"] == 100


def test_a_fractional_wait_is_rounded_up(app, fake_clock):
    fake_clock.advance(0.25)
    for _ in range(10):
        no_header(app, None, None)
    fake_clock.advance(0.5)
    assert assert_error(send(app, "/api/whoami", b"", remote_addr=ORIGIN), 429, "Abusive")["retry_after"] == 600


def test_abuse_max_zero_disables_the_ban(auth_app):
    app = auth_app(auth={"abuse_max": 0})
    for _ in range(30):
        assert_error(send(app, "/api/echo", b"", remote_addr=ORIGIN), 401, "Unauthorized")
    assert send(app, "/auth/login", login_body("alice", PASSWORD), remote_addr=ORIGIN).status_code == 200


def test_a_lower_maximum_is_honoured(auth_app):
    app = auth_app(auth={"abuse_max": 3})
    for _ in range(3):
        send(app, "/api/echo", b"", remote_addr=ORIGIN)
    assert banned(app)


# -- what a client that holds (or held) its session adds: nothing, when it made no guess ---------------


def _logout(app, stale, other):
    stale.logout()


def _end_sessions(app, stale, other):
    other.call("end_sessions")


def _change_password(app, stale, other):
    other.call("change_password", PASSWORD, "a brand new passphrase")


def _forced_login(app, stale, other):
    other.login("alice", PASSWORD, force=True)


def _bastion_passwd(app, stale, other):
    from auth_helpers import auth_of, cheap_hash
    from bastion_auth import users

    with app.runtime.bind("localhost"):
        users.set_password("alice", cheap_hash("set by the operator"))
    auth_of(app).sessions.end_all("localhost", "alice")


@pytest.mark.parametrize("end", [_logout, _end_sessions, _change_password, _forced_login, _bastion_passwd],
                         ids=["logout", "end_sessions", "change_password", "forced login", "bastion passwd"])
def test_a_stale_tab_of_a_session_the_server_ended_weighs_nothing(app, client_for, fake_clock, end):
    """Its sid names a session this server made and ended: a late client, not a guess, however often it asks
    (a sid nobody was given still weighs 1: the ``unknown-session`` case above)."""
    stale, other = client_for(remote_addr=ORIGIN), client_for(remote_addr="198.51.100.2")
    stale.login("alice", PASSWORD)
    other.login("alice", PASSWORD)
    session = stale.session
    end(app, stale, other)
    for _ in range(12):
        fake_clock.advance(1)
        headers, _ = _signed_as(stale, session)  # a client that keeps asking (the UI would stop at the first)
        assert_error(send(app, "/api/echo", b"", headers, remote_addr=ORIGIN), 401, "UnknownSession")
    assert not is_banned(app)


def _signed_as(client, session):
    """A call of ``client`` signed with ``session`` (which the client itself may have forgotten)."""
    client.session = session
    return sign(client, "/api/echo", b"")


def test_a_typo_then_the_right_password_leaves_no_weight(app):
    """A user who mistypes and then logs in proved who they were: their failures are taken back from their
    address (not another account's: a guess at bob's password stays when alice logs in)."""
    for _ in range(3):
        assert_error(send(app, "/auth/login", login_body("alice", "correct horse"), remote_addr=ORIGIN), 401,
                     "InvalidCredential")
    assert_error(send(app, "/auth/login", login_body("bob", "guess"), remote_addr=ORIGIN), 401, "InvalidCredential")
    assert send(app, "/auth/login", login_body(), remote_addr=ORIGIN).status_code == 200
    for _ in range(8):
        no_header(app, None, None)
    assert not is_banned(app)  # 1 (bob's) + 8
    no_header(app, None, None)
    assert is_banned(app)


def test_logins_still_running_never_count_toward_a_ban(app):
    """Nine correct logins in flight and one typo from one address: weight 1, not a ban of ten minutes."""
    from auth_helpers import auth_of

    auth = auth_of(app)
    inside, go, real = threading.Semaphore(0), threading.Event(), auth.passwords.verify

    def verify(password, hashed):
        if password == PASSWORD:
            inside.release()
            assert go.wait(10)
        return real(password, hashed)

    auth.passwords.verify = verify
    try:
        with ThreadPoolExecutor(9) as pool:
            logins = [pool.submit(send, app, "/auth/login", login_body(), remote_addr=ORIGIN) for _ in range(9)]
            for _ in range(9):
                assert inside.acquire(timeout=10)  # all nine hold their place, their password being checked
            assert_error(send(app, "/auth/login", login_body("alice", "typo"), remote_addr=ORIGIN), 401,
                         "InvalidCredential")
            assert not is_banned(app)
            go.set()
            assert [login.result().status_code for login in logins] == [200] * 9
    finally:
        go.set()
        del auth.passwords.verify
    assert not is_banned(app)
