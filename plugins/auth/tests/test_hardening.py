"""What an attacker tried against the landed code, and what each attempt gets now (in-process, mem://)."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import falcon.testing
import pytest
from auth_helpers import PASSWORD, assert_error, auth_of, cheap_hash, login_body, send, sign

from kernel import UnknownSession, hookimpl, service, storage


class Note:
    """A record the test services write, so that a test can see whether a call ran."""

    @classmethod
    def initialize(cls, record):
        record.merge(text="")


@service
def note(text) -> str:
    """Store a note; return its id."""
    with storage() as db:
        return db.insert(Note, text=text)._id


@service
def notes() -> list:
    """Every note of the domain."""
    with storage() as db:
        return [r.text for r in db.select(Note)]


class NotesPlugin:
    @hookimpl
    def bastion_models(self):
        return [Note]

    @hookimpl
    def bastion_services(self):
        return [note, notes]


class Stats:
    """A plugin's own protected route outside /api and /auth: protection follows the route, not the path."""

    protected = True

    def on_post(self, req, resp):
        resp.media = {"stats": True}


class Docs:
    """An unprotected route whose path starts like a protected one."""

    def on_get(self, req, resp):
        resp.media = {"docs": True}


class RoutesPlugin:
    @hookimpl
    def bastion_routes(self, app):
        app.add_route("/admin/stats", Stats())
        app.add_route("/api-docs", Docs())


@pytest.fixture
def app(auth_app):
    return auth_app(plugins=[NotesPlugin(), RoutesPlugin()])


def stored_notes(app, domain="localhost") -> list:
    with app.runtime.bind(domain):
        with storage() as db:
            return [r.text for r in db.select(Note)]


def ban(app, origin="127.0.0.1", domain="localhost"):
    auth = auth_of(app)
    auth.state.set(domain, auth.abuse.key(origin), auth.clock() + 600, 600)


# -- 1. the route decides what is protected ---------------------------------------------------------


@pytest.mark.parametrize("path", ["//api/note", "///api/note", "/./api/note", "/api/../api/note", "/api/./note",
                                  "/%61pi/note", "/api%2Fnote", "/api/%6Eote", "/api/note%00", "/api\\note"])
def test_a_non_canonical_target_reaches_no_service(app, alice, path):
    body = b'{"args": ["smuggled"]}'
    headers, _ = sign(alice, path, body)  # signed for exactly the path sent: only the rule stops it
    assert_error(send(app, path, body, headers), 404, "NotFound")
    assert stored_notes(app) == []


@pytest.mark.parametrize("path", ["//api/notes", "//auth/login"])
def test_a_banned_origin_gets_nothing_through_double_slashes(app, alice, path):
    ban(app)
    assert send(app, path, login_body()).status_code == 404
    assert_error(send(app, "/api/notes", b"", sign(alice, "/api/notes")[0]), 429, "Abusive")


def test_production_refuses_plain_http_on_every_protected_route_and_only_there(auth_app):
    app = auth_app(bastion={"development": False, "allowed_hosts": "localhost"}, plugins=[RoutesPlugin()])
    for path in ("/auth/login", "/api/notes", "/admin/stats"):
        assert_error(send(app, path, b"{}"), 403, "RequireSSL")
    assert send(app, "//api/notes", b"{}").status_code == 404
    # an unprotected route is a page: over plain HTTP it moves to HTTPS, where it is served
    page = send(app, "/api-docs", method="GET")
    assert (page.status_code, page.headers["location"]) == (301, "https://localhost/api-docs")
    assert send(app, "/api-docs", method="GET", protocol="https").json == {"docs": True}


def test_a_plugin_route_declared_protected_gets_the_ban_check(app):
    assert send(app, "/admin/stats", b"{}").json == {"stats": True}
    ban(app)
    assert_error(send(app, "/admin/stats", b"{}"), 429, "Abusive")
    assert send(app, "/api-docs", method="GET").json == {"docs": True}


