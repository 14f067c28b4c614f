"""Passkeys (docs/protocol.md section 17): registration, login, and every refusal, on every driver.

The server verifies with the ``webauthn`` library; the credentials come from a software authenticator
(passkey_helpers.py) that answers as a browser's would. The storage-touching tests run on mem://, SQLite,
PostgreSQL and Redis, in process, on the fake clock: a challenge expires with ``fake_clock.advance``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

import pytest
from bastion_auth import passkeys as passkeys_module
from bastion_auth.testing import cheap_hash
from passkey_helpers import SoftAuthenticator, login_options, passkey_login, post, register

from kernel import InvalidCredential, NotFound, PasskeyRequired, RecordNotFound, UnknownSession, ValidationError, b64url
from kernel.testing import Client, Session, main, write_config

PASSWORD = "correct horse battery"
CHEAP = {"argon2_memory_cost": 64, "argon2_time_cost": 1, "demo_user": False}
ORIGIN = "http://localhost"


@pytest.fixture(params=["mem", "sqlite", "postgresql", "redis"])
def storage(request, tmp_path):
    """The storage sections and the plugins to load, on each driver (fresh data for each test)."""
    if request.param == "mem":
        return {"bastion": {"storage": "mem://"}}, ["storage_mem"]
    if request.param == "sqlite":
        return {"bastion": {"storage": f"sqlite:///{tmp_path / 'bastion.sqlite3'}"}}, ["storage_sql"]
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_server").create_database(f"passkeys_{uuid.uuid4().hex[:8]}")
        return {"bastion": {"storage": url}}, ["storage_sql"]
    redis = request.getfixturevalue("redis_server")
    return ({"bastion": {"storage": redis.url}, "storage_redis": {"key_prefix": f"pk-{uuid.uuid4().hex[:8]}"}},
            ["storage_redis"])


HOSTS = ("localhost", "alpha.localhost", "beta.localhost", "plain.localhost", "strict.localhost")


@pytest.fixture
def app(storage, make_app):
    """alice and bob on localhost (passkeys allowed); alice on alpha and beta (allowed), on plain (off, the
    default) and on strict (required)."""
    sections, only = storage
    merged = {
        "bastion": {"development": True, "allowed_hosts": ", ".join(HOSTS), **sections["bastion"]},
        "auth": {**CHEAP, "passkeys": "allowed"},
        "auth:plain.localhost": {"passkeys": "off"},
        "auth:strict.localhost": {"passkeys": "required"},
        "users": {"alice@localhost": cheap_hash(PASSWORD), "bob@localhost": cheap_hash(PASSWORD),
                  **{f"alice@{host}": cheap_hash(PASSWORD) for host in HOSTS[1:]}},
        **{key: value for key, value in sections.items() if key != "bastion"},
    }
    return make_app(merged, only=[*only, "auth"])


def client(app, fake_clock, host: str = "localhost", origin: str = "127.0.0.1") -> Client:
    return Client(app=app, host=host, remote_addr=origin, clock=fake_clock)


def logged_in(app, fake_clock, user: str = "alice", host: str = "localhost") -> Client:
    c = client(app, fake_clock, host)
    c.login(user, PASSWORD)
    return c


def authenticator(host: str = "localhost", **options) -> SoftAuthenticator:
    return SoftAuthenticator(f"http://{host}", **options)


def stored(app, host: str = "localhost") -> list[dict]:
    """Every passkey record of a domain, as stored."""
    from bastion_auth import passkey_store

    with app.runtime.bind(host):
        return [{"user": r.username, "sign_count": r.sign_count, "last_used": r.last_used, "name": r.name}
                for r in passkey_store.of_user("alice") + passkey_store.of_user("bob")]


def live_sessions(app, user: str = "alice", host: str = "localhost") -> int:
    from bastion_auth.plugin import get_auth

    auth = get_auth(app.runtime)
    return len(auth.sessions.live(host, user, app.runtime.clock()))


# -- registration and the user's passkeys -----------------------------------------------------------------------------

def security_events(caplog) -> list[str]:
    return [str(r.msg) for r in caplog.records if r.name == "bastion.security"]


def test_register_list_rename_and_remove(app, fake_clock, caplog):
    caplog.set_level(logging.INFO, logger="bastion.security")
    alice = logged_in(app, fake_clock)
    laptop, phone = authenticator(), authenticator()
    first = register(alice, laptop, "Laptop")
    fake_clock.advance(10)
    second = register(alice, phone, "Phone")
    assert set(first) == {"id", "name", "created", "last_used"} and first["last_used"] is None
    listed = alice.call("passkeys")["passkeys"]
    assert [p["name"] for p in listed] == ["Laptop", "Phone"] and listed[1]["created"] == listed[0]["created"] + 10
    assert alice.call("rename_passkey", first["id"], "Work laptop")["name"] == "Work laptop"
    assert alice.call("remove_passkey", second["id"]) is True
    assert [p["name"] for p in alice.call("passkeys")["passkeys"]] == ["Work laptop"]
    with pytest.raises(RecordNotFound):
        alice.call("remove_passkey", second["id"])
    bob = logged_in(app, fake_clock, "bob")
    assert bob.call("passkeys")["passkeys"] == []
    with pytest.raises(RecordNotFound):  # another user's passkey is no passkey of bob's
        bob.call("rename_passkey", first["id"], "Mine")
    with pytest.raises(ValidationError):
        alice.call("rename_passkey", first["id"], "   ")
    messages = security_events(caplog)
    assert sum("passkey_registered" in m for m in messages) == 2
    assert sum("passkey_removed" in m for m in messages) == 1


def test_the_registration_options_ask_for_a_resident_key_and_exclude_the_users_passkeys(app, fake_clock):
    alice = logged_in(app, fake_clock)
    laptop = authenticator()
    register(alice, laptop)
    options = alice.call("passkey_options")["publicKey"]
    assert options["rp"]["id"] == "localhost"
    assert options["authenticatorSelection"]["residentKey"] == "required"
    assert options["authenticatorSelection"]["userVerification"] == "required"
    assert [c["id"] for c in options["excludeCredentials"]] == [b64url(laptop.credentials[0].credential_id)]
    # one user handle per user, never the username
    assert options["user"]["name"] == "alice" and options["user"]["id"] != "YWxpY2U"


def test_a_registration_answers_its_own_challenge_once(app, fake_clock):
    alice = logged_in(app, fake_clock)
    options = alice.call("passkey_options")["publicKey"]
    made = authenticator().create(options)
    alice.call("add_passkey", made, "Laptop")
    with pytest.raises(InvalidCredential):  # the same attestation again: its challenge is used
        alice.call("add_passkey", made, "Laptop")
    bob = logged_in(app, fake_clock, "bob")
    options = alice.call("passkey_options")["publicKey"]
    with pytest.raises(InvalidCredential):  # alice's challenge, bob's call: refused, and consumed
        bob.call("add_passkey", authenticator().create(options), "Stolen")
    assert len(stored(app)) == 1


def test_a_registration_for_another_origin_is_refused(app, fake_clock):
    alice = logged_in(app, fake_clock)
    options = alice.call("passkey_options")["publicKey"]
    with pytest.raises(InvalidCredential) as refused:
        alice.call("add_passkey", authenticator().create(options, origin="http://evil.example"), "Laptop")
    assert "origin" in refused.value.err[0]
    assert stored(app) == []


# -- login ------------------------------------------------------------------------------------------------------------

def test_login_without_a_username_opens_a_session_like_a_password_login(app, fake_clock, caplog):
    caplog.set_level(logging.INFO, logger="bastion.security")
    alice = logged_in(app, fake_clock)
    laptop = authenticator()
    registered = register(alice, laptop)
    fresh = client(app, fake_clock)
    status, answer = passkey_login(fresh, laptop.get(login_options(fresh)))
    assert status == 200, answer
    assert answer["user"] == {"username": "alice", "domain": "localhost"}
    assert set(answer) == {"sid", "key", "expires", "server_time", "user", "limits"}
    assert fresh.call("passkeys")["passkeys"][0]["last_used"] == int(fake_clock())
    assert stored(app)[0]["sign_count"] == 1
    assert registered["id"]
    assert any(m.startswith("event=login ") and "method=passkey" in m for m in security_events(caplog))


def test_login_username_first_takes_only_that_users_passkey(app, fake_clock):
    alice, bob = logged_in(app, fake_clock), logged_in(app, fake_clock, "bob")
    alices, bobs = authenticator(), authenticator()
    register(alice, alices)
    register(bob, bobs)
    fresh = client(app, fake_clock)
    options = login_options(fresh, "alice")
    assert "allowCredentials" not in options or options["allowCredentials"] == []  # nothing told of the account
    status, answer = passkey_login(fresh, alices.get(options))
    assert status == 200 and answer["user"]["username"] == "alice"
    status, answer = passkey_login(fresh, bobs.get(login_options(fresh, "alice")))
    assert (status, answer["exc"]) == (401, "InvalidCredential")
    # a username that does not exist gets a challenge like any other
    assert login_options(fresh, "nobody")["challenge"]


def test_login_takes_force_like_a_password_login(app, fake_clock):
    alice = logged_in(app, fake_clock)
    laptop = authenticator()
    register(alice, laptop)
    fresh = client(app, fake_clock)
    status, _ = passkey_login(fresh, laptop.get(login_options(fresh)), force=True)
    assert status == 200
    assert live_sessions(app) == 1  # force ended the others


def test_a_malformed_body_is_invalid_call(app, fake_clock):
    fresh = client(app, fake_clock)
    for body in ({}, {"credential": 1}, {"credential": {}, "force": "yes"}, {"credential": {}, "password": "x"},
                 [1]):
        status, answer = post(fresh, "/auth/passkey/login", body)
        assert (status, answer["exc"]) == (400, "InvalidCall"), body
    status, answer = post(fresh, "/auth/passkey/options", {"username": 3})
    assert (status, answer["exc"]) == (400, "InvalidCall")
    status, answer = post(fresh, "/auth/passkey/login", {"credential": {}, "public_key": "not a point"})
    assert (status, answer["exc"]) == (400, "InvalidCall") and "public_key" in answer["err"][0]
    assert set(passkeys_module.PASSKEY_LOGIN_KEYS) == {"credential", "force", "public_key"}


def test_a_passkey_login_agrees_on_keys_as_a_version_2_password_login_does(auth_app, fake_clock):
    """docs/protocol.md section 16: a passkey login with a public_key answers version 2, no key; where the tenant
    requires version 2, one without is KeyAgreementRequired."""
    from kernel import KeyPair, derive_keys

    app = auth_app(auth={"passkeys": "allowed", "key_agreement": "required"})
    alice = Client(app=app, clock=fake_clock, version=2)
    alice.login("alice", PASSWORD)
    laptop = authenticator()
    register(alice, laptop)
    fresh = client(app, fake_clock)
    status, answer = post(fresh, "/auth/passkey/login", {"credential": laptop.get(login_options(fresh))})
    assert (status, answer["exc"]) == (400, "KeyAgreementRequired")
    pair = KeyPair()
    status, answer = post(fresh, "/auth/passkey/login", {"credential": laptop.get(login_options(fresh)),
                                                          "public_key": pair.public})
    assert status == 200 and answer["version"] == 2 and "key" not in answer, answer
    keys = derive_keys(pair.agree(answer["public_key"]), answer["sid"], "localhost", pair.public, answer["public_key"])
    fresh.session = Session(answer["sid"], keys.call_mac, answer["expires"], answer["user"], answer["limits"], keys)
    fresh.encrypt = True
    assert fresh.call("passkeys")["mode"] == "allowed"


# -- refusals: each a clear {exc, err}, and nothing written -----------------------------------------------------------

@pytest.fixture
def alice_with_passkey(app, fake_clock):
    alice = logged_in(app, fake_clock)
    laptop = authenticator()
    register(alice, laptop)
    return laptop


def refused(app, fake_clock, credential, reason: str) -> dict:
    """A login with ``credential`` is 401 InvalidCredential whose message says ``reason``; nothing written."""
    before, sessions = stored(app), live_sessions(app)
    status, answer = passkey_login(client(app, fake_clock), credential)
    assert (status, answer["exc"]) == (401, "InvalidCredential"), answer
    assert reason in answer["err"][0], answer
    assert stored(app) == before and live_sessions(app) == sessions
    return answer


def test_a_replayed_assertion_is_refused(app, fake_clock, alice_with_passkey):
    fresh = client(app, fake_clock)
    assertion = alice_with_passkey.get(login_options(fresh))
    assert passkey_login(fresh, assertion)[0] == 200
    refused(app, fake_clock, assertion, "already used")


def test_one_challenge_serves_one_of_two_parallel_logins(app, fake_clock, alice_with_passkey):
    options = login_options(client(app, fake_clock))
    assertions = [alice_with_passkey.get(options) for _ in range(2)]  # counters 1 and 2, one challenge
    barrier, results = threading.Barrier(2), []

    def log_in(assertion):
        barrier.wait()
        results.append(passkey_login(client(app, fake_clock), assertion))

    threads = [threading.Thread(target=log_in, args=(a,)) for a in assertions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 401], results
    assert [a["exc"] for s, a in results if s == 401] == ["InvalidCredential"]
    assert live_sessions(app) == 2  # the registering session and one new


def test_an_expired_challenge_is_refused(app, fake_clock, alice_with_passkey):
    options = login_options(client(app, fake_clock))
    fake_clock.advance(passkeys_module.CHALLENGE_TTL + 1)
    refused(app, fake_clock, alice_with_passkey.get(options), "expired")


def test_a_challenge_just_before_its_end_still_serves(app, fake_clock, alice_with_passkey):
    options = login_options(client(app, fake_clock))
    fake_clock.advance(passkeys_module.CHALLENGE_TTL - 1)
    assert passkey_login(client(app, fake_clock), alice_with_passkey.get(options))[0] == 200


def test_a_wrong_origin_is_refused(app, fake_clock, alice_with_passkey):
    options = login_options(client(app, fake_clock))
    refused(app, fake_clock, alice_with_passkey.get(options, origin="https://localhost.evil.example"), "origin")


def test_a_wrong_rp_id_is_refused(app, fake_clock, alice_with_passkey):
    options = login_options(client(app, fake_clock))
    refused(app, fake_clock, alice_with_passkey.get(options, rp_id="evil.example"), "RP ID")


def test_a_signature_counter_that_goes_backwards_is_refused(app, fake_clock, alice_with_passkey):
    fresh = client(app, fake_clock)
    for _ in range(3):
        assert passkey_login(fresh, alice_with_passkey.get(login_options(fresh)))[0] == 200
    options = login_options(fresh)
    refused(app, fake_clock, alice_with_passkey.get(options, sign_count=2), "counter")


def test_an_authenticator_that_counts_nothing_logs_in_again_and_again(app, fake_clock):
    alice = logged_in(app, fake_clock)
    synced = authenticator(counting=False)
    register(alice, synced)
    for _ in range(3):
        fresh = client(app, fake_clock)
        assert passkey_login(fresh, synced.get(login_options(fresh)))[0] == 200


def test_an_assertion_of_a_removed_passkey_is_refused(app, fake_clock):
    alice = logged_in(app, fake_clock)
    laptop = authenticator()
    passkey = register(alice, laptop)
    options = login_options(client(app, fake_clock))
    alice.call("remove_passkey", passkey["id"])
    refused(app, fake_clock, laptop.get(options), "no such passkey")


def signed_in_with(app, fake_clock, passkey: SoftAuthenticator) -> Client:
    fresh = client(app, fake_clock)
    status, answer = passkey_login(fresh, passkey.get(login_options(fresh)))
    assert status == 200, answer
    return fresh


def test_removing_a_passkey_ends_the_other_sessions_it_opened(app, fake_clock, caplog):
    """A passkey is removed because its device may be lost: the sessions its logins opened end with it (the
    caller's own stays, as change_password keeps it); the password's and another passkey's go on."""
    caplog.set_level(logging.INFO, logger="bastion.security")
    alice = logged_in(app, fake_clock)
    laptop, phone = authenticator(), authenticator()
    laptops = register(alice, laptop, "Laptop")
    register(alice, phone, "Phone")
    on_laptop = [signed_in_with(app, fake_clock, laptop) for _ in range(3)]
    on_phone = signed_in_with(app, fake_clock, phone)
    assert live_sessions(app) == 5
    # Removed from one of its own sessions: that one stays, its two others end.
    assert on_laptop[0].call("remove_passkey", laptops["id"]) is True
    for ended in on_laptop[1:]:
        with pytest.raises(UnknownSession):
            ended.call("passkeys")
    assert [p["name"] for p in on_laptop[0].call("passkeys")["passkeys"]] == ["Phone"]
    assert alice.call("passkeys")["passkeys"] and on_phone.call("passkeys")["passkeys"]
    assert live_sessions(app) == 3
    assert [m for m in security_events(caplog) if m.startswith("event=passkey_removed ")][0].count(
        "sessions_ended=2") == 1


def test_a_deleted_users_passkeys_go_with_it(app, fake_clock):
    from bastion_auth import users

    alice = logged_in(app, fake_clock)
    laptop = authenticator()
    register(alice, laptop)
    with app.runtime.bind("localhost"):
        assert users.delete("alice")
    assert stored(app) == []
    refused(app, fake_clock, laptop.get(login_options(client(app, fake_clock))), "no such passkey")


def test_an_authenticator_that_does_not_verify_its_user_is_refused(app, fake_clock):
    alice = logged_in(app, fake_clock)
    careless = authenticator(verifies=False)
    with pytest.raises(InvalidCredential):
        register(alice, careless)
    assert stored(app) == []


def test_a_passkey_of_one_tenant_is_refused_on_another(app, fake_clock):
    alpha = logged_in(app, fake_clock, host="alpha.localhost")
    keys = authenticator("alpha.localhost")
    register(alpha, keys)
    beta = client(app, fake_clock, "beta.localhost")
    options = login_options(beta)
    # made for beta's challenge and origin, by alpha's credential (its RP ID alpha's): no such passkey on beta
    status, answer = passkey_login(beta, keys.get(options, credential=keys.credentials[0],
                                                  origin="http://beta.localhost"))
    assert (status, answer["exc"]) == (401, "InvalidCredential") and "no such passkey" in answer["err"][0]
    # alpha's own assertion replayed on beta: its challenge is alpha's
    assertion = keys.get(login_options(client(app, fake_clock, "alpha.localhost")))
    status, answer = passkey_login(beta, assertion)
    assert (status, answer["exc"]) == (401, "InvalidCredential") and "challenge" in answer["err"][0]
    assert passkey_login(client(app, fake_clock, "alpha.localhost"), assertion)[0] == 200  # still alpha's


def test_passkeys_off_in_a_tenant(app, fake_clock):
    plain = client(app, fake_clock, "plain.localhost")
    for path, body in (("/auth/passkey/options", {}), ("/auth/passkey/login", {"credential": {}})):
        status, answer = post(plain, path, body)
        assert (status, answer["exc"]) == (404, "NotFound") and "passkeys are off" in answer["err"][0]
    alice = logged_in(app, fake_clock, host="plain.localhost")
    for name, args in (("passkey_options", ()), ("rename_passkey", ("x" * 43, "A")), ("remove_passkey", ("x" * 43,))):
        with pytest.raises(NotFound):
            alice.call(name, *args)
    assert alice.call("passkeys") == {"mode": "off", "passkeys": []}  # what a page asks before it offers them
    strict = logged_in(app, fake_clock, host="strict.localhost")
    assert strict.call("passkeys") == {"mode": "required", "passkeys": []}


def test_a_passkey_login_on_a_tenant_where_passkeys_are_off_is_refused(app, fake_clock, alice_with_passkey):
    """An assertion of localhost sent to plain.localhost (passkeys off): 404, before anything is read."""
    assertion = alice_with_passkey.get(login_options(client(app, fake_clock)))
    status, answer = passkey_login(client(app, fake_clock, "plain.localhost"), assertion)
    assert (status, answer["exc"]) == (404, "NotFound")


def test_required_refuses_password_logins_of_users_who_have_a_passkey(app, fake_clock):
    strict = logged_in(app, fake_clock, host="strict.localhost")  # no passkey yet: the password is enough
    keys = authenticator("strict.localhost")
    register(strict, keys)
    with pytest.raises(PasskeyRequired):
        client(app, fake_clock, "strict.localhost").login("alice", PASSWORD)
    with pytest.raises(InvalidCredential):  # a wrong password is told as wrong, as always
        client(app, fake_clock, "strict.localhost").login("alice", "wrong password")
    fresh = client(app, fake_clock, "strict.localhost")
    assert passkey_login(fresh, keys.get(login_options(fresh)))[0] == 200


def test_failed_passkey_logins_weigh_against_the_origin(app, fake_clock, alice_with_passkey):
    options = login_options(client(app, fake_clock))
    assertion = alice_with_passkey.get(options, origin="http://evil.example")
    for _ in range(10):  # abuse_max
        status, answer = passkey_login(client(app, fake_clock), assertion)
    status, answer = passkey_login(client(app, fake_clock), assertion)
    assert (status, answer["exc"]) == (429, "Abusive")
    assert post(client(app, fake_clock, origin="192.0.2.1"), "/auth/passkey/options", {})[0] == 200


# -- operators --------------------------------------------------------------------------------------------------------

def test_the_commands_list_and_remove_passkeys_and_export_carries_them(storage, make_app, fake_clock, tmp_path,
                                                                     capsys):
    sections, only = storage
    if "mem://" in sections["bastion"]["storage"]:
        pytest.skip("a command opens its own runtime: mem:// is another memory")
    merged = {"bastion": {"development": True, **sections["bastion"]}, "auth": {**CHEAP, "passkeys": "allowed"},
              "users": {"alice@localhost": cheap_hash(PASSWORD)},
              **{key: value for key, value in sections.items() if key != "bastion"}}
    app = make_app(merged, only=[*only, "auth"], clock=time.time)  # the commands' clock: they see its sessions live
    alice = logged_in(app, fake_clock)
    laptop = authenticator()
    passkey = register(alice, laptop, "Laptop")
    ini = write_config(merged, tmp_path)
    assert main(["--config", str(ini), "passkeys", "alice", "--domain", "localhost"]) == 0
    out = capsys.readouterr().out
    assert f"{passkey['id']}  Laptop" in out and "1 passkey." in out and "--remove=ID" in out
    assert main(["--config", str(ini), "users", "--domain", "localhost"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("1 live session; 1 passkey.")
    exported = tmp_path / "export.jsonl"
    assert main(["--config", str(ini), "export", "--tenant", "localhost", "-o", str(exported)]) == 0
    assert '"Passkey"' in exported.read_text()
    on_laptop = signed_in_with(app, fake_clock, laptop)
    assert main(["--config", str(ini), "passkeys", "alice", "--domain", "localhost", f"--remove={passkey['id']}"]) == 0
    out, err = capsys.readouterr()
    assert "Removed the passkey" in out and "ended its 1 live session" in out and "sessions_ended=1" in err
    assert alice.call("passkeys")["passkeys"] == []  # the password's session goes on; the passkey's ended
    with pytest.raises(UnknownSession):
        on_laptop.call("passkeys")


def test_a_passkey_removed_while_its_login_runs_leaves_no_session(app, fake_clock, monkeypatch):
    from bastion_auth import passkey_store
    from bastion_auth.plugin import get_auth

    alice = logged_in(app, fake_clock)
    laptop = authenticator()
    passkey = register(alice, laptop)
    sessions = get_auth(app.runtime).sessions
    create = sessions.create

    def create_then_remove(domain, username, now, force=False, origin="", **agreed):
        session = create(domain, username, now, force=force, origin=origin, **agreed)
        passkey_store.remove("alice", passkey["id"])  # the user removes it from another tab meanwhile
        return session

    monkeypatch.setattr(sessions, "create", create_then_remove)
    fresh = client(app, fake_clock)
    status, answer = passkey_login(fresh, laptop.get(login_options(fresh)))
    assert (status, answer["exc"]) == (401, "InvalidCredential")
    assert live_sessions(app) == 1  # alice's own, no other
