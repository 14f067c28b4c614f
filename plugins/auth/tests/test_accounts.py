"""The account services: change_password, sessions, end_sessions (docs/protocol.md section 5), and roles.

In process on mem://, with the fake clock; tests/test_accounts.py runs the
acceptance checks on every driver, tests/test_accounts_e2e.py races a
password change against calls on two real gunicorn workers.
"""

from __future__ import annotations

import json
import logging

import pytest
from auth_helpers import PASSWORD, assert_error, auth_of, is_signed, login_body, send, sign
from bastion_auth import users
from bastion_auth.sessions import SHOWN_SID

from kernel import (
    Abusive,
    AccountLocked,
    Forbidden,
    InvalidCall,
    InvalidCredential,
    ServiceUnavailable,
    UnknownSession,
    ValidationError,
    VersionConflict,
    current,
    hookimpl,
    service,
)
from kernel.testing import Client

NEW = "a brand new passphrase"


def body(*args, **kwargs) -> bytes:
    payload = {}
    if args:
        payload["args"] = list(args)
    if kwargs:
        payload["kwargs"] = kwargs
    return json.dumps(payload).encode()


def logged_in(client_for, app=None, remote_addr="127.0.0.1", username="alice", password=PASSWORD) -> Client:
    client = client_for(remote_addr=remote_addr, target=app)
    client.login(username, password)
    return client


# -- change_password -----------------------------------------------------------------------

def test_change_password_ends_every_other_session_and_keeps_the_current_one(app, client_for):
    first, second, third = (logged_in(client_for, remote_addr=f"127.0.0.{i}") for i in (1, 2, 3))
    assert first.call("change_password", PASSWORD, NEW) is True
    for other in (second, third):
        session = other.session
        with pytest.raises(UnknownSession):
            other.call("echo", "x")
        other.session = session
        assert_error(send(app, "/auth/logout", b"{}", sign(other, "/auth/logout", b"{}")[0]), 401, "UnknownSession")
    assert first.call("echo", "still here")["user"] == "alice"
    # The new password is the password; the old one is not.
    assert_error(send(app, "/auth/login", login_body()), 401, "InvalidCredential")
    logged_in(client_for, password=NEW)
    assert sorted(s["current"] for s in first.call("sessions")) == [False, True]


def test_change_password_takes_keyword_arguments_and_needs_both(alice, app):
    assert alice.call("change_password", old=PASSWORD, new=NEW) is True
    for args, kwargs in (((), {}), ((NEW,), {}), ((NEW, 8), {}), ((None, NEW), {}), ((), {"old": NEW, "new": [1]}),
                         ((NEW, NEW, NEW), {}), ((), {"old": NEW, "new": NEW, "force": True})):
        with pytest.raises(InvalidCall):
            alice.call("change_password", *args, **kwargs)


def test_a_new_password_that_breaks_the_policy_is_422_naming_the_rule(auth_app, client_for):
    app = auth_app(auth={"min_password_length": 12, "max_password_length": 40, "account_max_failures": 2})
    alice = logged_in(client_for, app)
    for new, rule in (("short", {"min_length": 12}), ("x" * 41, {"max_length": 40}), ("", {"min_length": 12})):
        headers, nonce = sign(alice, "/api/change_password", body(PASSWORD, new))
        answer = send(app, "/api/change_password", body(PASSWORD, new), headers)
        error = assert_error(answer, 422, "ValidationError")
        assert error["fields"] == {"new": rule}
        assert any(str(list(rule.values())[0]) in message for message in error["err"])
        assert new not in answer.text or not new  # the password is never repeated back
        assert is_signed(answer, alice.session.key, nonce)
    # Checked before the old password: a mistyped new one costs no attempt (two failures would lock).
    for _ in range(3):
        with pytest.raises(ValidationError):
            alice.call("change_password", "wrong old password", "short")
    assert alice.call("change_password", PASSWORD, "x" * 40) is True


