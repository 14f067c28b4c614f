"""Accounts, access control and record history on every driver: mem://, SQLite, PostgreSQL and Redis.

The installed plugins (auth, permissions, todo, the storage drivers) in
process, on the fake clock; each test works in a fresh domain, so that the
PostgreSQL database and the Redis server are shared by the whole module.
tests/test_accounts_e2e.py races a password change against calls on two
real gunicorn workers.
"""

from __future__ import annotations

import uuid

import pytest
from bastion_auth import users
from bastion_auth.plugin import get_auth

from kernel.core.errors import AccountLocked, Forbidden, InvalidCredential, UnknownSession, ValidationError, VersionConflict

DRIVERS = ["mem", "sqlite", "postgresql", "redis"]
PASSWORD = "correct horse battery"
NEW = "a brand new passphrase"


@pytest.fixture(scope="module")
def pg_url(postgres_server) -> str:
    return postgres_server.create_database(f"accounts_{uuid.uuid4().hex[:10]}")


@pytest.fixture(params=DRIVERS)
def storage_url(request, tmp_path) -> str:
    """The storage of the test's app, records and state alike."""
    if request.param == "mem":
        return "mem://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/bastion.sqlite3"
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")
    return request.getfixturevalue("redis_server").url


@pytest.fixture
def domain() -> str:
    return f"t{uuid.uuid4().hex[:10]}.localhost"


@pytest.fixture
def deployment(users_app, storage_url, domain):
    """alice (no role), bob (admin) and carol (editor) in a fresh domain; clear_completed is for admins."""
    def make(**auth):
        return users_app({f"alice@{domain}": PASSWORD, f"bob@{domain}": PASSWORD, f"carol@{domain}": PASSWORD},
                         sections={"bastion": {"storage": storage_url}, "auth": auth,
                                   "roles": {f"bob@{domain}": "admin", f"carol@{domain}": "editor"},
                                   "permissions": {"clear_completed": "admin", "history": "admin, editor"}})
    return make


def test_a_password_change_ends_the_other_sessions_and_not_the_current_one(deployment, login, domain):
    deployment()
    current, other, elsewhere = (login(f"alice@{domain}", remote_addr=f"127.0.0.{i}") for i in (1, 2, 3))
    bob = login(f"bob@{domain}")
    assert len(current.call("sessions")) == 3
    assert current.call("change_password", PASSWORD, NEW) is True
    for ended in (other, elsewhere):
        with pytest.raises(UnknownSession):
            ended.call("get_all")
    assert current.call("get_all") == []
    assert [s["current"] for s in current.call("sessions")] == [True]
    assert bob.call("get_all") == []  # another user's sessions are untouched
    with pytest.raises(InvalidCredential):
        login(f"alice@{domain}")
    again = login(f"alice@{domain}", password=NEW)
    assert current.call("end_sessions") == 1
    with pytest.raises(UnknownSession):
        again.call("get_all")


def test_a_wrong_old_password_locks_the_account_after_the_usual_number_of_failures(deployment, login, domain):
    deployment(abuse_max=0)  # the default account_max_failures: 5
    alice = login(f"alice@{domain}")
    for _ in range(4):
        with pytest.raises(InvalidCredential):
            alice.call("change_password", "a wrong guess", NEW)
    with pytest.raises(AccountLocked):  # the fifth locks the account, and says so
        alice.call("change_password", "a wrong guess", NEW)
    with pytest.raises(AccountLocked):
        alice.call("change_password", PASSWORD, NEW)
    with pytest.raises(AccountLocked):
        login(f"alice@{domain}", remote_addr="10.1.2.3")
    with pytest.raises(ValidationError):  # the policy is checked first, and costs no attempt
        alice.call("change_password", PASSWORD, "short")
    assert alice.call("get_all") == []


def test_permissions_deny_with_403_and_allow_with_the_right_role(deployment, login, domain):
    app = deployment()
    alice, bob, carol = (login(f"{name}@{domain}") for name in ("alice", "bob", "carol"))
    todo = alice.call("add", "shared")
    alice.call("update", todo["id"], 1, done=True)
    for client, name, args in ((alice, "clear_completed", ()), (carol, "clear_completed", ()),
                               (alice, "history", (todo["id"],))):
        with pytest.raises(Forbidden):
            client.call(name, *args)
    assert len(carol.call("history", todo["id"])) == 2
    assert bob.call("clear_completed") == 1
    assert len(bob.call("history", todo["id"])) == 3
    # Roles are stored with the user, on this driver too: a change counts from the next call.
    with app.runtime.bind(domain):
        assert users.set_roles("alice", ["admin"], get_auth(app.runtime).roles_epoch) is True
    assert alice.call("clear_completed") == 0


def test_history_records_who_and_which_version_in_the_same_commit(deployment, login, domain, fake_clock):
    deployment()
    alice, carol = login(f"alice@{domain}"), login(f"carol@{domain}")
    todo = alice.call("add", "one")
    fake_clock.advance(30)
    carol.call("update", todo["id"], 1, text="two")
    with pytest.raises(VersionConflict):
        alice.call("update", todo["id"], 1, done=True)  # a stale version: nothing committed
    with pytest.raises(ValidationError):
        alice.call("update", todo["id"], 2, text="   ")  # refused by the model: nothing committed
    alice.call("remove", todo["id"], 2)
    start = fake_clock() - 30
    assert carol.call("history", todo["id"]) == [
        {"vsn": 1, "at": start, "by": "alice", "data": {"done": False, "text": "one"}},
        {"vsn": 2, "at": start + 30, "by": "carol", "data": {"done": False, "text": "two"}},
        {"vsn": 3, "at": start + 30, "by": "alice", "data": None},
    ]


def test_history_limits_hold(deployment, login, domain):
    deployment()
    carol = login(f"carol@{domain}")
    todo = carol.call("add", "v1")
    for vsn in range(1, 103):
        todo = carol.call("update", todo["id"], vsn, text=f"v{vsn + 1}")
    versions = carol.call("history", todo["id"])
    assert [v["vsn"] for v in versions] == list(range(4, 104))  # the last 100 of 103
    assert versions[-1]["data"]["text"] == "v103"