def test_an_empty_query_string_is_a_query_string(app, alice):
    headers, _ = sign(alice, "/api/notes")
    result = falcon.testing.simulate_request(app, "POST", "/api/notes", headers=headers, host="localhost",
                                             extras={"RAW_URI": "/api/notes?"})
    assert_error(result, 400, "InvalidCall")


def test_an_absolute_form_target_names_the_tenant(app, alice):
    """RFC 9112 section 3.2.2: the target's authority is the host, whatever Host says."""
    headers, _ = sign(alice, "/api/note", b'{"args": ["x"]}')
    result = falcon.testing.simulate_request(app, "POST", "/api/note", body=b'{"args": ["x"]}', host="localhost",
                                             headers={**headers, "Content-Type": "application/json"},
                                             extras={"RAW_URI": "http://beta.localhost/api/note"})
    # alice's session lives in localhost; the call was for beta.localhost.
    assert_error(result, 401, "UnknownSession")
    assert stored_notes(app) == [] and stored_notes(app, "beta.localhost") == []
    result = falcon.testing.simulate_request(app, "POST", "/api/note", body=b'{"args": ["x"]}', host="beta.localhost",
                                             headers={**headers, "Content-Type": "application/json"},
                                             extras={"RAW_URI": "http://localhost/api/note"})
    assert result.status_code == 200 and stored_notes(app) == ["x"]


@pytest.mark.parametrize("raw", ["*", "ftp://localhost/api/notes", "http://user@localhost/api/notes",
                                 "/api/notes#frag"])
def test_other_target_forms_are_invalid_calls(app, raw):
    result = falcon.testing.simulate_request(app, "POST", "/api/notes", host="localhost", extras={"RAW_URI": raw})
    assert_error(result, 400, "InvalidCall")


# -- 2. a call cannot outlive its session -----------------------------------------------------------


class SlowBody(io.RawIOBase):
    """A request body that arrives only when the test says so (a slow client)."""

    def __init__(self, data: bytes):
        self.data = io.BytesIO(data)
        self.started = threading.Event()
        self.go = threading.Event()

    def readable(self):
        return True

    def read(self, size=-1):
        self.started.set()
        assert self.go.wait(10)
        return self.data.read(size)


def slow_call(app, alice, path, body):
    """Start a signed call whose body is late; return (the stream, a function giving the answer)."""
    headers, _ = sign(alice, path, body)
    env = falcon.testing.create_environ(path, method="POST", host="localhost",
                                        headers={**headers, "Content-Type": "application/json",
                                                 "Content-Length": str(len(body))})
    stream = SlowBody(body)
    env["wsgi.input"] = stream
    answer = {}

    def run():
        start = falcon.testing.StartResponseMock()
        answer["body"] = json.loads(b"".join(app(env, start)))
        answer["status"] = start.status

    thread = threading.Thread(target=run)
    thread.start()
    assert stream.started.wait(10)

    def finish():
        stream.go.set()
        thread.join(10)
        return answer

    return finish


def _logout(app, alice):
    alice.logout()


def _passwd(app, alice):
    auth = auth_of(app)
    with app.runtime.bind("localhost"):
        from bastion_auth import users

        users.set_password("alice", cheap_hash("another password"))
    auth.sessions.end_all("localhost", "alice")


def _deluser(app, alice):
    auth = auth_of(app)
    with app.runtime.bind("localhost"):
        from bastion_auth import users

        users.delete("alice")
    auth.sessions.end_all("localhost", "alice")


@pytest.mark.parametrize("end", [_logout, _passwd, _deluser], ids=["logout", "passwd", "deluser"])
def test_a_call_whose_body_arrives_after_its_session_ended_does_not_run(app, alice, end):
    finish = slow_call(app, alice, "/api/note", b'{"args": ["late"]}')
    session = alice.session
    end(app, alice)
    alice.session = session
    answer = finish()
    assert answer["status"].startswith("401") and answer["body"]["exc"] == "UnknownSession", answer
    assert stored_notes(app) == []