def test_a_wrong_old_password_is_a_signed_invalid_credential_and_changes_nothing(app, alice, client_for):
    other = logged_in(client_for)
    headers, nonce = sign(alice, "/api/change_password", body("wrong password", NEW))
    answer = send(app, "/api/change_password", body("wrong password", NEW), headers)
    assert_error(answer, 401, "InvalidCredential")
    assert is_signed(answer, alice.session.key, nonce)
    assert "wrong password" not in answer.text and NEW not in answer.text
    # Nothing changed: both sessions live, the old password still the password.
    assert other.call("echo", "x")["user"] == "alice"
    assert alice.call("echo", "x")["user"] == "alice"
    logged_in(client_for)


def test_wrong_old_passwords_lock_the_account_after_the_usual_number_of_failures(auth_app, client_for, fake_clock):
    app = auth_app(auth={"account_max_failures": 3, "account_lock": 120, "abuse_max": 0})
    alice = logged_in(client_for, app)
    for _ in range(2):
        with pytest.raises(InvalidCredential):
            alice.call("change_password", "guess", NEW)
    # The third wrong one locks the account, and says so.
    with pytest.raises(AccountLocked) as locking:
        alice.call("change_password", "guess", NEW)
    assert locking.value.extra["retry_after"] == 120
    assert locking.value.err == ["the current password is wrong", "too many failed logins for this account; try "
                                 "again later"]
    # Locked, like after three failed logins: change_password and login alike, from every origin.
    with pytest.raises(AccountLocked) as locked:
        alice.call("change_password", PASSWORD, NEW)
    assert locked.value.extra["retry_after"] == 120
    answer = send(app, "/auth/login", login_body(), remote_addr="10.9.9.9")
    assert_error(answer, 429, "AccountLocked")
    # The session itself is not ended by the lock.
    assert alice.call("echo", "x")["user"] == "alice"
    fake_clock.advance(121)
    assert alice.call("change_password", PASSWORD, NEW) is True


def test_failed_logins_and_wrong_old_passwords_share_one_count(auth_app, client_for):
    app = auth_app(auth={"account_max_failures": 4, "abuse_max": 0})
    alice = logged_in(client_for, app)
    for _ in range(2):
        assert_error(send(app, "/auth/login", login_body(password="wrong")), 401, "InvalidCredential")
    with pytest.raises(InvalidCredential):
        alice.call("change_password", "wrong", NEW)
    with pytest.raises(AccountLocked):  # the fourth failure, two of each kind, locks the account
        alice.call("change_password", "wrong", NEW)
    assert_error(send(app, "/auth/login", login_body()), 429, "AccountLocked")


def test_a_right_old_password_resets_the_accounts_count(auth_app, client_for):
    app = auth_app(auth={"account_max_failures": 3, "abuse_max": 0})
    alice = logged_in(client_for, app)
    for _ in range(2):
        with pytest.raises(InvalidCredential):
            alice.call("change_password", "wrong", NEW)
    assert alice.call("change_password", PASSWORD, NEW) is True
    for _ in range(2):
        with pytest.raises(InvalidCredential):
            alice.call("change_password", "wrong", PASSWORD)
    assert alice.call("change_password", NEW, PASSWORD) is True


def test_wrong_old_passwords_weigh_against_the_origin_like_failed_logins(auth_app, client_for):
    app = auth_app(auth={"abuse_max": 3, "account_max_failures": 0})
    alice = logged_in(client_for, app)
    for _ in range(3):
        with pytest.raises(InvalidCredential):
            alice.call("change_password", "wrong", NEW)
    # Weight 3 from 127.0.0.1: banned, every protected route (step 3), the correct login included.
    with pytest.raises(Abusive):
        alice.call("echo", "x")
    assert_error(send(app, "/auth/login", login_body()), 429, "Abusive")
    assert logged_in(client_for, app, remote_addr="10.0.0.2").call("echo", "x")["user"] == "alice"


