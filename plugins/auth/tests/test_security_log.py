"""The security log: one ``bastion.security`` line per event, and never a secret in any line.

A whole scenario runs against gunicorn with 2 workers (and the commands in
their own processes, logging to the same file through the INI file's logging
sections, with every hook call traced): good and bad logins, calls, a replay,
a stale call, a bad signature, a lock, a ban, a logout, passwd, end-sessions,
unlock, unban, adduser and deluser. Then every line the server and the
commands wrote is scanned for every password, session key, MAC, sid and hash
the scenario met.
"""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bastion_auth.testing import cheap_hash

from kernel import b64url
from kernel.testing import Client, authorization, new_nonce, request_mac

PASSWORDS = {"alice": "alice-first-Passw0rd", "bob": "bob-Passw0rd-4ever"}
NEW_ALICE = "alice-second-Passw0rd"
DAVE = "dave-Passw0rd-fresh"
WRONG = ["wrong-guess-0001", "wrong-guess-0002", "wrong-guess-0003", "wrong-guess-0004", "wrong-guess-0005",
         "wrong-guess-0006"]
#: Every event the scenario makes, and the fields each must carry.
EVENTS = {
    "login": {"domain", "origin", "user", "request_id", "session"},
    "login_failed": {"domain", "origin", "user", "request_id", "reason"},
    "logout": {"domain", "origin", "user", "request_id", "session"},
    "bad_signature": {"domain", "origin", "user", "request_id", "session"},
    "replayed_call": {"domain", "origin", "user", "request_id", "session"},
    "stale_call": {"domain", "origin", "user", "request_id", "session"},
    "banned": {"domain", "origin", "request_id", "retry_after"},
    "account_locked": {"domain", "origin", "user", "request_id", "retry_after"},
    "user_created": {"domain", "origin", "user"},
    "user_deleted": {"domain", "origin", "user"},
    "password_changed": {"domain", "origin", "user", "sessions_ended"},
    "sessions_ended": {"domain", "origin", "user", "sessions_ended"},
    "account_unlocked": {"domain", "origin", "user"},
    "unbanned": {"domain", "origin", "banned_origin"},
}

LOGGING = {
    "loggers": {"keys": "root"},
    "handlers": {"keys": "file"},
    "formatters": {"keys": "json"},
    "logger_root": {"level": "INFO", "handlers": "file"},
    "handler_file": {"class": "FileHandler", "args": "('%(here)s/bastion.log', 'a')", "formatter": "json"},
    "formatter_json": {"class": "kernel.ops.logs.JsonFormatter"},
}


class Secrets:
    """Everything that must never be written in a log."""

    def __init__(self):
        self.values: set[str] = set(PASSWORDS.values()) | {NEW_ALICE, DAVE, *WRONG}

    def session(self, client: Client) -> None:
        session = client.session
        self.values |= {session.sid, b64url(session.key), session.key.hex(), base64.b64encode(session.key).decode()}

    def add(self, *values: str) -> None:
        self.values |= {v for v in values if v}


def signed(client: Client, secrets: Secrets, path: str, body: bytes, ts: str | None = None, nonce: str | None = None,
           mac: str | None = None):
    """Send a call signed by hand, remembering its MAC and the answer's."""
    session = client.session
    ts = ts or str(int(time.time()))
    nonce = nonce or new_nonce()
    mac = mac or request_mac(session.key, ts, nonce, path, client.domain, body)
    header = authorization(session.sid, ts, nonce, mac)
    secrets.add(mac, header)
    answer = client.request(path, body, {"Authorization": header})
    secrets.add(answer.headers.get("server-authorization", "").partition('mac="')[2].rstrip('"'))
    return answer, (ts, nonce, mac)