def test_a_nonce_is_never_recorded_for_a_session_that_ended(app, alice):
    """The nonce and the session's liveness are one atomic step: the race inside step 10 is closed too."""
    auth = auth_of(app)
    original = auth.sessions.load

    def load_then_logout(domain, sid, now, value=None, _first=None):
        if _first is None:
            _first = [True]
        session = original(domain, sid, now, value) if value is not None else original(domain, sid, now)
        if _first[0]:
            _first[0] = False
            auth.sessions.end(domain, sid, "alice")  # a logout lands between the read and the nonce
        return session

    auth.sessions.load = load_then_logout
    try:
        with pytest.raises(UnknownSession):
            alice.call("note", "raced")
    finally:
        del auth.sessions.load
    assert stored_notes(app) == []


def test_a_login_that_races_deluser_keeps_no_session(app, client):
    auth = auth_of(app)
    original = auth.sessions.create

    def create_after_deluser(domain, username, now, force=False, origin="", **agreed):
        _deluser(app, None)  # the user is deleted, and her sessions ended, just before this one exists
        return original(domain, username, now, force=force, origin=origin, **agreed)

    auth.sessions.create = create_after_deluser
    try:
        result = send(app, "/auth/login", login_body())
    finally:
        del auth.sessions.create
    assert_error(result, 401, "InvalidCredential")
    assert auth.state.window_entries("localhost", _sessions_index("alice")) == []


def _sessions_index(username):
    from bastion_auth.sessions import account_key

    return account_key("user-sessions", username)


# -- 3. limits hold whatever the concurrency -------------------------------------------------------


def at_once(n, fn):
    barrier = threading.Barrier(n)

    def run(i):
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


SLOW_HASH = {"argon2_memory_cost": 4096, "argon2_time_cost": 1}  # a few ms: a wide check-then-act window


def test_forty_parallel_wrong_passwords_are_told_wrong_at_most_five_times(auth_app):
    app = auth_app(auth={**SLOW_HASH, "abuse_max": 0}, users={"bob@localhost": cheap_hash(PASSWORD, 4096)})
    answers = at_once(40, lambda i: send(app, "/auth/login", login_body("bob", f"wrong {i}"),
                                         remote_addr=f"10.0.0.{i + 1}").json["exc"])
    counts = Counter(answers)
    assert counts["InvalidCredential"] <= 5 and set(counts) <= {"InvalidCredential", "AccountLocked"}, counts
    assert_error(send(app, "/auth/login", login_body("bob", PASSWORD), remote_addr="10.1.0.1"), 429, "AccountLocked")


def test_forty_parallel_failed_logins_from_one_origin_check_at_most_ten(auth_app):
    app = auth_app(auth={**SLOW_HASH, "account_max_failures": 0})
    answers = at_once(40, lambda i: send(app, "/auth/login", login_body(f"user{i}", "wrong password")).json["exc"])
    counts = Counter(answers)
    assert counts["InvalidCredential"] <= 10 and set(counts) <= {"InvalidCredential", "Abusive"}, counts
    assert_error(send(app, "/auth/login", login_body()), 429, "Abusive")


def test_two_logins_racing_for_the_last_session_never_both_get_one(auth_app):
    app = auth_app(auth={"max_active_sessions": 1})
    auth = auth_of(app)
    both_here = threading.Barrier(2, timeout=10)
    original = auth.sessions.save

    def save_together(session, now):
        both_here.wait()  # both logins are past the password, side by side
        return original(session, now)

    auth.sessions.save = save_together
    try:
        answers = at_once(2, lambda i: send(app, "/auth/login", login_body()).status_code)
    finally:
        del auth.sessions.save
    assert answers.count(200) <= 1 and set(answers) <= {200, 409}, answers
    sids = [e.member for e in auth.state.window_entries("localhost", _sessions_index("alice"))]
    assert len([v for v in auth.state.get_many("localhost", [f"session:{s}" for s in sids]) if v]) <= 1