def test_a_password_changed_meanwhile_is_a_conflict(app, alice):
    auth = auth_of(app)
    original = auth.login.check_password

    def then_someone_else_changes_it(*args):
        found = original(*args)
        with app.runtime.bind("localhost"):
            users.set_password("alice", auth.passwords.hash("changed by the admin"))
        return found

    auth.login.check_password = then_someone_else_changes_it
    try:
        with pytest.raises(VersionConflict):
            alice.call("change_password", PASSWORD, NEW)
    finally:
        del auth.login.check_password
    with app.runtime.bind("localhost"):
        assert auth.passwords.verify("changed by the admin", users.find("alice").password)[0]


def test_a_login_racing_a_password_change_with_the_old_password_keeps_no_session(app, alice, client_for):
    """The login verified the old password; the change lands before the login's re-read of the user."""
    auth = auth_of(app)
    original = auth.sessions.create

    def create_then_change(domain, username, now, force=False, origin="", **agreed):
        session = original(domain, username, now, force=force, origin=origin, **agreed)
        if username == "alice" and not getattr(create_then_change, "done", False):
            create_then_change.done = True
            alice.call("change_password", PASSWORD, NEW)
        return session

    auth.sessions.create = create_then_change
    try:
        assert_error(send(app, "/auth/login", login_body()), 401, "InvalidCredential")
    finally:
        del auth.sessions.create
    assert [s["current"] for s in alice.call("sessions")] == [True]


class ChangeDuringLogin:
    """Runs alice's password change to its end at one point of a concurrent login with the old password.

    The points, in the login's order: ``verified`` (the old password verified, no session stored yet),
    ``stored`` (its session stored, the user not read again), ``read`` (the user read again, still with the old
    password: the login's last step before it answers is still to come).
    """

    def __init__(self, app, changer, point):
        self.auth, self.changer, self.point, self.done = auth_of(app), changer, point, False

    def change(self):
        if not self.done:
            self.done = True
            assert self.changer.call("change_password", PASSWORD, NEW) is True

    def __enter__(self):
        auth, point = self.auth, self.point
        create, find = auth.sessions.create, users.find
        stored = []

        def create_around(domain, username, now, force=False, origin="", **agreed):
            if point == "verified":
                self.change()
            session = create(domain, username, now, force=force, origin=origin, **agreed)
            stored.append(session.sid)
            if point == "stored":
                self.change()
            return session

        def find_then(username):
            record = find(username)
            if point == "read" and stored:  # the login's first read of the user once its session exists
                self.change()
            return record

        auth.sessions.create = create_around
        users.find = find_then
        self.undo = lambda: (delattr(auth.sessions, "create"), setattr(users, "find", find))
        return self

    def __exit__(self, *exc):
        self.undo()


@pytest.mark.parametrize("point", ["verified", "stored", "read"])
def test_a_login_with_the_old_password_that_the_change_overtakes_answers_invalid_credential(app, client_for,
                                                                                          point):
    """Wherever the change lands in the login, once the change has answered the login says InvalidCredential and
    no session opened with the old password is left: docs/protocol.md section 5."""
    changer = logged_in(client_for, remote_addr="192.0.2.1")
    with ChangeDuringLogin(app, changer, point) as race:
        answer = send(app, "/auth/login", login_body(), remote_addr="192.0.2.2")
    assert race.done
    assert_error(answer, 401, "InvalidCredential")
    assert [s["current"] for s in changer.call("sessions")] == [True]


