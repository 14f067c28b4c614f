"""Two-step sign-in (TOTP and recovery codes) in process, on the fake clock: enrolment, logins with a code,
replays, recovery codes, the limits, ``[auth] second_factor``, the CLI, the export."""

from __future__ import annotations

import io
import json
import logging
import threading

import pyotp
import pytest
from auth_helpers import PASSWORD, assert_error, auth_of, login_body, send
from bastion_auth import users

from kernel import Forbidden, InvalidCall, InvalidCredential, SecondFactorRequired, UnknownSession, ValidationError
from kernel.testing import Client


def code(secret: str, clock, steps: int = 0) -> str:
    return pyotp.TOTP(secret).at(clock() + 30 * steps)


def enrol(client: Client, clock) -> tuple[str, list[str]]:
    """Enrol the client's user; return the secret and the recovery codes. Moves the clock to the next step, so
    that the confirming code is no longer the current one."""
    begun = client.call("totp_begin")
    secret = begun["secret"]
    assert begun["uri"].startswith("otpauth://totp/") and begun["qr"].startswith("data:image/svg+xml")
    assert client.call("totp_status")["pending"] is True
    recovery = client.call("totp_confirm", code(secret, clock))
    clock.advance(30)
    return secret, recovery


def signed_in_and_enrolled(app, client_for, fake_clock) -> tuple[Client, str, list[str]]:
    """alice signed in on ``app`` and enrolled (see :func:`enrol`): her client, the secret, the recovery codes."""
    alice = client_for(target=app)
    alice.login("alice", PASSWORD)
    return alice, *enrol(alice, fake_clock)


@pytest.fixture
def unlimited(auth_app):
    """An app without locks or bans: parallel replays are refused as wrong codes, and would lock the account."""
    return auth_app(auth={"account_max_failures": 0, "abuse_max": 0})


@pytest.fixture
def enrolled(app, client_for, fake_clock):
    """alice enrolled; ``(secret, recovery codes)``."""
    alice = client_for()
    alice.login("alice", PASSWORD)
    secret, recovery = enrol(alice, fake_clock)
    alice.logout()
    return secret, recovery


def test_enrolment_is_confirmed_by_a_first_code_then_logins_need_one(app, client_for, fake_clock):
    alice = client_for()
    alice.login("alice", PASSWORD)
    assert alice.call("totp_status") == {"enabled": False, "pending": False, "recovery_codes": 0, "policy": "allowed"}
    begun = alice.call("totp_begin")
    # Pending: logins need no code yet, and a wrong first code activates nothing.
    client_for().login("alice", PASSWORD)
    with pytest.raises(ValidationError):
        alice.call("totp_confirm", "000000" if code(begun["secret"], fake_clock) != "000000" else "111111")
    recovery = alice.call("totp_confirm", code(begun["secret"], fake_clock))
    assert len(recovery) == 10 and len(set(recovery)) == 10
    assert alice.call("totp_status") == {"enabled": True, "pending": False, "recovery_codes": 10, "policy": "allowed"}
    # The record keeps hashes only.
    with app.runtime.bind("localhost"):
        record = users.find("alice")
        assert record.totp == begun["secret"] and not record.totp_pending
        assert not set(recovery) & set(record.recovery) and len(record.recovery) == 10
    fake_clock.advance(30)
    # Without a code: 401 SecondFactorRequired, no session.
    answer = send(app, "/auth/login", login_body())
    assert_error(answer, 401, "SecondFactorRequired")
    assert "sid" not in answer.json
    # With the password and the code: a session.
    bob = client_for()
    assert bob.login("alice", PASSWORD, code=code(begun["secret"], fake_clock)) == {"username": "alice",
                                                                                    "domain": "localhost"}
    assert bob.call("echo", "x")["user"] == "alice"
    # A wrong password with a right code is a wrong password.
    fake_clock.advance(30)
    with pytest.raises(InvalidCredential) as wrong:
        client_for().login("alice", "wrong", code=code(begun["secret"], fake_clock))
    assert wrong.value.err == ["invalid username or password"]