def test_forty_parallel_logins_never_exceed_max_active_sessions(auth_app):
    app = auth_app(auth={"max_active_sessions": 1, "account_max_failures": 0, "abuse_max": 0})
    answers = at_once(40, lambda i: send(app, "/auth/login", login_body()).status_code)
    assert answers.count(200) <= 1, Counter(answers)
    assert set(answers) <= {200, 409}


class Checking:
    """Holds every login whose password is ``password`` inside its check until the test says go.

    ``arrived(n)`` waits until n of them are inside (each holding its places in the windows), ``go()`` lets
    them all finish. Nothing sleeps: the test knows when the logins are where it wants them.
    """

    def __init__(self, app, password=PASSWORD):
        self.auth = auth_of(app)
        self.password = password
        self.inside = threading.Semaphore(0)
        self.released = threading.Event()
        self.real = self.auth.passwords.verify

    def __enter__(self):
        def verify(password, hashed):
            if password == self.password:
                self.inside.release()
                assert self.released.wait(10)
            return self.real(password, hashed)

        self.auth.passwords.verify = verify
        return self

    def arrived(self, n):
        for _ in range(n):
            assert self.inside.acquire(timeout=10), "a login never reached its password check"

    def go(self):
        self.released.set()

    def __exit__(self, *exc):
        self.released.set()
        del self.auth.passwords.verify


def live_sessions(app, username="alice"):
    auth = auth_of(app)
    return auth.sessions.live("localhost", username, auth.clock())


def test_eight_parallel_correct_logins_of_one_user_all_open_a_session(app):
    """Attempts running side by side are never refused for running: nothing about them is a failure."""
    with Checking(app) as checking, ThreadPoolExecutor(8) as pool:
        logins = [pool.submit(send, app, "/auth/login", login_body(), remote_addr=f"10.2.0.{i}") for i in range(8)]
        checking.arrived(8)  # all eight are checking the password at once
        checking.go()
        assert [login.result().status_code for login in logins] == [200] * 8
    assert len(live_sessions(app)) == 8


def test_parallel_wrong_passwords_are_all_checked_but_at_most_five_are_told(app):
    """The lock's guarantee under concurrency: beyond the fifth failure, an outcome is not told."""
    with Checking(app, password="wrong") as checking, ThreadPoolExecutor(8) as pool:
        logins = [pool.submit(send, app, "/auth/login", login_body("alice", "wrong"), remote_addr=f"10.3.0.{i}")
                  for i in range(8)]
        checking.arrived(8)
        checking.go()
        bodies = [login.result().json for login in logins]
    answers = Counter(body["exc"] for body in bodies)
    told = [body for body in bodies if body["err"][0] == "invalid username or password"]
    # Five are told their password was wrong, the fifth with the lock it set; the three others nothing.
    assert answers == {"InvalidCredential": 4, "AccountLocked": 4}, answers
    assert len(told) == 5 and [body["exc"] for body in told].count("AccountLocked") == 1, bodies
    locked = assert_error(send(app, "/auth/login", login_body(), remote_addr="10.3.1.1"), 429, "AccountLocked")
    assert locked["err"] == ["too many failed logins for this account; try again later"]


def test_a_right_password_checked_while_the_account_locks_is_not_told(app, caplog):
    """Right or wrong, an attempt whose account locked during its check answers the same AccountLocked, with
    the same weight: a guesser learns nothing from attempts beyond the limit, even when one was right."""
    with Checking(app) as checking, ThreadPoolExecutor(1) as pool:
        right = pool.submit(send, app, "/auth/login", login_body(), remote_addr="10.4.0.1")
        checking.arrived(1)
        for i in range(5):
            assert_error(send(app, "/auth/login", login_body("alice", "wrong"), remote_addr=f"10.4.1.{i}"),
                         401 if i < 4 else 429, "InvalidCredential" if i < 4 else "AccountLocked")
        with caplog.at_level(logging.INFO, logger="bastion.security"):
            checking.go()
            answer = assert_error(right.result(), 429, "AccountLocked")
    assert answer["err"] == ["too many failed logins for this account; try again later"]
    assert 299 <= answer["retry_after"] <= 300
    assert live_sessions(app) == []
    assert "reason=account_locked" in caplog.text and "event=login " not in caplog.text
    assert auth_of(app).state.window_entries("localhost", "abuse:10.4.0.1")[0].weight == 1