def test_logins_racing_a_password_change_keep_no_session_once_it_answered(auth_app):
    """Many threads log in with the old password while it changes, in whatever order the threads run: a login
    that answered 200 did so before the change ended the sessions, which ends its session too; every login that
    starts once the change answered is InvalidCredential; at the end the changer's session is the only one."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    app = auth_app(auth={"account_max_failures": 0, "abuse_max": 0})
    auth = auth_of(app)
    changer = Client(app=app, host="localhost", remote_addr="192.0.2.1", clock=auth.clock)
    changer.login("alice", PASSWORD)
    started, changed = threading.Barrier(7, timeout=10), threading.Event()

    def log_in_until_changed(i):
        answers = []
        started.wait()
        while True:
            after_change = changed.is_set()
            result = send(app, "/auth/login", login_body(), remote_addr=f"192.0.2.{10 + i}")
            answers.append((after_change, result.status_code, result.json.get("sid")))
            if after_change:
                return answers

    with ThreadPoolExecutor(6) as pool:
        runs = [pool.submit(log_in_until_changed, i) for i in range(6)]
        started.wait()
        assert changer.call("change_password", PASSWORD, NEW) is True
        changed.set()
        answers = [answer for run in runs for answer in run.result()]
    assert {status for _, status, _ in answers} <= {200, 401}
    assert all(status == 401 for after, status, _ in answers if after)
    opened = [sid for _, status, sid in answers if status == 200]
    assert all(auth.state.get("localhost", auth.sessions.key(sid)) is None for sid in opened)
    assert [s["current"] for s in changer.call("sessions")] == [True]


def test_no_password_and_no_key_reach_the_log(app, alice, client_for, caplog):
    other = logged_in(client_for)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(InvalidCredential):
            alice.call("change_password", "wrong secret", NEW)
        alice.call("change_password", PASSWORD, NEW)
        alice.call("end_sessions")
    text = caplog.text
    assert "event=password_changed" in text and "domain=localhost" in text and "user=alice" in text
    for secret in (PASSWORD, NEW, "wrong secret", alice.session.sid, other.session.sid, alice_key_text(alice.session),
                   alice.session.sid[:SHOWN_SID]):
        assert secret not in text


# -- sessions ------------------------------------------------------------------------------

def test_sessions_lists_the_callers_live_sessions_without_keys_or_whole_sids(app, client_for, fake_clock):
    first = logged_in(client_for, remote_addr="192.0.2.1")
    fake_clock.advance(60)
    second = logged_in(client_for, remote_addr="192.0.2.2")
    fake_clock.advance(30)
    second.call("echo", "x")
    start = int(fake_clock()) - 90

    headers, _ = sign(first, "/api/sessions", b"")
    answer = send(app, "/api/sessions", b"", headers, remote_addr="192.0.2.1")
    listed = answer.json["result"]
    assert listed == [
        {"id": first.session.sid[:SHOWN_SID], "created": start, "last_seen": start + 90, "origin": "192.0.2.1",
         "current": True},  # this call is its latest
        {"id": second.session.sid[:SHOWN_SID], "created": start + 60, "last_seen": start + 90, "origin": "192.0.2.2",
         "current": False},
    ]
    for session in (first.session, second.session):
        assert session.sid not in answer.text
        assert alice_key_text(session) not in answer.text
    assert [s["current"] for s in second.call("sessions")] == [False, True]


def alice_key_text(session) -> str:
    from kernel import b64url

    return b64url(session.key)


def test_sessions_shows_the_address_of_the_latest_call(app, client_for, fake_clock):
    alice = logged_in(client_for, remote_addr="192.0.2.1")
    alice.remote_addr = "198.51.100.7"
    fake_clock.advance(5)
    assert alice.call("sessions") == [{"id": alice.session.sid[:SHOWN_SID], "created": int(fake_clock()) - 5,
                                       "last_seen": int(fake_clock()), "origin": "198.51.100.7", "current": True}]


def test_sessions_leaves_out_ended_expired_and_other_users_sessions(auth_app, client_for, fake_clock):
    app = auth_app(auth={"idle_timeout": 600, "absolute_timeout": 3600},
                   users={"bob@localhost": users_hash()})
    old = logged_in(client_for, app)
    fake_clock.advance(601)  # old is idle too long
    ended = logged_in(client_for, app)
    ended.logout()
    logged_in(client_for, app, username="bob")
    alice = logged_in(client_for, app)
    assert [s["id"] for s in alice.call("sessions")] == [alice.session.sid[:SHOWN_SID]]
    assert old.session.sid[:SHOWN_SID] != alice.session.sid[:SHOWN_SID]


def users_hash() -> str:
    from auth_helpers import ALICE_HASH

    return ALICE_HASH


# -- end_sessions --------------------------------------------------------------------------

def test_end_sessions_ends_the_others_and_says_how_many(app, client_for):
    alice = logged_in(client_for)
    others = [logged_in(client_for) for _ in range(3)]
    assert alice.call("end_sessions") == 3
    for other in others:
        with pytest.raises(UnknownSession):
            other.call("echo", "x")
    assert alice.call("echo", "x")["user"] == "alice"
    assert alice.call("end_sessions") == 0
    assert [s["current"] for s in alice.call("sessions")] == [True]


def test_end_sessions_does_not_count_sessions_that_had_expired(auth_app, client_for, fake_clock):
    app = auth_app(auth={"idle_timeout": 600, "absolute_timeout": 3600})
    logged_in(client_for, app)
    fake_clock.advance(601)
    live = logged_in(client_for, app)
    alice = logged_in(client_for, app)
    assert alice.call("end_sessions") == 1
    with pytest.raises(UnknownSession):
        live.call("echo", "x")


# -- roles ---------------------------------------------------------------------------------

@service
def my_roles() -> list:
    """The caller's roles, as the public API gives them."""
    return sorted(current().roles)


