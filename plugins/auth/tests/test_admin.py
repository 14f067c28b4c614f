"""The administration commands on every driver, against a gunicorn server (2 workers) on the same storage.

``sessions``, ``users`` (live sessions and locks), ``end-sessions``,
``unlock`` and ``unban`` act on the state the servers share, on SQLite,
PostgreSQL and Redis (mem:// lives in one process: moot), and each change is
a security event.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from bastion_auth.testing import cheap_hash

from kernel import AccountLocked, UnknownSession
from kernel.testing import Client, main

PASSWORD = "correct horse battery"


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
def storage(request, tmp_path):
    """A fresh storage URL (and its sections) on each driver."""
    if request.param == "sqlite":
        return {"bastion": {"storage": f"sqlite:///{tmp_path / 'bastion.sqlite3'}"}}
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_server").create_database(f"admin_{uuid.uuid4().hex[:8]}")
        return {"bastion": {"storage": url}}
    redis = request.getfixturevalue("redis_server")
    return {"bastion": {"storage": redis.url}, "storage_redis": {"key_prefix": f"admin-{uuid.uuid4().hex[:8]}"}}


@pytest.fixture
def deployment(storage, gunicorn_server):
    sections = {
        "bastion": {"development": True, **storage["bastion"]},
        "auth": {"argon2_memory_cost": 64, "argon2_time_cost": 1, "demo_user": False},
        "users": {"alice@localhost": cheap_hash(PASSWORD), "bob@localhost": cheap_hash(PASSWORD)},
        **{k: v for k, v in storage.items() if k != "bastion"},
    }
    server = gunicorn_server(sections, workers=2)
    return server, Path(server.log_path).parent / "bastion.ini"


def run(ini: Path, capsys, *argv: str) -> tuple[str, str]:
    """Run a command in this process; return what it printed (its security events are on stderr)."""
    assert main(["--config", str(ini), *argv]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def login(server, user: str, domain: str = "localhost", password: str = PASSWORD) -> Client:
    client = Client(server.url, host=domain)
    client.login(user, password)
    return client


def test_sessions_users_and_end_sessions(deployment, capsys):
    server, ini = deployment
    first, second = login(server, "alice"), login(server, "alice")
    first.call("add", "milk")
    out, _ = run(ini, capsys, "sessions", "alice", "--domain", "localhost")
    lines = out.splitlines()
    assert lines[-1] == "2 live sessions."
    for client, line in zip((first, second), lines[:2], strict=True):
        assert line.startswith(f"alice@localhost: session {client.session.sid[:8]}..., created 20")
        assert re.search(r"last seen \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ from 127\.0\.0\.1, expires ", line), line
    for client in (first, second):  # never a key, never a whole sid
        assert client.session.sid not in out and client.session.key.hex() not in out
    assert "2 live sessions." in run(ini, capsys, "sessions")[0]  # every domain
    out, _ = run(ini, capsys, "users", "--domain", "localhost")
    assert out.splitlines() == ["alice@localhost: 2 live sessions.", "bob@localhost: no live session."]
    out, err = run(ini, capsys, "end-sessions", "alice", "--domain", "localhost")
    assert out == "Ended 2 live sessions of alice@localhost.\n"
    assert re.search(r"INFO bastion\.security event=sessions_ended domain=localhost origin=cli user=alice admin=\S+ "
                     r"sessions_ended=2 sessions=", err), err
    for client in (first, second):
        with pytest.raises(UnknownSession):
            client.call("get_all")
    assert run(ini, capsys, "sessions", "alice", "--domain", "localhost")[0] == "No live session.\n"


def test_unlock_ends_a_lock_every_worker_honoured(deployment, capsys):
    server, ini = deployment
    for expected in (401, 401, 401, 401, 429):  # the fifth failure locks the account, and says so
        answer = Client(server.url, host="localhost").request(
            "/auth/login", json.dumps({"username": "bob", "password": "not his"}).encode())
        assert answer.status == expected
    with pytest.raises(AccountLocked):
        login(server, "bob")
    out, _ = run(ini, capsys, "users", "--domain", "localhost")
    assert re.search(r"^bob@localhost: no live session; locked until \S+Z \(in \d+ s\) after failed logins\.$", out, re.M), out
    out, err = run(ini, capsys, "unlock", "bob", "--domain", "localhost")
    assert out == "Unlocked bob@localhost.\n"
    assert "event=account_unlocked domain=localhost origin=cli user=bob admin=" in err and "was_locked=true" in err
    login(server, "bob").call("add", "unlocked")
    out, _ = run(ini, capsys, "unlock", "bob", "--domain", "localhost")
    assert out == "bob@localhost was not locked; its failed logins are forgotten.\n"


def test_unban_ends_a_ban_every_worker_honoured(deployment, capsys):
    server, ini = deployment

    def attempt(i: int) -> int:  # a new username each time: never an account lock
        return Client(server.url, host="ban.localhost").request(
            "/auth/login", json.dumps({"username": f"nobody{i}", "password": "guess"}).encode()).status

    assert [attempt(i) for i in range(10)] == [401] * 10
    assert attempt(10) == 429
    out, err = run(ini, capsys, "unban", "127.0.0.1", "--domain", "ban.localhost")
    assert out == "Unbanned 127.0.0.1 in ban.localhost.\n"
    assert re.search(r"event=unbanned domain=ban\.localhost origin=cli admin=\S+ banned_origin=127\.0\.0\.1 "
                     r"was_banned=true", err), err
    assert attempt(11) == 401  # weighed afresh: the ban and its weights are gone
    assert run(ini, capsys, "unban", "::1", "--domain", "ban.localhost")[0] == \
        "::1 was not banned in ban.localhost; its abuse weight is forgotten.\n"


def test_commands_refuse_bad_input_with_one_line(tmp_path, capsys, monkeypatch):
    ini = tmp_path / "bastion.ini"
    ini.write_text("[bastion]\ndevelopment = true\nstorage = mem://\n")
    for argv, message in ((("unban", "not-an-address", "--domain", "localhost"), "is not an IP address"),
                          (("sessions", "alice"), "sessions USER needs --domain"),
                          (("unlock", "bad name", "--domain", "localhost"), "username")):
        with pytest.raises(SystemExit, match=message):
            main(["--config", str(ini), *argv])


# -- what a newcomer met ------------------------------------------------------------------------------------------


def test_adduser_on_a_domain_the_server_refuses_warns(tmp_path, capsys, monkeypatch):
    ini = tmp_path / "bastion.ini"
    ini.write_text(f"[bastion]\nstorage = sqlite:///{tmp_path / 'b.sqlite3'}\ndevelopment = true\n"
                   "allowed_hosts = example.com\n[auth]\nargon2_memory_cost = 64\nargon2_time_cost = 1\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO("a good password\n"))
    assert main(["--config", str(ini), "adduser", "alice", "--domain", "example.org", "--password-stdin"]) == 0
    err = capsys.readouterr().err
    assert "warning: example.org is not in [bastion] allowed_hosts (example.com): the server refuses its requests" \
        in err
    monkeypatch.setattr(sys, "stdin", io.StringIO("a good password\n"))
    assert main(["--config", str(ini), "adduser", "bob", "--domain", "example.com", "--password-stdin"]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["hash-password"], ["hash-password", "--password-stdin"],
                                  ["adduser", "alice", "--domain", "localhost"],
                                  ["adduser", "alice", "--domain", "localhost", "--password-stdin"]])
def test_the_end_of_input_is_a_clear_error(tmp_path, argv):
    ini = tmp_path / "bastion.ini"
    ini.write_text(f"[bastion]\nstorage = sqlite:///{tmp_path / 'b.sqlite3'}\ndevelopment = true\n")
    done = subprocess.run([str(Path(sys.executable).with_name("bastion")), "--config", str(ini), *argv],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr and "EOFError" not in done.stderr
    assert re.search(r"bastion: no password (given: the input ended|on standard input)", done.stderr), done.stderr