def test_a_code_works_once(app, client_for, fake_clock, enrolled):
    secret, _ = enrolled
    now = code(secret, fake_clock)
    client_for().login("alice", PASSWORD, code=now)
    with pytest.raises(InvalidCredential) as replayed:
        client_for().login("alice", PASSWORD, code=now)
    assert replayed.value.err == ["invalid or already used code"]
    # The previous step's code confirmed the enrolment: used up too.
    with pytest.raises(InvalidCredential):
        client_for().login("alice", PASSWORD, code=code(secret, fake_clock, -1))
    # The next step's code is accepted (a clock a little off), once.
    client_for().login("alice", PASSWORD, code=code(secret, fake_clock, 1))
    with pytest.raises(InvalidCredential):
        client_for().login("alice", PASSWORD, code=code(secret, fake_clock, 1))
    with pytest.raises(InvalidCredential):
        client_for().login("alice", PASSWORD, code=code(secret, fake_clock, 2))
    # A new step, a new code.
    fake_clock.advance(60)
    client_for().login("alice", PASSWORD, code=code(secret, fake_clock, 1))


def test_parallel_logins_with_one_code_open_one_session(unlimited, client_for, fake_clock):
    app = unlimited
    alice, secret, _ = signed_in_and_enrolled(app, client_for, fake_clock)
    now = code(secret, fake_clock)
    outcomes = at_once(8, lambda: send(app, "/auth/login", login_body(code=now)).json.get("exc", "ok"))
    assert outcomes == ["InvalidCredential"] * 7 + ["ok"]


def at_once(count: int, attempt) -> list[str]:
    """Run ``attempt()`` in ``count`` threads released together; return what each returned, sorted."""
    outcomes: list[str] = []
    barrier = threading.Barrier(count)

    def one() -> None:
        barrier.wait()
        outcomes.append(attempt())

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(outcomes)


def test_recovery_codes_work_once_each(app, client_for, fake_clock, enrolled):
    _, recovery = enrolled
    client_for().login("alice", PASSWORD, code=recovery[0])
    with pytest.raises(InvalidCredential):
        client_for().login("alice", PASSWORD, code=recovery[0])
    # Typed in lower case, without dashes.
    client_for().login("alice", PASSWORD, code=recovery[1].replace("-", "").lower())
    alice = client_for()
    alice.login("alice", PASSWORD, code=recovery[2])
    assert alice.call("totp_status")["recovery_codes"] == 7
    # New codes: the old ones stop working.
    fresh = alice.call("totp_recovery_codes", password=PASSWORD)
    assert len(fresh) == 10
    with pytest.raises(InvalidCredential):
        client_for().login("alice", PASSWORD, code=recovery[3])
    client_for().login("alice", PASSWORD, code=fresh[0])


def test_parallel_logins_with_one_recovery_code_open_one_session(unlimited, client_for, fake_clock):
    app = unlimited
    alice, _, recovery = signed_in_and_enrolled(app, client_for, fake_clock)
    outcomes = at_once(8, lambda: send(app, "/auth/login", login_body(code=recovery[0])).json.get("exc", "ok"))
    assert outcomes == ["InvalidCredential"] * 7 + ["ok"]


def wrong_code(secret: str, clock) -> str:
    valid = {code(secret, clock, step) for step in (-1, 0, 1)}
    return next(c for c in ("123456", "654321", "111111", "222222") if c not in valid)


def test_a_wrong_code_counts_like_a_wrong_password(auth_app, client_for, fake_clock, caplog):
    app = auth_app(auth={"account_max_failures": 3, "account_lock": 120, "abuse_max": 0})
    alice, secret, _ = signed_in_and_enrolled(app, client_for, fake_clock)
    caplog.set_level(logging.INFO, logger="bastion.security")
    assert_error(send(app, "/auth/login", login_body(code=wrong_code(secret, fake_clock))), 401, "InvalidCredential")
    assert any("reason=invalid_code" in r.getMessage() for r in caplog.records if "login_failed" in r.getMessage())
    assert_error(send(app, "/auth/login", login_body(password="wrong")), 401, "InvalidCredential")
    # The third failure, a wrong code, locks the account and says so.
    locking = assert_error(send(app, "/auth/login", login_body(code=wrong_code(secret, fake_clock))), 429,
                           "AccountLocked")
    assert locking["retry_after"] == 120
    # Locked for the right password and code too.
    assert_error(send(app, "/auth/login", login_body(code=code(secret, fake_clock))), 429, "AccountLocked")
    fake_clock.advance(121)
    client_for(target=app).login("alice", PASSWORD, code=code(secret, fake_clock))