class RolesServicePlugin:
    @hookimpl
    def bastion_services(self):
        return [my_roles]


def test_roles_section_gives_users_their_roles_at_start_up(auth_app, client_for):
    app = auth_app(users={"bob@alpha.localhost": users_hash()}, plugins=[RolesServicePlugin()],
                   roles={"alice@localhost": "editor, admin,editor", "bob@Alpha.Localhost.": "viewer",
                          "nobody@localhost": "admin"})
    assert logged_in(client_for, app).call("my_roles") == ["admin", "editor"]
    bob = client_for(host="alpha.localhost", target=app)
    bob.login("bob", PASSWORD)
    assert bob.call("my_roles") == ["viewer"]


def test_a_change_of_roles_counts_at_the_users_next_call(auth_app, client_for):
    app = auth_app(plugins=[RolesServicePlugin()])
    alice = logged_in(client_for, app)
    assert alice.call("my_roles") == []
    with app.runtime.bind("localhost"):
        assert users.set_roles("alice", ["editor"], auth_of(app).roles_epoch) is True
        assert users.set_roles("alice", ["editor"], auth_of(app).roles_epoch) is False
        assert users.set_roles("nobody", ["editor"], auth_of(app).roles_epoch) is None
    assert alice.call("my_roles") == ["editor"]
    with app.runtime.bind("localhost"):
        users.set_roles("alice", [], auth_of(app).roles_epoch)
    assert alice.call("my_roles") == []


def test_the_session_carries_the_roles_until_a_change_and_a_refused_call_reads_none(auth_app, client_for, monkeypatch):
    """A session's first call reads the user's record for its roles and keeps them with the domain's roles epoch;
    later calls read none while the epoch holds; a change of roles sets a new epoch, and the next call reads the
    record once more. The service and the permission check read the request's field. A refused call, and a
    logout, read none."""
    app = auth_app(plugins=[RolesServicePlugin()], roles={"alice@localhost": "editor"})
    alice = logged_in(client_for, app)
    reads, real = [], users.roles_of
    monkeypatch.setattr(users, "roles_of", lambda username: reads.append(username) or real(username))
    assert alice.call("my_roles") == ["editor"]
    assert alice.call("echo", "x")["user"] == "alice"
    assert alice.call("my_roles") == ["editor"]
    assert reads == ["alice"]  # the first call only
    with app.runtime.bind("localhost"):
        assert users.set_roles("alice", ["admin", "editor"], auth_of(app).roles_epoch) is True
    assert alice.call("my_roles") == ["admin", "editor"]
    assert alice.call("my_roles") == ["admin", "editor"]
    assert reads == ["alice"] * 2
    headers, _ = sign(alice, "/api/echo", body("x"))
    assert send(app, "/api/echo", body("x"), headers).status_code == 200
    assert_error(send(app, "/api/echo", body("x"), headers), 401, "ReplayedCall")
    stale, _ = sign(alice, "/api/echo", body("x"), ts=str(int(alice.clock()) - 3600))
    assert_error(send(app, "/api/echo", body("x"), stale), 401, "StaleCall")
    forged, _ = sign(alice, "/api/echo", body("y"))
    assert_error(send(app, "/api/echo", body("x"), forged), 401, "InvalidSignature")
    assert reads == ["alice"] * 2
    assert alice.logout() is True
    assert reads == ["alice"] * 2


