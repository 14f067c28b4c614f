"""What an attacker tried against the landed code, and what each attempt gets now (in-process, mem://)."""

from __future__ import annotations

import io
import json
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

    def create_after_deluser(domain, username, now, force=False, origin=""):
        _deluser(app, None)  # the user is deleted, and her sessions ended, just before this one exists
        return original(domain, username, now, force=force, origin=origin)

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


def test_forty_parallel_wrong_passwords_check_at_most_five(auth_app):
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


def test_a_correct_login_gives_back_its_place(auth_app):
    app = auth_app(auth={"abuse_max": 3, "account_max_failures": 2})
    for _ in range(6):
        assert send(app, "/auth/login", login_body()).status_code == 200


# -- 4 and 5. hostile JSON is a 400, never a 500 ------------------------------------------------------


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
def test_deep_nesting_is_an_invalid_call(app, alice, depth):
    deep = b"[" * depth + b"]" * depth
    assert_error(send(app, "/auth/login", b'{"username": ' + deep + b', "password": "x"}'), 400, "InvalidCall")
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