def test_logins_in_progress_beyond_the_origins_limit_are_told_so(auth_app, caplog):
    """The eleventh login running at once from one address is refused for that, and says so: not a ban, not a
    lock; it weighs nothing, and the ten finish."""
    app = auth_app(users={f"user{i}@localhost": cheap_hash(PASSWORD) for i in range(10)})
    with Checking(app) as checking, ThreadPoolExecutor(10) as pool:
        logins = [pool.submit(send, app, "/auth/login", login_body(f"user{i}")) for i in range(10)]
        checking.arrived(10)
        with caplog.at_level(logging.INFO, logger="bastion.security"):
            busy = assert_error(send(app, "/auth/login", login_body()), 429, "Abusive")
        checking.go()
        assert [login.result().status_code for login in logins] == [200] * 10
    assert busy["retry_after"] == 1
    assert busy["err"] == ["too many logins in progress from your address (at most 10 at once); retry after 1 s"]
    assert "event=login_failed" in caplog.text and "reason=in_progress" in caplog.text
    assert auth_of(app).abuse.banned_until("localhost", "127.0.0.1", auth_of(app).clock()) is None
    assert send(app, "/auth/login", login_body()).status_code == 200


def test_a_correct_login_gives_back_its_place(auth_app):
    app = auth_app(auth={"abuse_max": 3, "account_max_failures": 2})
    for _ in range(6):
        assert send(app, "/auth/login", login_body()).status_code == 200


# -- 4 and 5. hostile JSON is a 400, never a 500 ------------------------------------------------------


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
def test_deep_nesting_is_an_invalid_call(app, alice, depth):
    deep = b"[" * depth + b"]" * depth
    login = b'{"username": ' + deep + b', "password": "x"}'
    if len(login) <= auth_of(app).login_max_body:
        assert_error(send(app, "/auth/login", login), 400, "InvalidCall")
    else:  # far more than a login needs: refused before it is read
        assert_error(send(app, "/auth/login", login), 413, "PayloadTooLarge")
    body = b'{"args": [' + deep + b"]}"
    assert_error(send(app, "/api/note", body, sign(alice, "/api/note", body)[0]), 400, "InvalidCall")


def test_sixty_four_levels_are_accepted(app, alice):
    deep = "[" * 63 + "]" * 63
    body = ('{"args": ' + deep[:-63] + '"x"' + deep[63:] + "}").encode()
    assert json.loads(body)  # 64 levels: the body object, then 63 arrays
    assert send(app, "/api/note", body, sign(alice, "/api/note", body)[0]).status_code in (200, 400)


@pytest.mark.parametrize("text", ['"\\ud800"', '"a\\udfffb"', '"\\udc00\\ud800"'])
def test_a_lone_surrogate_is_an_invalid_call(app, alice, text):
    body = ('{"args": [' + text + "]}").encode()
    assert_error(send(app, "/api/note", body, sign(alice, "/api/note", body)[0]), 400, "InvalidCall")
    login = ('{"username": ' + text + ', "password": "x"}').encode()
    assert_error(send(app, "/auth/login", login), 400, "InvalidCall")
    assert stored_notes(app) == []
    assert alice.call("notes") == []


def test_a_surrogate_pair_is_text(app, alice):
    body = b'{"args": ["\\ud83d\\ude00"]}'
    assert send(app, "/api/note", body, sign(alice, "/api/note", body)[0]).status_code == 200
    assert alice.call("notes") == ["\U0001f600"]