def test_roles_are_never_older_than_the_last_change_whatever_a_session_carries(auth_app, client_for):
    """Two sessions of one user, and a change of roles between calls of each: every call after the change has the
    new roles, and a session stored back with older roles (a slide that read it before the change) is read again
    rather than believed."""
    app = auth_app(plugins=[RolesServicePlugin()], roles={"alice@localhost": "editor"})
    auth = auth_of(app)
    first, second = logged_in(client_for, app), logged_in(client_for, app)
    assert first.call("my_roles") == second.call("my_roles") == ["editor"]
    stored = app.runtime.state.get("localhost", auth.sessions.key(first.session.sid))
    with app.runtime.bind("localhost"):
        users.set_roles("alice", ["viewer"], auth.roles_epoch)
    assert first.call("my_roles") == ["viewer"]
    # A slide written by a call that read the session before the change puts the old roles back: not believed.
    app.runtime.state.set("localhost", auth.sessions.key(first.session.sid), stored, 600)
    assert first.call("my_roles") == second.call("my_roles") == ["viewer"]
    with app.runtime.bind("localhost"):
        users.set_roles("alice", [], auth.roles_epoch)
    assert first.call("my_roles") == second.call("my_roles") == []


def test_roles_that_cannot_be_read_refuse_the_call_with_a_signed_503_that_slides_nothing(
        auth_app, client_for, fake_clock, monkeypatch):
    app = auth_app(plugins=[RolesServicePlugin()])
    auth = auth_of(app)
    alice = logged_in(client_for, app)
    logged_in_at = auth.clock()
    fake_clock.advance(30)

    def unavailable(username):
        raise ServiceUnavailable("the records cannot be reached")

    monkeypatch.setattr(users, "roles_of", unavailable)
    headers, nonce = sign(alice, "/api/echo", body("x"))
    answer = send(app, "/api/echo", body("x"), headers)
    assert_error(answer, 503, "ServiceUnavailable")
    assert is_signed(answer, alice.session.key, nonce)  # the call proved its key: signed, as a 503 at step 12 was
    assert [live.last_seen for live in auth.sessions.live("localhost", "alice", auth.clock())] == [logged_in_at]
    assert alice.logout() is True  # the logout needs no roles


def test_a_user_stored_before_roles_existed_has_none(app):
    from kernel import Change

    app.runtime.records.commit("localhost", [Change("insert", "User", "old", 0, {
        "username": "old", "password": users_hash(), "created": 1}, {})])
    with app.runtime.bind("localhost"):
        assert users.roles_of("old") == ()
        assert users.set_roles("old", ["editor"], auth_of(app).roles_epoch) is True
        assert users.roles_of("old") == ("editor",)


@pytest.mark.parametrize("roles, message", [
    ({"alice@localhost": "bad role!"}, "not a role name"),
    ({"alice@localhost": "x" * 65}, "not a role name"),
    ({"alice": "editor"}, "username@domain"),
    ({"bad name@localhost": "editor"}, "username"),
    ({"alice@not a host": "editor"}, "not a host name"),
])
def test_bad_roles_entries_stop_the_start(auth_app, roles, message):
    from kernel import ConfigError

    with pytest.raises(ConfigError, match=r"\[roles\]") as info:
        auth_app(roles=roles)
    assert message in str(info.value)


def test_the_account_services_need_a_session_of_the_auth_plugin(app):
    auth = auth_of(app)
    with app.runtime.bind("localhost"), pytest.raises(Forbidden):
        auth.account.sessions()
