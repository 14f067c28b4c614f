"""The operator commands on a SQLite storage that an in-process app shares, through the ``bastion`` console script
(each in its own process) or :func:`kernel.cli.main`: they answer in sentences, say so when there is nothing to
list, list the locks of usernames no user has, and every user's roles."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from auth_helpers import CHEAP_AUTH, assert_error, login_body, send

from kernel.testing import main, write_config

BASTION = str(Path(sys.executable).with_name("bastion"))
LOCK_END = r"locked until \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(in \d+ s\)"


def bastion(ini: Path, *argv: str) -> str:
    """Run ``bastion --config INI ARGV`` in its own process; return what it printed (its security events go to
    standard error)."""
    done = subprocess.run([BASTION, "--config", str(ini), *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done
    return done.stdout


def run(ini: Path, capsys, *argv: str) -> str:
    """Run ``bastion --config INI ARGV`` in this process; return what it printed."""
    capsys.readouterr()
    assert main(["--config", str(ini), *argv]) == 0
    return capsys.readouterr().out


@pytest.fixture
def deployment(tmp_path, make_app):
    """``(ini, app)``: a configuration on a SQLite file, and an app on it keeping real time, as a server would."""
    sections = {"bastion": {"development": True, "storage": f"sqlite:///{tmp_path / 'bastion.sqlite3'}"},
                "auth": {**CHEAP_AUTH, "demo_user": False}}
    app = make_app(sections, only=["storage_mem", "storage_sql", "auth"], clock=time.time)
    return write_config(sections, tmp_path), app


def test_listings_say_so_when_there_is_nothing(deployment, capsys):
    ini, _ = deployment
    assert bastion(ini, "users", "--domain", "127.0.0.1") == "No users in 127.0.0.1.\n"
    assert run(ini, capsys, "users") == "No users.\n"
    assert run(ini, capsys, "roles") == "No users.\n"
    assert run(ini, capsys, "locks", "--domain", "127.0.0.1") == "No account is locked in 127.0.0.1.\n"
    assert run(ini, capsys, "sessions") == "No live session.\n"


def test_a_lock_of_a_username_no_user_has_is_listed_and_can_be_ended(deployment, capsys):
    ini, app = deployment
    for _ in range(4):
        assert_error(send(app, "/auth/login", login_body("mallory", "a guess"), host="127.0.0.1"), 401,
                     "InvalidCredential")
    for _ in range(2):  # the fifth attempt locks, and says so; the next one finds the lock
        assert_error(send(app, "/auth/login", login_body("mallory", "a guess"), host="127.0.0.1"), 429,
                     "AccountLocked")

    [lock] = bastion(ini, "locks").splitlines()
    assert re.fullmatch(rf"mallory@127\.0\.0\.1 is {LOCK_END}; no user has that name\.", lock), lock
    first, second = run(ini, capsys, "users", "--domain", "127.0.0.1").splitlines()
    assert first == "No users in 127.0.0.1."
    stranger = rf"mallory@127\.0\.0\.1 is no user, but is {LOCK_END} after failed logins\."
    assert re.fullmatch(stranger, second), second
    [line] = run(ini, capsys, "users").splitlines()  # a domain without users, found all the same
    assert re.fullmatch(stranger, line), line

    assert run(ini, capsys, "unlock", "mallory", "--domain", "127.0.0.1") == "Unlocked mallory@127.0.0.1.\n"
    assert run(ini, capsys, "locks") == "No account is locked.\n"
    assert run(ini, capsys, "users", "--domain", "127.0.0.1") == "No users in 127.0.0.1.\n"


def test_roles_lists_every_users_roles(deployment, capsys, monkeypatch):
    ini, _ = deployment
    for user, domain in (("alice", "localhost"), ("bob", "a.localhost")):
        monkeypatch.setattr("sys.stdin", io.StringIO(f"{user}'s password\n"))
        assert run(ini, capsys, "adduser", user, "--domain", domain, "--password-stdin") == \
            f"Created the user {user}@{domain}.\n"
    assert run(ini, capsys, "roles", "alice", "--domain", "localhost", "--set", "editor,admin") == \
        "alice@localhost now has the roles admin, editor.\n"
    assert bastion(ini, "roles") == "bob@a.localhost has no roles.\nalice@localhost has the roles admin, editor.\n"
    assert run(ini, capsys, "roles", "--domain", "localhost") == "alice@localhost has the roles admin, editor.\n"
    assert run(ini, capsys, "users") == "bob@a.localhost: no live session.\nalice@localhost: no live session.\n"
    with pytest.raises(SystemExit, match="^bastion: roles --set needs a USER and --domain$"):
        main(["--config", str(ini), "roles", "--set", "admin"])
    with pytest.raises(SystemExit, match="^bastion: roles USER needs --domain$"):
        main(["--config", str(ini), "roles", "alice"])