def test_a_number_too_large_for_a_float_is_an_invalid_call(app, alice):
    body = b'{"args": [1e400]}'
    assert_error(send(app, "/api/note", body, sign(alice, "/api/note", body)[0]), 400, "InvalidCall")


# -- 6. a malformed login costs about what a 404 does (docs/security.md, "Malformed bodies") ---------


class CountedBody(io.RawIOBase):
    """A request body that counts the bytes the server reads from it."""

    def __init__(self, data: bytes):
        self.data = io.BytesIO(data)
        self.read_bytes = 0

    def readable(self):
        return True

    def read(self, size=-1):
        chunk = self.data.read(size)
        self.read_bytes += len(chunk)
        return chunk


def raw_post(app, path, body, headers=None):
    """POST a body through the WSGI app from a stream that counts what is read; return (status, answer, stream)."""
    env = falcon.testing.create_environ(path, method="POST", host="localhost",
                                        headers={"Content-Type": "application/json",
                                                 "Content-Length": str(len(body)), **(headers or {})})
    stream = env["wsgi.input"] = CountedBody(body)
    start = falcon.testing.StartResponseMock()
    answer = json.loads(b"".join(app(env, start)))
    return int(start.status.split()[0]), answer, stream


def test_a_login_body_over_what_a_login_needs_is_refused_before_it_is_read(app):
    """A login is a few hundred bytes; the server's limit is a mebibyte: 16 KiB is already too much."""
    body = b'{"username": "alice", "password": "' + b"x" * (16 * 1024) + b'"}'
    status, answer, stream = raw_post(app, "/auth/login", body)
    assert (status, answer["exc"], stream.read_bytes) == (413, "PayloadTooLarge", 0)
    # The longest password checked, from a client that escapes every character its longest way, still fits.
    longest = json.dumps({"username": "u" * 150, "password": "\U0001f600" * 1024}).encode()
    assert len(longest) <= auth_of(app).login_max_body < 16 * 1024
    assert_error(send(app, "/auth/login", longest), 401, "InvalidCredential")


def test_a_logout_body_over_what_a_logout_needs_is_refused_before_it_is_read(app, alice):
    body = b'{"padding": "' + b"x" * 2048 + b'"}'
    status, answer, stream = raw_post(app, "/auth/logout", body, sign(alice, "/auth/logout", body)[0])
    assert (status, answer["exc"], stream.read_bytes) == (413, "PayloadTooLarge", 0)
    assert alice.logout() is True  # {} and an empty body are what clients send


def test_the_malformed_login_of_the_review_is_refused_before_it_is_parsed(app, monkeypatch):
    """``{"username": [[],[],...], "password": "x"}``: any array or object inside a login body is refused from
    its bytes, so the parser never builds the arrays; and the body is as large as a login may be at most."""
    parsed = []
    real = json.JSONDecoder.decode

    def strict_reads(decoder, text, *args, **kwargs):
        if decoder.object_pairs_hook is not None:  # the strict reader of bodies, not the drivers' reads
            parsed.append(text[:20])
        return real(decoder, text, *args, **kwargs)

    monkeypatch.setattr(json.JSONDecoder, "decode", strict_reads)
    body = b'{"username": [' + b",".join([b"[]"] * 5000) + b'], "password": "x"}'  # 15,032 bytes
    for _ in range(20):
        assert_error(send(app, "/auth/login", body, remote_addr="192.0.2.50"), 400, "InvalidCall")
    assert parsed == []
    assert len(body) <= auth_of(app).login_max_body < len(body) + 100  # as large as a login body may be
    # A flat body is parsed, once: the reader's refusal of nesting costs no more than that.
    assert_error(send(app, "/auth/login", b'{"username": "alice", "password": "[{x"}', remote_addr="192.0.2.50"),
                 401, "InvalidCredential")
    assert len(parsed) == 1