def test_a_missing_code_neither_counts_nor_resets_the_count(auth_app, client_for, fake_clock):
    app = auth_app(auth={"account_max_failures": 3, "abuse_max": 0})
    alice, secret, _ = signed_in_and_enrolled(app, client_for, fake_clock)
    for _ in range(2):
        assert_error(send(app, "/auth/login", login_body(code=wrong_code(secret, fake_clock))), 401,
                     "InvalidCredential")
    # The right password alone answers SecondFactorRequired, any number of times, and resets nothing ...
    for _ in range(5):
        assert_error(send(app, "/auth/login", login_body()), 401, "SecondFactorRequired")
    # ... so the third wrong code locks the account: knowing the password buys no more guesses of the code.
    assert_error(send(app, "/auth/login", login_body(code=wrong_code(secret, fake_clock))), 429, "AccountLocked")
    # While locked, the right password alone is not told right either.
    assert_error(send(app, "/auth/login", login_body()), 429, "AccountLocked")


def test_at_the_session_limit_the_code_is_not_used_up_and_signs_in_with_force(auth_app, client_for, fake_clock,
                                                                             caplog):
    """max_active_sessions: the password and a right code of a user at the limit answer 409 MaxActiveSessions
    before the code is checked: the code stays unused (a TOTP step and a recovery code alike), nothing counts
    against the account or the origin, and the same code signs in with force."""
    app = auth_app(auth={"max_active_sessions": 1, "account_max_failures": 2, "abuse_max": 2})
    alice, secret, recovery = signed_in_and_enrolled(app, client_for, fake_clock)  # alice's one session stays open
    now = code(secret, fake_clock)
    caplog.set_level(logging.WARNING, logger="bastion.security")
    for proof in (now, recovery[0]) * 3:  # more often than the lock and the ban allow failures
        answer = send(app, "/auth/login", login_body(code=proof), remote_addr="10.0.0.7")
        assert_error(answer, 409, "MaxActiveSessions")
        assert "sid" not in answer.json
    assert sum("reason=max_sessions" in r.getMessage() for r in caplog.records) == 6
    # A wrong code is answered the same: no code is checked there, so none is learned and none counts.
    assert_error(send(app, "/auth/login", login_body(code=wrong_code(secret, fake_clock))), 409, "MaxActiveSessions")
    assert alice.call("totp_status")["recovery_codes"] == 10
    # With force, the same code signs in (once), and alice's other session ends.
    client_for(target=app).login("alice", PASSWORD, code=now, force=True)
    with pytest.raises(InvalidCredential):
        client_for(target=app).login("alice", PASSWORD, code=now, force=True)
    client_for(target=app).login("alice", PASSWORD, code=recovery[0], force=True)
    with pytest.raises(UnknownSession):
        alice.call("totp_status")


def test_wrong_codes_weigh_against_the_origin(auth_app, client_for, fake_clock):
    app = auth_app(auth={"abuse_max": 3, "account_max_failures": 0})
    alice, secret, _ = signed_in_and_enrolled(app, client_for, fake_clock)
    for _ in range(3):
        assert_error(send(app, "/auth/login", login_body(code=wrong_code(secret, fake_clock)),
                          remote_addr="10.0.0.9"), 401, "InvalidCredential")
    assert_error(send(app, "/auth/login", login_body(code=code(secret, fake_clock)), remote_addr="10.0.0.9"), 429,
                 "Abusive")


def test_the_login_body_takes_a_code_string(app):
    for bad in ({"code": 123456}, {"code": None}, {"code": "1" * 65}):
        assert_error(send(app, "/auth/login", json.dumps({"username": "alice", "password": PASSWORD, **bad}).encode()),
                     400, "InvalidCall")
    # A user without two-step sign-in logs in whatever the code.
    assert send(app, "/auth/login", login_body(code="123456")).status_code == 200