def bastion(ini: Path, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run the ``bastion`` command in its own process (it logs to the same file, through the same sections)."""
    command = [str(Path(sys.executable).with_name("bastion")), "--config", str(ini), *argv]
    done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "BASTION_TRACE_PLUGINS": "1"})
    assert done.returncode == 0, done.stderr
    return done


def records_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(path: Path, predicate, what: str) -> list[dict]:
    deadline = time.monotonic() + 20
    while True:
        records = records_of(path) if path.exists() else []
        if predicate(records):
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not in the log within 20 s")
        time.sleep(0.05)  # the lines of a request are written after its answer: no event to wait on


@pytest.fixture
def scenario(gunicorn_server, tmp_path):
    """Run the whole scenario; return (log records, every text written, the secrets)."""
    users = {"alice@a.localhost": cheap_hash(PASSWORDS["alice"]), "bob@b.localhost": cheap_hash(PASSWORDS["bob"])}
    config = {
        "bastion": {"development": True, "storage": f"sqlite:///{tmp_path / 'bastion.sqlite3'}"},
        "auth": {"argon2_memory_cost": 64, "argon2_time_cost": 1, "demo_user": False},
        "users": users,
        **LOGGING,
    }
    server = gunicorn_server(config, workers=2, env={"BASTION_TRACE_PLUGINS": "1"})
    ini = Path(server.log_path).parent / "bastion.ini"
    logfile = ini.parent / "bastion.log"
    secrets = Secrets()
    secrets.add(*users.values())
    outputs = []

    # good login, calls, a bad password, an unknown user
    alice = Client(server.url, host="a.localhost")
    alice.login("alice", PASSWORDS["alice"])
    secrets.session(alice)
    for body in (b'{"args": ["buy milk"]}', b'{"args": ["call mum"]}'):
        assert signed(alice, secrets, "/api/add", body)[0].status == 200
    assert signed(alice, secrets, "/api/get_all", b"")[0].status == 200
    for username, password in (("alice", WRONG[0]), ("mallory", WRONG[1])):
        assert Client(server.url, host="a.localhost").request(
            "/auth/login", json.dumps({"username": username, "password": password}).encode()).status == 401
    # a replay, a stale call, a bad signature (weights 3 + 1 + 3, and 2 for the logins: under the ban)
    answer, (ts, nonce, mac) = signed(alice, secrets, "/api/get_all", b"")
    assert answer.status == 200
    assert signed(alice, secrets, "/api/get_all", b"", ts=ts, nonce=nonce, mac=mac)[0].status == 401
    assert signed(alice, secrets, "/api/get_all", b"", ts=str(int(time.time()) - 3600))[0].status == 401
    tampered_mac = request_mac(alice.session.key, ts, new_nonce(), "/api/add", "a.localhost", b'{"args": ["x"]}')
    answer, _ = signed(alice, secrets, "/api/add", b'{"args": ["y"]}', mac=tampered_mac)
    assert answer.status == 401 and answer.json()["exc"] == "InvalidSignature"
    # a lock: five wrong passwords for bob, then his right one is refused
    for wrong, status in zip(WRONG[:5], (401, 401, 401, 401, 429), strict=True):  # the fifth locks, and says so
        assert Client(server.url, host="b.localhost").request(
            "/auth/login", json.dumps({"username": "bob", "password": wrong}).encode()).status == status
    locked = Client(server.url, host="b.localhost").request(
        "/auth/login", json.dumps({"username": "bob", "password": PASSWORDS["bob"]}).encode())
    assert locked.status == 429 and locked.json()["exc"] == "AccountLocked"
    # a ban: ten unknown users from one address
    for i in range(10):
        answer = Client(server.url, host="c.localhost").request(
            "/auth/login", json.dumps({"username": f"guess{i}", "password": WRONG[5]}).encode())
        assert answer.status == 401
    assert Client(server.url, host="c.localhost").request(
        "/auth/login", json.dumps({"username": "guess", "password": WRONG[5]}).encode()).status == 429
    # logout
    alice.logout()
    # the administration, each command in its own process
    outputs.append(bastion(ini, "passwd", "alice", "--domain", "a.localhost", "--password-stdin", stdin=NEW_ALICE + "\n"))
    again = Client(server.url, host="a.localhost")
    again.login("alice", NEW_ALICE)
    secrets.session(again)
    outputs.append(bastion(ini, "sessions", "--domain", "a.localhost"))
    outputs.append(bastion(ini, "end-sessions", "alice", "--domain", "a.localhost"))
    outputs.append(bastion(ini, "unlock", "bob", "--domain", "b.localhost"))
    outputs.append(bastion(ini, "unban", "127.0.0.1", "--domain", "c.localhost"))
    outputs.append(bastion(ini, "adduser", "dave", "--domain", "a.localhost", "--password-stdin", stdin=DAVE + "\n"))
    outputs.append(bastion(ini, "users"))
    outputs.append(bastion(ini, "deluser", "alice", "--domain", "a.localhost"))
    with __import__("sqlite3").connect(tmp_path / "bastion.sqlite3") as db:  # the stored hashes (dave's, alice's new)
        secrets.add(*[row[0] for row in db.execute("SELECT data FROM bastion_records")])
    records = wait_for(logfile, lambda rs: {r.get("event") for r in rs if r["logger"] == "bastion.security"}
                       >= set(EVENTS), "every event")
    texts = [logfile.read_text(), server.log()] + [o.stdout + o.stderr for o in outputs]
    return records, texts, secrets


def test_every_security_event_is_one_line_with_its_fields(scenario):
    records, _, _ = scenario
    security = [r for r in records if r["logger"] == "bastion.security"]
    calls = {r["request_id"]: r for r in records if r.get("event") == "call"}
    for event, fields in EVENTS.items():
        lines = [r for r in security if r["event"] == event]
        assert lines, f"no {event} line"
        for line in lines:
            assert fields <= set(line), f"{event}: {line}"
            if line["origin"] == "cli":  # a command says who ran it
                assert line["admin"], line
            if "request_id" in fields:  # made during a request: the request's call line has the same id
                assert line["request_id"] in calls, line
    by_event = {e: [r for r in security if r["event"] == e] for e in EVENTS}
    assert len(by_event["account_locked"]) == 1 and by_event["account_locked"][0]["user"] == "bob"
    assert len(by_event["banned"]) == 1 and by_event["banned"][0]["domain"] == "c.localhost"
    reasons = sorted((r["user"], r["reason"]) for r in by_event["login_failed"] if r["domain"] != "c.localhost")
    assert reasons == [("alice", "invalid_credential"), ("bob", "account_locked")] + [("bob", "invalid_credential")] * 5 \
        + [("mallory", "invalid_credential")]
    assert [r.get("known_user") for r in by_event["login_failed"] if r["user"] == "mallory"] == [False]
    assert by_event["replayed_call"][0]["user"] == "alice" and by_event["stale_call"][0]["user"] == "alice"
    assert {r["origin"] for r in by_event["user_created"]} == {"[users]", "cli"}  # the bootstrap, and adduser
    assert {r["origin"] for r in by_event["unbanned"] + by_event["user_deleted"]} == {"cli"}
    assert by_event["unbanned"][0]["banned_origin"] == "127.0.0.1" and by_event["unbanned"][0]["was_banned"] is True
    assert by_event["account_unlocked"][0]["was_locked"] is True
    assert by_event["password_changed"][0]["sessions_ended"] == 0  # alice had logged out
    assert by_event["sessions_ended"][0]["sessions_ended"] == 1
    for r in security:
        assert r["level"] == ("WARNING" if r["event"] in ("login_failed", "bad_signature", "replayed_call", "banned",
                                                           "account_locked") else "INFO"), r


def test_no_line_of_the_whole_scenario_holds_a_secret(scenario):
    records, texts, secrets = scenario
    assert len(records) > 200 and any(r["logger"] == "bastion.plugins" for r in records)  # traced, too
    assert len(secrets.values) > 30
    found = [(secret, text[max(0, text.find(secret) - 80):text.find(secret) + 80])
             for secret in secrets.values for text in texts if secret in text]
    assert found == []
    for text in texts:
        assert "$argon2" not in text and "Bastion-HMAC sid=" not in text
        assert "Traceback" not in text


def test_an_expired_session_is_a_security_event(auth_app, fake_clock, caplog):
    from kernel import ExpiredSession

    app = auth_app(auth={"idle_timeout": 60})
    client = Client(app=app, host="localhost", clock=fake_clock)
    client.login("alice", "correct horse battery")
    fake_clock.advance(61)
    caplog.clear()  # the login's own event is captured too when an earlier test left the logger at INFO
    with caplog.at_level(logging.INFO, logger="bastion.security"), pytest.raises(ExpiredSession):
        client.call("echo", "x")
    [line] = [r for r in caplog.records if r.name == "bastion.security"]
    assert str(line.msg).startswith("event=session_expired request_id=") and "user=alice" in str(line.msg)
    assert app.runtime.metrics.enabled