def test_disabling_needs_the_password_or_a_code(app, client_for, fake_clock, enrolled):
    secret, recovery = enrolled
    alice = client_for()
    alice.login("alice", PASSWORD, code=recovery[0])
    with pytest.raises(InvalidCall):
        alice.call("totp_disable")
    with pytest.raises(InvalidCredential):
        alice.call("totp_disable", password="wrong")
    with pytest.raises(InvalidCredential):
        alice.call("totp_disable", code=wrong_code(secret, fake_clock))
    assert alice.call("totp_disable", code=code(secret, fake_clock)) is True
    assert alice.call("totp_status")["enabled"] is False
    client_for().login("alice", PASSWORD)
    # Enrol again, disable with the password.
    enrol(alice, fake_clock)
    assert alice.call("totp_disable", password=PASSWORD) is True
    client_for().login("alice", PASSWORD)


def test_begin_is_refused_when_on_already_or_turned_off(auth_app, client_for, fake_clock):
    app = auth_app(auth={"second_factor": "off"})
    alice = client_for(target=app)
    alice.login("alice", PASSWORD)
    with pytest.raises(Forbidden):
        alice.call("totp_begin")
    app = auth_app()
    alice = client_for(target=app)
    alice.login("alice", PASSWORD)
    enrol(alice, fake_clock)
    with pytest.raises(ValidationError):
        alice.call("totp_begin")


def test_required_lets_a_user_without_a_factor_only_enrol(auth_app, client_for, fake_clock):
    app = auth_app(**{"auth:strict.localhost": {"second_factor": "required"}},
                   users={"bob@strict.localhost": auth_of_hash()})
    # Another tenant is untouched.
    alice = client_for(target=app)
    alice.login("alice", PASSWORD)
    assert alice.call("echo", "x")["user"] == "alice"
    bob = client_for(host="strict.localhost", target=app)
    answer = send(app, "/auth/login", login_body("bob"), host="strict.localhost")
    assert answer.json["second_factor"] == "enrol"
    bob.login("bob", PASSWORD)
    with pytest.raises(Forbidden):
        bob.call("echo", "x")
    assert bob.call("totp_status")["policy"] == "required"
    secret, _ = enrol(bob, fake_clock)
    assert bob.call("echo", "x")["user"] == "bob"
    again = client_for(host="strict.localhost", target=app)
    with pytest.raises(SecondFactorRequired):
        again.login("bob", PASSWORD)
    again.login("bob", PASSWORD, code=code(secret, fake_clock))
    assert again.call("echo", "x")["user"] == "bob"


def auth_of_hash() -> str:
    from auth_helpers import ALICE_HASH

    return ALICE_HASH


def test_reset_2fa_and_users_list(app, client_for, fake_clock, enrolled, caplog):
    auth = auth_of(app)
    out = io.StringIO()
    from bastion_auth import cli

    console = cli.Console(app.runtime, auth, out, io.StringIO())
    cli.list_users(_args(domain="localhost"), console)
    assert "two-step sign-in" in out.getvalue()
    caplog.set_level(logging.INFO, logger="bastion.security")
    assert cli.reset_2fa(_args(username="alice", domain="localhost"), console) == 0
    assert any("second_factor_reset" in r.getMessage() for r in caplog.records)
    assert "Removed the two-step sign-in of alice@localhost" in out.getvalue()
    client_for().login("alice", PASSWORD)
    with pytest.raises(SystemExit):
        cli.reset_2fa(_args(username="nobody", domain="localhost"), console)


def _args(**values):
    import argparse

    return argparse.Namespace(**values)


def test_the_factor_is_exported_with_the_tenant_and_deleted_with_the_user(app, client_for, fake_clock, enrolled):
    secret, _ = enrolled
    # What `bastion export` streams of the tenant (TenantStore.tenant_records) holds the factor.
    exported = {record.id: record.data for record in app.runtime.records.tenant_records("localhost", "User")}
    assert exported["alice"]["totp"] == secret and len(exported["alice"]["recovery"]) == 10
    assert not list(app.runtime.records.tenant_records("other.localhost", "User"))
    with app.runtime.bind("localhost"):
        assert users.delete("alice")
        assert users.find("alice") is None
    assert "alice" not in {record.id for record in app.runtime.records.tenant_records("localhost", "User")}
