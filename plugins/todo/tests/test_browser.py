"""bastion.js and the todo UI in a real Chromium.

The first tests need only the kernel and this plugin, served in-process;
the end-to-end ones run the auth plugin and this one in real gunicorn.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import urllib.request
from pathlib import Path

import pytest
from ui_helpers import add, expect, items, login

from kernel import UnknownSession
from kernel.testing import Client, import_or_skip

pytestmark = pytest.mark.slow

VECTORS = json.loads((Path(__file__).parent / "data" / "protocol-vectors.json").read_text("utf-8"))["vectors"]

REPRODUCE = """
async (v) => {
  const signed = await Bastion._sign(v.key, v.ts, v.nonce, v.path, v.domain, v.body);
  const response = await Bastion._responseMac(v.key, v.nonce, v.status, v.response_body);
  return {
    S: signed.S,
    mac: signed.mac,
    authorization: Bastion._authorization(v.sid, v.ts, v.nonce, signed.mac),
    R: response.R,
    response_mac: response.mac,
    server_authorization: response.header,
    verifies: await Bastion._verifyResponse(v.key, v.nonce, v.status, v.response_body, v.server_authorization),
    other_status: await Bastion._verifyResponse(v.key, v.nonce, v.status + 1, v.response_body, v.server_authorization),
    other_body: await Bastion._verifyResponse(v.key, v.nonce, v.status, v.response_body + " ", v.server_authorization),
    other_nonce: await Bastion._verifyResponse(v.key, v.nonce + "A", v.status, v.response_body, v.server_authorization),
  };
}
"""


@pytest.fixture
def client_page(live_url, page):
    """A page of the kernel's server that has loaded /bastion/bastion.js.

    ``live_url`` comes first so that the server outlives the page: a server
    stopped under an open page resets the browser's last requests.
    """
    page.goto(live_url + "/", wait_until="networkidle")
    page.wait_for_function("() => window.Bastion !== undefined")
    return page


@pytest.mark.parametrize("vector", VECTORS, ids=[v["path"] + "@" + v["domain"] for v in VECTORS])
def test_bastion_js_reproduces_the_protocol_vectors(client_page, vector):
    got = client_page.evaluate(REPRODUCE, vector)
    assert got["S"] == vector["S"]
    assert got["mac"] == vector["mac"]
    assert got["authorization"] == vector["authorization"]
    assert got["R"] == vector["R"]
    assert got["response_mac"] == vector["response_mac"]
    assert got["server_authorization"] == vector["server_authorization"]
    assert got["verifies"] is True
    assert (got["other_status"], got["other_body"], got["other_nonce"]) == (False, False, False)


GRAMMAR = json.loads((Path(__file__).resolve().parents[3] / "tests" / "data" / "server-authorization.json")
                     .read_text("utf-8"))["values"]


def test_bastion_js_reads_server_authorization_as_the_python_client_does(client_page):
    """The table tests/test_clients_agree.py holds the Python client to: the same mac, or null, for every value."""
    got = client_page.evaluate("(values) => values.map(Bastion._parseServerAuthorization)",
                               [case["value"] for case in GRAMMAR])
    assert dict(zip([case["what"] for case in GRAMMAR], got, strict=True)) == {
        case["what"]: case["mac"] for case in GRAMMAR}


def test_bastion_js_signs_the_exact_utf8_bytes_of_the_body(client_page):
    got = client_page.evaluate("""async () => [
        await Bastion._sha256(""),
        await Bastion._sha256("café ☕"),
        await Bastion._sha256(new TextEncoder().encode("café ☕")),
    ]""")
    assert got[0] == "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"
    assert got[1] == got[2]


def test_bastion_js_helpers(client_page):
    got = client_page.evaluate("""() => ({
        domains: ["Alpha.LOCALHOST.", "localhost", "[::1]", "Example.COM"].map(Bastion._domain),
        kwargs: Bastion._callBody({id: "x", vsn: 1}),
        args: Bastion._callBody("Play with Fanery"),
        two: Bastion._callBody("a", {b: 1}),
        list: Bastion._callBody(["x"]),
        none: Bastion._callBody(),
        roundtrip: Bastion._b64url(Bastion._b64urlDecode("AAECAwQFBgcICQoLDA0ODw")),
    })""")
    assert got["domains"] == ["alpha.localhost", "localhost", "[::1]", "example.com"]
    assert json.loads(got["kwargs"]) == {"kwargs": {"id": "x", "vsn": 1}}
    assert json.loads(got["args"]) == {"args": ["Play with Fanery"]}
    assert json.loads(got["two"]) == {"args": ["a", {"b": 1}]}
    assert json.loads(got["list"]) == {"args": [["x"]]}
    assert got["none"] == ""
    assert got["roundtrip"] == "AAECAwQFBgcICQoLDA0ODw"


def test_a_call_while_logged_out_rejects_after_calling_its_handler(client_page):
    got = client_page.evaluate("""async () => {
        const seen = [];
        Bastion.exc.UnknownSession = (e) => seen.push("handler:" + e.exc);
        try {
            await Bastion.safe_call("get_all");
            return "resolved";
        } catch (e) {
            seen.push("rejected:" + e.exc);
            return seen;
        }
    }""")
    assert got == ["handler:UnknownSession", "rejected:UnknownSession"]


def test_the_fallback_handler_is_error(client_page):
    got = client_page.evaluate("""async () => {
        const seen = [];
        Bastion.exc = {Error: (e) => seen.push(e.exc)};
        await Bastion.safe_call("no such name!").catch(() => {});
        return seen;
    }""")
    assert got == ["InvalidCall"]


# -- end to end: bastion.js and the UI against real gunicorn with the auth plugin -----------

PASSWORD = "correct horse battery"
ARTIFACTS = Path(__file__).resolve().parents[3] / "tests" / "artifacts"


@pytest.fixture
def server(todo_server):
    """A gunicorn port serving storage_mem, auth and todo, with the default [auth] settings."""
    return todo_server()


def seeded_sqlite(tmp_path, count: int):
    """A SQLite database whose domain ``localhost`` holds ``count`` todos, stored as the todo plugin stores them."""
    from kernel import Change

    sql = import_or_skip("bastion_storage_sql", "the SQL storage plugin is not installed")
    url = f"sqlite:///{tmp_path / 'todos.sqlite3'}"
    driver = sql.SqlDriver(url)
    driver.commit("localhost", [Change("insert", "Todo", f"t{n:05d}", 0, {"done": False, "text": f"todo {n}"},
                                       {"done": False}) for n in range(count)])
    return url, driver


def test_the_list_reads_every_page_of_a_domain_with_more_than_a_page_of_todos(todo_server, tmp_path, page):
    from bastion_todo import PAGE_LIMIT

    url, driver = seeded_sqlite(tmp_path, PAGE_LIMIT + 1)
    driver.close()
    port = todo_server(storage=url)
    answers = []
    page.on("response", lambda response: "/api/get_all" in response.url and answers.append(response.status))
    page.goto(f"http://localhost:{port}/")
    login(page)
    expect(items(page)).to_have_count(PAGE_LIMIT + 1)
    expect(items(page).last.locator("label")).to_have_text(f"todo {PAGE_LIMIT}")
    expect(page.locator(".todo-count")).to_have_text("1,001 items left")  # numbers as the messages write them
    expect(page.locator(".todo-count strong")).to_have_text("1,001")
    assert answers == [200, 200]  # a page of 1,000, then the one todo after it


def test_a_todo_removed_while_the_pages_are_read_makes_the_list_start_again(todo_server, tmp_path, page, page_errors):
    from bastion_todo import PAGE_LIMIT

    from kernel import Change

    page_errors.expect_statuses(404)
    url, driver = seeded_sqlite(tmp_path, PAGE_LIMIT + 1)
    port = todo_server(storage=url)
    answers = []
    page.on("response", lambda response: "/api/get_all" in response.url and answers.append(response.status))

    calls = []

    def on_get_all(route):
        calls.append(route.request.post_data)
        if len(calls) == 2:  # before the second page is read, another client removes the todo it starts after
            after = json.loads(route.request.post_data)["args"][0]
            driver.commit("localhost", [Change("delete", "Todo", after, driver.fetch("localhost", "Todo", after).vsn)])
        route.continue_()

    page.route("**/api/get_all", on_get_all)
    page.goto(f"http://localhost:{port}/")
    page.wait_for_function("() => window.Bastion !== undefined")
    page.evaluate("() => Bastion.configure({encrypt: false})")  # the route reads the call's arguments
    login(page)
    expect(items(page)).to_have_count(PAGE_LIMIT)
    page.unroute("**/api/get_all")
    driver.close()
    # The first page, the 404 of the page after the removed todo, then the list again: a full page and an empty one.
    assert answers == [200, 404, 200, 200]


def test_the_tutorial_closing_scenario_through_bastion_js(server, page, page_errors):
    page_errors.expect_statuses(409, 422)
    page.goto(f"http://localhost:{server}/")
    got = page.evaluate("""async (password) => {
        const log = [];
        const user = await Bastion.login("alice", password);
        log.push(["login", user]);
        const todo = await Bastion.safe_call("add", "Play with Fanery");
        log.push(["add", todo]);
        log.push(["get_all", await Bastion.safe_call("get_all")]);
        const done = await Bastion.safe_call("update", {id: todo.id, vsn: todo.vsn, done: true});
        log.push(["update", done]);
        log.push(["same", await Bastion.safe_call("update", todo.id, done.vsn)]);
        try {
            await Bastion.safe_call("update", {id: todo.id, vsn: todo.vsn, text: "stale"});
        } catch (e) {
            log.push(["conflict", e.exc, e.status]);
        }
        try {
            await Bastion.safe_call("add", null);
        } catch (e) {
            log.push(["invalid", e.exc, e.fields]);
        }
        log.push(["clear_completed", await Bastion.safe_call("clear_completed")]);
        log.push(["empty", await Bastion.safe_call("get_all")]);
        const sid = Bastion.session().sid;
        log.push(["logout", await Bastion.logout()]);
        log.push(["forgotten", Bastion.session(), sessionStorage.getItem("bastion.session")]);
        try {
            await Bastion.safe_call("get_all");
        } catch (e) {
            log.push(["after logout", e.exc]);
        }
        return {log, sid};
    }""", PASSWORD)
    log = dict((entry[0], entry[1:]) for entry in got["log"])
    assert log["login"] == [{"username": "alice", "domain": "localhost"}]
    todo = log["add"][0]
    assert (todo["vsn"], todo["text"], todo["done"]) == (1, "Play with Fanery", False)
    assert log["get_all"] == [[todo]]
    assert log["update"] == [{**todo, "vsn": 2, "done": True}]
    assert log["same"] == [{**todo, "vsn": 2, "done": True}]
    assert log["conflict"] == ["VersionConflict", 409]
    assert log["invalid"] == ["ValidationError", {"text": {"bad_type": "null"}}]
    assert log["clear_completed"] == [1]
    assert log["empty"] == [[]]
    assert log["logout"] == [True]
    assert log["forgotten"] == [None, None]
    assert log["after logout"] == ["UnknownSession"]


def test_bastion_js_corrects_its_clock_after_a_signed_stale_call(server, page, page_errors):
    page_errors.expect_statuses(401)
    page.goto(f"http://localhost:{server}/")
    page.evaluate("(password) => Bastion.login('alice', password)", PASSWORD)
    # A clock two hours off, as a reloaded tab would restore it.
    page.evaluate("""() => {
        const saved = JSON.parse(sessionStorage.getItem("bastion.session"));
        saved.offset = 7200;
        sessionStorage.setItem("bastion.session", JSON.stringify(saved));
    }""")
    statuses = []
    page.on("response", lambda response: statuses.append((response.url.split("/", 3)[-1], response.status)))
    page.reload()
    expect(page.locator("input.new-todo")).to_be_visible()
    add(page, "on time")
    expect(items(page).locator("label")).to_have_text(["on time"])
    # The first call (which services the user may call) met one StaleCall: its signed server_time fixed the clock.
    assert [s for s in statuses if s[0].startswith("api/")] == [("api/permitted", 401), ("api/permitted", 200),
                                                                 ("api/get_all", 200), ("api/add", 200)]
    assert abs(page.evaluate("() => Bastion.session().offset")) < 5


def test_bastion_js_rejects_answers_that_are_not_signed_by_the_session(server, page, page_errors):
    page_errors.expect_statuses(401, 409)
    page.goto(f"http://localhost:{server}/")
    page.evaluate("(password) => Bastion.login('alice', password)", PASSWORD)

    def tamper(route):
        response = route.fetch()
        body = response.text().replace("genuine", "forged")
        route.fulfill(response=response, body=body)

    page.route("**/api/add", tamper)
    got = page.evaluate("() => Bastion.safe_call('add', 'genuine').then(r => r, e => e.exc)")
    assert got == "InvalidResponseSignature"
    page.unroute("**/api/add")

    def unsigned_conflict(route):
        route.fulfill(status=409, content_type="application/json",
                      body='{"exc":"VersionConflict","err":["record changed"]}')

    page.route("**/api/get_all", unsigned_conflict)
    got = page.evaluate("() => Bastion.safe_call('get_all').then(r => r, e => e.exc)")
    assert got == "InvalidResponseSignature"
    page.unroute("**/api/get_all")

    def strip_signature(route):
        response = route.fetch()
        headers = {k: v for k, v in response.headers.items() if k.lower() != "server-authorization"}
        route.fulfill(response=response, headers=headers)

    page.route("**/api/get_all", strip_signature)
    got = page.evaluate("() => Bastion.safe_call('get_all').then(r => r, e => e.exc)")
    assert got == "InvalidResponseSignature"
    page.unroute("**/api/get_all")

    # The genuine answers still verify; the todo was really added once.
    got = page.evaluate("() => Bastion.safe_call('get_all')")
    assert [t["text"] for t in got] == ["genuine"]


def test_bastion_js_reports_an_unsigned_5xx_as_a_server_failure_with_its_request_id(server, page, page_errors):
    page_errors.expect_statuses(500, 502, 503)
    page.goto(f"http://localhost:{server}/")
    page.evaluate("(password) => Bastion.login('alice', password)", PASSWORD)
    answers = iter([
        {"status": 502, "content_type": "text/html", "body": "<h1>Bad Gateway</h1>", "headers": {"X-Request-Id": "px-1"}},
        {"status": 500, "content_type": "application/json", "body": '{"exc":"Error","err":["internal error"]}'},
        {"status": 503, "content_type": "text/plain", "body": "overloaded"},
    ])
    page.route("**/api/get_all", lambda route: route.fulfill(**next(answers)))
    got = [page.evaluate("() => Bastion.safe_call('get_all').then(r => r, e => [e.exc, e.status, e.request_id])")
           for _ in range(3)]
    assert got == [["ServerFailure", 502, "px-1"], ["ServerFailure", 500, None], ["ServerFailure", 503, None]]
    page.unroute("**/api/get_all")
    # The session was kept: the next call goes through.
    assert page.evaluate("() => Bastion.safe_call('get_all')") == []


def test_bastion_js_keeps_the_expiry_the_server_tells_and_the_limits_of_the_login(server, page, page_errors):
    page.goto(f"http://localhost:{server}/")
    page.evaluate("(password) => Bastion.login('alice', password)", PASSWORD)
    told = []
    page.on("response", lambda response: told.append(response.headers.get("session-expires"))
            if "/api/" in response.url else None)
    page.evaluate("() => Bastion.safe_call('get_all')")
    assert told and told[-1] is not None
    assert page.evaluate("() => Bastion.session().expires") == int(told[-1])
    assert page.evaluate("() => JSON.parse(sessionStorage.getItem('bastion.session')).idle") == 1800


def test_bastion_js_retries_a_stale_logout_once_and_the_session_ends_on_the_server(server, page, page_errors):
    page_errors.expect_statuses(401)
    # A clock that jumps five minutes ahead after the login: past the skew, within the idle timeout.
    page.add_init_script("""(() => {
        const real = Date.now.bind(Date);
        window.__jump = 0;
        Date.now = () => real() + window.__jump * 1000;
    })()""")
    page.goto(f"http://localhost:{server}/")
    page.evaluate("(password) => Bastion.login('alice', password)", PASSWORD)
    page.evaluate("() => { window.__jump = 300; }")
    statuses = []
    page.on("response", lambda response: statuses.append((response.url.split("/", 3)[-1], response.status)))
    assert page.evaluate("() => Bastion.logout()") is True
    assert statuses == [("auth/logout", 401), ("auth/logout", 200)]
    assert page.evaluate("() => Bastion.session()") is None


def test_bastion_js_waits_the_bodys_retry_after_over_the_headers(server, page, page_errors):
    page_errors.expect_statuses(429)
    page.goto(f"http://localhost:{server}/")
    page.evaluate("(password) => Bastion.login('alice', password)", PASSWORD)
    page.route("**/api/get_all", lambda route: route.fulfill(
        status=429, content_type="application/json", headers={"Retry-After": "5"},
        body='{"exc":"Abusive","err":["slow down"],"retry_after":600}'))
    got = page.evaluate("() => Bastion.safe_call('get_all').then(r => r, e => [e.exc, e.retry_after])")
    assert got == ["Abusive", 600]
    page.unroute("**/api/get_all")
    page.route("**/api/get_all", lambda route: route.fulfill(
        status=429, content_type="application/json", headers={"Retry-After": "5"},
        body='{"exc":"Abusive","err":["slow down"]}'))
    got = page.evaluate("() => Bastion.safe_call('get_all').then(r => r, e => [e.exc, e.retry_after])")
    assert got == ["Abusive", 5]
    page.unroute("**/api/get_all")


def test_a_wrong_password_is_said_in_plain_words(server, page, page_errors):
    page_errors.expect_statuses(401)
    page.goto(f"http://localhost:{server}/")
    expect(page.locator("form#login")).to_be_visible()
    expect(page.locator(".header .domain")).to_have_text("localhost")
    login(page, password="wrong password")
    expect(page.get_by_role("alert")).to_have_text("Wrong username or password.")
    expect(page.locator("input.new-todo")).to_be_hidden()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "todo-login.png"), animations="disabled")
    login(page)
    expect(page.locator("input.new-todo")).to_be_visible()
    expect(page.locator("[role=alert]")).to_be_empty()
    expect(page.locator("section.main")).to_be_hidden()
    expect(page.locator("footer.footer")).to_be_hidden()


def test_a_banned_origin_is_told_for_how_long(todo_server, page, page_errors):
    port = todo_server(abuse_max=3, account_max_failures=0)
    page_errors.expect_statuses(401, 429)
    page.goto(f"http://localhost:{port}/")
    for _ in range(3):
        login(page, password="wrong password")
        expect(page.get_by_role("alert")).to_have_text("Wrong username or password.")
        page.evaluate("() => document.querySelector('[role=alert]').textContent = ''")
    login(page)
    expect(page.get_by_role("alert")).to_have_text(
        "Too many bad requests from this address: banned for 10 minutes.")


def test_a_locked_account_is_told_for_how_long(todo_server, page, page_errors):
    port = todo_server(account_max_failures=2, account_lock=120)
    page_errors.expect_statuses(401, 429)
    page.goto(f"http://localhost:{port}/")
    login(page, password="wrong password")
    expect(page.get_by_role("alert")).to_have_text("Wrong username or password.")
    page.evaluate("() => document.querySelector('[role=alert]').textContent = ''")
    # The attempt that locks the account says so at once, not one attempt late.
    login(page, password="wrong password")
    expect(page.get_by_role("alert")).to_have_text(
        "Too many failed sign-ins for this account: it is locked for 2 minutes.")
    page.evaluate("() => document.querySelector('[role=alert]').textContent = ''")
    login(page)
    expect(page.get_by_role("alert")).to_have_text(
        "Too many failed sign-ins for this account: it is locked for 2 minutes.")


def test_the_attempt_that_locks_an_unknown_username_says_the_same(todo_server, page, page_errors):
    """Locks are counted for usernames that do not exist too: saying "locked" tells nothing about the user."""
    port = todo_server(account_max_failures=2, account_lock=120)
    page_errors.expect_statuses(401, 429)
    page.goto(f"http://localhost:{port}/")
    login(page, "nobody", password="wrong password")
    expect(page.get_by_role("alert")).to_have_text("Wrong username or password.")
    page.evaluate("() => document.querySelector('[role=alert]').textContent = ''")
    login(page, "nobody", password="wrong password")
    expect(page.get_by_role("alert")).to_have_text(
        "Too many failed sign-ins for this account: it is locked for 2 minutes.")


def test_todomvc_behaviour(server, page):
    page.goto(f"http://localhost:{server}/")
    login(page)
    new_todo = page.locator("input.new-todo")
    expect(new_todo).to_be_focused()
    expect(new_todo).to_have_attribute("placeholder", "What needs to be done?")
    expect(page.locator("section.main")).to_be_hidden()
    expect(page.locator("footer.footer")).to_be_hidden()

    # New todos: Enter adds the trimmed text; blank is ignored.
    add(page, "   ")
    add(page, "  Buy milk  ")
    expect(items(page)).to_have_count(1)
    expect(items(page).first.locator("label")).to_have_text("Buy milk")
    expect(new_todo).to_have_value("")
    expect(page.locator(".todo-count")).to_have_text("1 item left")
    expect(page.locator(".todo-count strong")).to_have_text("1")
    add(page, "Play with Fanery")
    add(page, "Write the tests")
    expect(items(page)).to_have_count(3)
    expect(page.locator(".todo-count")).to_have_text("3 items left")
    expect(page.locator("section.main")).to_be_visible()
    expect(page.locator("button.clear-completed")).to_be_hidden()

    # Toggling one.
    items(page).nth(1).locator("input.toggle").check()
    expect(items(page).nth(1)).to_have_class("completed")
    expect(page.locator(".todo-count")).to_have_text("2 items left")
    expect(page.locator("button.clear-completed")).to_be_visible()

    # Filters, kept across a reload that keeps the session.
    page.click(".filters a[href='#/active']")
    expect(items(page)).to_have_count(2)
    expect(page.locator(".filters a.selected")).to_have_text("Active")
    page.click(".filters a[href='#/completed']")
    expect(items(page)).to_have_count(1)
    expect(items(page).first.locator("label")).to_have_text("Play with Fanery")
    page.reload()
    expect(page.locator("form#login")).to_be_hidden()
    expect(page.locator(".filters a.selected")).to_have_text("Completed")
    expect(items(page)).to_have_count(1)
    page.click(".filters a[href='#/']")
    expect(items(page)).to_have_count(3)
    expect(page.locator(".filters a.selected")).to_have_text("All")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "todo-list.png"), full_page=True, animations="disabled")

    # Toggle all, both ways.
    page.click("label[for=toggle-all]")
    expect(page.locator("ul.todo-list li.completed")).to_have_count(3)
    expect(page.locator(".todo-count")).to_have_text("0 items left")
    expect(page.locator("input.toggle-all")).to_be_checked()
    page.click("label[for=toggle-all]")
    expect(page.locator("ul.todo-list li.completed")).to_have_count(0)
    expect(page.locator("input.toggle-all")).not_to_be_checked()
    expect(page.locator("button.clear-completed")).to_be_hidden()

    # Editing: Enter saves trimmed, Escape cancels, blur saves, emptied deletes.
    first = items(page).first
    first.locator("label").dblclick()
    expect(first).to_have_class("editing")
    edit = first.locator("input.edit")
    expect(edit).to_be_focused()
    expect(edit).to_have_value("Buy milk")
    edit.fill("  Buy oat milk ")
    edit.press("Enter")
    expect(first).not_to_have_class("editing")
    expect(first.locator("label")).to_have_text("Buy oat milk")

    first.locator("label").dblclick()
    first.locator("input.edit").fill("never saved")
    first.locator("input.edit").press("Escape")
    expect(first.locator("input.edit")).to_have_count(0)
    expect(first.locator("label")).to_have_text("Buy oat milk")

    second = items(page).nth(1)
    second.locator("label").dblclick()
    second.locator("input.edit").fill("Play more with Fanery")
    page.screenshot(path=str(ARTIFACTS / "todo-editing.png"), animations="disabled")
    new_todo.focus()
    expect(second.locator("label")).to_have_text("Play more with Fanery")

    third = items(page).nth(2)
    third.locator("label").dblclick()
    third.locator("input.edit").fill("   ")
    third.locator("input.edit").press("Enter")
    expect(items(page)).to_have_count(2)

    # What was saved is what the server holds.
    page.reload()
    expect(items(page).locator("label")).to_have_text(["Buy oat milk", "Play more with Fanery"])

    # Clear completed, destroy.
    items(page).first.locator("input.toggle").check()
    expect(page.locator("button.clear-completed")).to_be_visible()
    page.click("button.clear-completed")
    expect(items(page)).to_have_count(1)
    expect(page.locator("button.clear-completed")).to_be_hidden()
    items(page).first.hover()
    items(page).first.locator("button.destroy").click()
    expect(items(page)).to_have_count(0)
    expect(page.locator("section.main")).to_be_hidden()
    expect(page.locator("footer.footer")).to_be_hidden()

    # Logging out forgets the session, also across a reload.
    page.click("button.logout")
    expect(page.locator("form#login")).to_be_visible()
    expect(new_todo).to_be_hidden()
    page.reload()
    expect(page.locator("form#login")).to_be_visible()


def test_the_ui_is_usable_from_the_keyboard(server, page):
    page.goto(f"http://localhost:{server}/")
    expect(page.locator("form#login input[name=username]")).to_be_focused()
    page.keyboard.type("alice")
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page.locator("input.new-todo")).to_be_focused()
    page.keyboard.type("by keyboard")
    page.keyboard.press("Enter")
    label = items(page).first.locator("label")
    expect(label).to_have_text("by keyboard")
    label.focus()
    page.keyboard.press("Enter")
    expect(items(page).first).to_have_class("editing")
    page.keyboard.press("End")
    page.keyboard.type(" and more")
    page.keyboard.press("Enter")
    expect(label).to_have_text("by keyboard and more")
    items(page).first.locator("input.toggle").focus()
    page.keyboard.press("Space")
    expect(items(page).first).to_have_class("completed")
    expect(items(page).first.locator("input.toggle")).to_be_focused()


def test_two_tenants_see_only_their_own_todos(server, context, page_errors):
    page_errors.expect_statuses(401)
    alpha = context.new_page()
    alpha.goto(f"http://alpha.localhost:{server}/")
    expect(alpha.locator(".header .domain")).to_have_text("alpha.localhost")
    login(alpha, "alice")
    add(alpha, "alpha's secret")
    expect(items(alpha)).to_have_count(1)

    beta = context.new_page()
    beta.goto(f"http://beta.localhost:{server}/")
    expect(beta.locator(".header .domain")).to_have_text("beta.localhost")
    login(beta, "alice")  # alice exists only on alpha.localhost
    expect(beta.get_by_role("alert")).to_have_text("Wrong username or password.")
    login(beta, "bob")
    expect(beta.locator("input.new-todo")).to_be_visible()
    expect(items(beta)).to_have_count(0)
    add(beta, "beta's own")
    expect(items(beta).locator("label")).to_have_text(["beta's own"])

    alpha.reload()
    expect(items(alpha).locator("label")).to_have_text(["alpha's secret"])


#: A page whose first get_all answer is held back until an add was answered (or 1.5 s passed), and which records when
#: each call was sent and when that answer was let through.
HOLD_THE_FIRST_LIST = """(() => {
  const real = window.fetch.bind(window);
  window.__events = [];
  let added;
  const addAnswered = new Promise((resolve) => { added = resolve; });
  window.fetch = async (url, init) => {
    const name = String(url).split("/").pop();
    window.__events.push("sent " + name);
    const response = await real(url, init);
    if (name === "add") added();
    if (name === "get_all" && !window.__held) {
      window.__held = true;
      await Promise.race([addAnswered, new Promise((resolve) => setTimeout(resolve, 1500))]);
      window.__events.push("answered get_all");
    }
    return response;
  };
})()"""


def test_a_todo_typed_while_the_list_loads_is_sent_after_it_and_never_lost(server, page):
    """A todo typed at once after signing in waits for the list: an older list read before the todo was stored never
    replaces the list that holds it."""
    page.add_init_script(HOLD_THE_FIRST_LIST)
    page.goto(f"http://localhost:{server}/")
    login(page)
    page.wait_for_function("() => window.__held === true")  # the list was read, its answer is on its way
    add(page, "typed at once")
    page.wait_for_function("() => window.__events.includes('sent add')")
    events = page.evaluate("() => window.__events")
    assert events.index("sent add") > events.index("answered get_all"), events
    add(page, "and another")
    expect(items(page).locator("label")).to_have_text(["typed at once", "and another"])
    page.reload()
    expect(items(page).locator("label")).to_have_text(["typed at once", "and another"])


def test_a_change_from_another_tab_is_a_conflict_that_reloads(server, context, page_errors):
    page_errors.expect_statuses(409)
    first = context.new_page()
    first.goto(f"http://localhost:{server}/")
    login(first)
    add(first, "shared")
    expect(items(first)).to_have_count(1)

    second = context.new_page()
    second.goto(f"http://localhost:{server}/")
    login(second)
    expect(items(second).locator("label")).to_have_text(["shared"])

    first.locator("ul.todo-list label").dblclick()
    first.locator("input.edit").fill("changed in the first tab")
    first.locator("input.edit").press("Enter")
    expect(items(first).locator("label")).to_have_text(["changed in the first tab"])

    # The second tab still holds version 1 (click: the reload unchecks the box at once).
    items(second).first.locator("input.toggle").click()
    expect(second.get_by_role("alert")).to_have_text("This todo was changed elsewhere — reloaded.")
    expect(items(second).locator("label")).to_have_text(["changed in the first tab"])
    expect(items(second).first).not_to_have_class("completed")

    # Now up to date, the same change succeeds.
    items(second).first.locator("input.toggle").check()
    expect(items(second).first).to_have_class("completed")
    first.reload()
    expect(items(first).first).to_have_class("completed")


def test_the_ui_fits_a_phone(server, browser, page_errors):
    phone = browser.new_context(viewport={"width": 360, "height": 740}, has_touch=True, is_mobile=True)
    try:
        page = page_errors.watch(phone.new_page())
        page.goto(f"http://localhost:{server}/")
        login(page)
        add(page, "A rather long todo whose words must wrap nicely on a narrow phone screen")
        add(page, "Short")
        items(page).first.locator("input.toggle").check()
        expect(page.locator("button.clear-completed")).to_be_visible()
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 360
        expect(items(page).first.locator("button.destroy")).to_be_visible()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "todo-phone.png"), full_page=True, animations="disabled")
    finally:
        phone.close()


# -- the account panel: change the password, see the sessions, sign out the others ---------------------

NEW_PASSWORD = "a brand new passphrase"


def open_account(page):
    page.click("button.account-open")
    expect(page.locator("#account")).to_be_visible()
    expect(page.locator("#account-title")).to_be_focused()


def change_password(page, old, new, again=None):
    page.fill("#password-old", old)
    page.fill("#password-new", new)
    page.fill("#password-again", new if again is None else again)
    page.click("#password button[type=submit]")


def sessions(page):
    return page.locator("ul.session-list li")


def test_a_user_changes_their_password_and_their_other_sessions_end(server, context, browser, page_errors):
    page_errors.expect_statuses(401, 422)
    page = context.new_page()
    page.goto(f"http://localhost:{server}/")
    login_and_load(page)
    elsewhere_context = browser.new_context()
    try:
        elsewhere = page_errors.watch(elsewhere_context.new_page())
        elsewhere.goto(f"http://localhost:{server}/")
        login_and_load(elsewhere)
        add(elsewhere, "from elsewhere")
        expect(items(elsewhere)).to_have_count(1)

        open_account(page)
        expect(page.locator("section.main")).to_be_hidden()
        expect(page.locator("input.new-todo")).to_be_hidden()
        expect(sessions(page)).to_have_count(2)
        expect(page.locator("ul.session-list li.current strong")).to_have_text("This device")

        # Mistakes, each said in plain words; the first never reaches the server.
        change_password(page, PASSWORD, NEW_PASSWORD, again="something else entirely")
        expect(page.get_by_role("alert")).to_have_text("The two new passwords do not match.")
        change_password(page, "not my password", NEW_PASSWORD)
        expect(page.get_by_role("alert")).to_have_text("Your current password is wrong.")
        expect(page.locator("#password-old")).to_be_focused()
        change_password(page, PASSWORD, "short")
        expect(page.get_by_role("alert")).to_have_text("A password has at least 8 characters.")
        expect(page.locator("#password-new")).to_be_focused()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "todo-account-error.png"), animations="disabled")

        change_password(page, PASSWORD, NEW_PASSWORD)
        expect(page.get_by_role("status")).to_have_text("Your password was changed. Your other sessions were signed out.")
        expect(page.locator("[role=alert]")).to_be_empty()
        expect(sessions(page)).to_have_count(1)
        expect(page.locator("ul.session-list li.current")).to_have_count(1)
        expect(page.locator("#password-old")).to_have_value("")

        # The other browser's session has ended: its next call says so and asks to sign in.
        add(elsewhere, "too late")
        expect(elsewhere.get_by_role("alert")).to_have_text("Your session has ended. Please sign in again.")
        expect(elsewhere.locator("form#login")).to_be_visible()
        login(elsewhere)
        expect(elsewhere.get_by_role("alert")).to_have_text("Wrong username or password.")
        login(elsewhere, password=NEW_PASSWORD)
        expect(items(elsewhere).locator("label")).to_have_text(["from elsewhere"])

        # This tab's session stayed: back to the list, which still works.
        page.click("button.account-close")
        expect(page.locator("#account")).to_be_hidden()
        expect(page.locator("button.account-open")).to_be_focused()
        expect(items(page).locator("label")).to_have_text(["from elsewhere"])
        add(page, "still signed in")
        expect(items(page)).to_have_count(2)
    finally:
        elsewhere_context.close()


def test_a_user_sees_their_sessions_and_signs_out_the_others(server, page, page_errors):
    page_errors.expect_statuses(401)
    others = []
    for _ in range(2):
        other = Client(f"http://localhost:{server}", host="localhost")
        other.login("alice", PASSWORD)
        others.append(other)
    page.goto(f"http://localhost:{server}/")
    login_and_load(page)
    open_account(page)
    expect(sessions(page)).to_have_count(3)
    expect(page.locator("ul.session-list li.current")).to_have_count(1)
    expect(page.locator("ul.session-list li.current strong")).to_have_text("This device")
    expect(page.locator("ul.session-list li:not(.current) strong")).to_have_text(["Another device", "Another device"])
    expect(page.locator("ul.session-list .origin")).to_have_text(["from 127.0.0.1"] * 3)
    # Nothing shown is a key or a whole session id.
    shown = page.locator("ul.session-list").inner_text()
    for other in others:
        assert other.session.sid not in shown and other.session.sid[:8] not in shown
    assert {page.evaluate("() => Bastion.session().sid")[:8]} <= set(sessions(page).evaluate_all(
        "(items) => items.map((li) => li.dataset.id)"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "todo-account.png"), full_page=True, animations="disabled")

    page.click("button.end-sessions")
    expect(page.get_by_role("status")).to_have_text("Signed out 2 other sessions.")
    expect(sessions(page)).to_have_count(1)
    expect(page.locator("button.end-sessions")).to_be_hidden()
    for other in others:
        with pytest.raises(UnknownSession):
            other.call("get_all")
    # This session goes on.
    page.click("button.account-close")
    add(page, "after signing out the others")
    expect(items(page)).to_have_count(1)
    # A sign-out hides the panel and forgets its contents.
    open_account(page)
    page.click("button.logout")
    expect(page.locator("form#login")).to_be_visible()
    expect(page.locator("#account")).to_be_hidden()
    expect(sessions(page)).to_have_count(0)


def test_wrong_current_passwords_lock_the_account_in_plain_words(todo_server, page, page_errors):
    port = todo_server(account_max_failures=2, account_lock=300)
    page_errors.expect_statuses(401, 429)
    page.goto(f"http://localhost:{port}/")
    login_and_load(page)
    open_account(page)
    change_password(page, "not my password", NEW_PASSWORD)
    expect(page.get_by_role("alert")).to_have_text("Your current password is wrong.")
    page.evaluate("() => document.querySelector('[role=alert]').textContent = ''")
    # The wrong password that locks the account says so at once.
    change_password(page, "not my password", NEW_PASSWORD)
    expect(page.get_by_role("alert")).to_have_text(
        "Too many failed sign-ins for this account: it is locked for 5 minutes.")
    page.evaluate("() => document.querySelector('[role=alert]').textContent = ''")
    change_password(page, PASSWORD, NEW_PASSWORD)
    expect(page.get_by_role("alert")).to_have_text(
        "Too many failed sign-ins for this account: it is locked for 5 minutes.")
    # Still signed in: the lock keeps the password, not the session.
    page.click("button.account-close")
    add(page, "locked, not signed out")
    expect(items(page)).to_have_count(1)


def test_the_account_panel_is_usable_from_the_keyboard_and_fits_a_phone(server, browser, page_errors):
    phone = browser.new_context(viewport={"width": 360, "height": 740}, has_touch=True, is_mobile=True)
    try:
        page = page_errors.watch(phone.new_page())
        page.goto(f"http://localhost:{server}/")
        login_and_load(page)
        page.locator("button.account-open").focus()
        page.keyboard.press("Enter")
        expect(page.locator("#account-title")).to_be_focused()
        page.keyboard.press("Tab")
        expect(page.locator("#password-old")).to_be_focused()
        page.keyboard.type(PASSWORD)
        page.keyboard.press("Tab")
        page.keyboard.type(NEW_PASSWORD)
        page.keyboard.press("Tab")
        page.keyboard.type(NEW_PASSWORD)
        page.keyboard.press("Enter")
        expect(page.get_by_role("status")).to_have_text("Your password was changed. Your other sessions were signed out.")
        expect(sessions(page)).to_have_count(1)
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 360
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "todo-account-phone.png"), full_page=True, animations="disabled")
    finally:
        phone.close()


# -- where the session key lives: a non-extractable CryptoKey in IndexedDB, nothing secret in storage ---

#: Every entry of sessionStorage and localStorage, as {"session": {name: value}, "local": {...}}.
STORAGES = """() => {
    const all = (storage) => Object.fromEntries(Object.keys(storage).map((name) => [name, storage.getItem(name)]));
    return {session: all(sessionStorage), local: all(localStorage)};
}"""

#: The key entries bastion.js keeps in IndexedDB, by key id, described (and tried) from the page's own script.
KEY_ENTRIES = """async () => {
    if (!(await indexedDB.databases()).some((d) => d.name === "bastion")) return {};
    const db = await new Promise((resolve, reject) => {
        const request = indexedDB.open("bastion");
        request.onsuccess = () => resolve(request.result);
        request.onerror = () => reject(request.error);
    });
    try {
        if (!db.objectStoreNames.contains("keys")) return {};
        const entries = await new Promise((resolve, reject) => {
            const tx = db.transaction("keys");
            const kids = tx.objectStore("keys").getAllKeys();
            const values = tx.objectStore("keys").getAll();
            tx.oncomplete = () => resolve(kids.result.map((kid, i) => [kid, values.result[i]]));
            tx.onabort = () => reject(tx.error);
        });
        const described = {};
        for (const [kid, value] of entries) {
            const key = value.key;
            const exports = [];
            for (const format of ["raw", "jwk"]) {
                try {
                    await crypto.subtle.exportKey(format, key);
                    exports.push("exported");
                } catch (e) {
                    exports.push(e.name);
                }
            }
            const probe = await crypto.subtle.sign("HMAC", key, new TextEncoder().encode("probe"));
            described[kid] = {
                crypto_key: key instanceof CryptoKey,
                type: key.type,
                extractable: key.extractable,
                algorithm: key.algorithm.name,
                hash: key.algorithm.hash && key.algorithm.hash.name,
                usages: [...key.usages].sort(),
                exports,
                probe: Bastion._b64url(probe),
                fields: Object.keys(value).sort(),
            };
        }
        return described;
    } finally {
        db.close();
    }
}"""

DELETE_KEY_ENTRIES = """() => new Promise((resolve, reject) => {
    const request = indexedDB.open("bastion");
    request.onsuccess = () => {
        const db = request.result;
        const tx = db.transaction("keys", "readwrite");
        tx.objectStore("keys").clear();
        tx.oncomplete = () => { db.close(); resolve(); };
        tx.onabort = () => { db.close(); reject(tx.error); };
    };
    request.onerror = () => reject(request.error);
})"""


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def probe_mac(key: str) -> str:
    """The b64url HMAC-SHA256 of b"probe" under a login answer's key, as KEY_ENTRIES computes it."""
    mac = hmac.new(b64url_decode(key), b"probe", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def saved_session(page):
    raw = page.evaluate("() => sessionStorage.getItem('bastion.session')")
    return None if raw is None else json.loads(raw)


def assert_no_storage_holds(page, key: str) -> None:
    storages = page.evaluate(STORAGES)
    for kind, entries in storages.items():
        for name, value in entries.items():
            assert key not in name and key not in value, f"{kind}Storage[{name!r}] holds the session key"


def login_and_load(page, username="alice") -> None:
    """Log in through the UI and wait for the list it loads then (a call in flight could race what follows)."""
    with page.expect_response("**/api/get_all"):
        login(page, username)
    expect(page.locator("input.new-todo")).to_be_visible()


def version_1(page) -> None:
    """Make the page's next login a version-1 one (the server sends the key: what these tests look for), as
    ``Bastion.configure`` does for a page that must talk to an older server; version 2's keys are checked in
    test_version2_ui.py."""
    page.wait_for_function("() => window.Bastion !== undefined")
    page.evaluate("() => Bastion.configure({version: 1})")


def login_answer(page, do_login) -> dict:
    """Run ``do_login()`` and return the JSON answer of its /auth/login (which carries the key): a version-1 login
    (:func:`version_1`)."""
    version_1(page)
    with page.expect_response("**/auth/login") as info:
        do_login()
    answer = info.value.json()
    assert len(b64url_decode(answer["key"])) == 32
    return answer


def test_after_login_no_storage_holds_the_key_and_indexeddb_holds_a_key_no_script_can_export(server, page):
    page.goto(f"http://localhost:{server}/")
    page.evaluate("() => Bastion.ready")
    answer = login_answer(page, lambda: page.evaluate("(password) => Bastion.login('alice', password)", PASSWORD))

    # Neither storage holds the key, in any value (or name).
    assert_no_storage_holds(page, answer["key"])
    saved = saved_session(page)
    assert sorted(saved) == ["expires", "idle", "kid", "offset", "seen", "sid", "user"]
    assert (saved["sid"], saved["expires"], saved["user"]) == (answer["sid"], answer["expires"], answer["user"])
    assert len(b64url_decode(saved["kid"])) == 16
    assert sorted(page.evaluate("() => Object.keys(Bastion.session())")) == ["expires", "offset", "sid", "user",
                                                                             "version"]
    assert answer["key"] not in page.evaluate("() => JSON.stringify(Bastion.session())")

    # IndexedDB holds one entry, under the tab's key id: a non-extractable CryptoKey that exportKey refuses.
    entries = page.evaluate(KEY_ENTRIES)
    assert list(entries) == [saved["kid"]]
    entry = entries[saved["kid"]]
    assert entry["fields"] == ["expires", "key"]
    assert entry["crypto_key"] is True
    assert (entry["type"], entry["extractable"]) == ("secret", False)
    assert (entry["algorithm"], entry["hash"], entry["usages"]) == ("HMAC", "SHA-256", ["sign", "verify"])
    assert entry["exports"] == ["InvalidAccessError", "InvalidAccessError"]
    # ... and it is the session's key: it signs what the login answer's key signs.
    assert entry["probe"] == probe_mac(answer["key"])


def test_a_reload_restores_the_session_from_indexeddb_and_calls_still_work(server, page):
    page.goto(f"http://localhost:{server}/")
    answer = login_answer(page, lambda: login(page))
    add(page, "before the reload")
    expect(items(page).locator("label")).to_have_text(["before the reload"])
    kid = saved_session(page)["kid"]

    page.reload()
    expect(items(page).locator("label")).to_have_text(["before the reload"])
    expect(page.locator("form#login")).to_be_hidden()
    add(page, "after the reload")
    expect(items(page).locator("label")).to_have_text(["before the reload", "after the reload"])
    got = page.evaluate("() => Bastion.safe_call('get_all').then((todos) => todos.map((t) => t.text))")
    assert got == ["before the reload", "after the reload"]
    assert page.evaluate("() => Bastion.session().sid") == answer["sid"]
    # The same entry still holds the key, and still no storage does.
    assert saved_session(page)["kid"] == kid
    entries = page.evaluate(KEY_ENTRIES)
    assert list(entries) == [kid]
    assert entries[kid]["probe"] == probe_mac(answer["key"])
    assert_no_storage_holds(page, answer["key"])

    # sessionStorage alone cannot restore anything: without its key entry, a reload asks to log in.
    page.evaluate(DELETE_KEY_ENTRIES)
    page.reload()
    expect(page.locator("form#login")).to_be_visible()
    assert page.evaluate("() => Bastion.ready") is None
    assert saved_session(page) is None


def test_logout_and_forget_remove_the_key_entry(server, page):
    page.goto(f"http://localhost:{server}/")
    login_and_load(page)
    assert list(page.evaluate(KEY_ENTRIES)) == [saved_session(page)["kid"]]
    page.click("button.logout")
    expect(page.locator("form#login")).to_be_visible()
    assert page.evaluate(KEY_ENTRIES) == {}
    assert saved_session(page) is None

    # Bastion.forget() (no word to the server) removes it too.
    page.evaluate("(password) => Bastion.login('alice', password)", PASSWORD)
    assert len(page.evaluate(KEY_ENTRIES)) == 1
    page.evaluate("() => Bastion.forget()")
    assert page.evaluate(KEY_ENTRIES) == {}
    assert saved_session(page) is None
    assert page.evaluate("() => Bastion.session()") is None


def test_an_unknown_session_answer_removes_the_key_entry(server, page, page_errors):
    page_errors.expect_statuses(401)
    page.goto(f"http://localhost:{server}/")
    login_and_load(page)
    assert len(page.evaluate(KEY_ENTRIES)) == 1

    # Another login with force ends this tab's session on the server.
    forced = urllib.request.Request(
        f"http://localhost:{server}/auth/login", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"username": "alice", "password": PASSWORD, "force": True}).encode())
    with urllib.request.urlopen(forced, timeout=10) as response:
        assert response.status == 200

    answers = []
    page.on("response", lambda r: answers.append((r.status, r.json()["exc"])) if "/api/" in r.url else None)
    add(page, "too late")
    expect(page.get_by_role("alert")).to_have_text("Your session has ended. Please sign in again.")
    expect(page.locator("form#login")).to_be_visible()
    assert answers == [(401, "UnknownSession")]
    assert page.evaluate(KEY_ENTRIES) == {}
    assert saved_session(page) is None
    page.reload()
    expect(page.locator("form#login")).to_be_visible()


def test_an_expired_session_answer_removes_the_key_entry(server, page, page_errors):
    page_errors.expect_statuses(401)
    page.goto(f"http://localhost:{server}/")
    page.evaluate("(password) => Bastion.login('alice', password)", PASSWORD)
    assert len(page.evaluate(KEY_ENTRIES)) == 1
    # What the server answers a call after the idle timeout (unsigned, as it must be).
    page.route("**/api/get_all", lambda route: route.fulfill(
        status=401, content_type="application/json", body='{"exc":"ExpiredSession","err":["session expired"]}'))
    got = page.evaluate("() => Bastion.safe_call('get_all').then(() => null, (e) => [e.exc, e.unsigned])")
    assert got == ["ExpiredSession", True]
    assert page.evaluate(KEY_ENTRIES) == {}
    assert saved_session(page) is None


def test_a_signed_unknown_session_ends_the_session_too_and_nothing_more_is_sent(server, page, page_errors):
    """A session that ended between steps 7 and 10 is answered UnknownSession, signed: the page forgets it as it
    forgets an unsigned one, shows the sign-in form, and sends that sid no more (the server weighs refusals)."""
    from kernel import b64url_decode
    from kernel.testing import parse_authorization, response_mac

    page_errors.expect_statuses(401)
    answer = {}

    def keep_login_answer(route):
        response = route.fetch()
        answer.update(response.json())
        route.fulfill(response=response)

    page.route("**/auth/login", keep_login_answer)
    page.goto(f"http://localhost:{server}/")
    version_1(page)  # the route below signs with the key a version-1 login answer carries
    login_and_load(page)
    sent = []

    def ended_between_steps_7_and_10(route):
        nonce = parse_authorization(route.request.headers["authorization"])["nonce"]
        body = b'{"exc":"UnknownSession","err":["unknown session; log in again"]}'
        mac = response_mac(b64url_decode(answer["key"]), nonce, 401, body)
        sent.append(route.request.url)
        route.fulfill(status=401, content_type="application/json", body=body,
                      headers={"Server-Authorization": f'Bastion-HMAC mac="{mac}"'})

    page.route("**/api/**", ended_between_steps_7_and_10)
    got = page.evaluate("""() => Bastion.safe_call('get_all').then(() => null, (e) => [e.exc, !!e.unsigned])""")
    assert got == ["UnknownSession", False]
    expect(page.locator("form#login")).to_be_visible()
    assert page.evaluate("() => Bastion.session()") is None and saved_session(page) is None
    assert page.evaluate(KEY_ENTRIES) == {}
    again = page.evaluate("() => Bastion.safe_call('get_all').then(() => null, (e) => [e.exc, !!e.local])")
    assert again == ["UnknownSession", True]
    assert len(sent) == 1


def test_a_session_idle_past_its_timeout_is_not_sent(todo_server, page, page_errors):
    """A tab left open: once the session has been idle longer than its timeout on the page's clock, the next
    call goes to the sign-in form without asking (the server has forgotten it, or soon will)."""
    page_errors.expect_statuses(401)  # the page's clock runs ahead of the server's: one StaleCall, corrected
    server = todo_server(idle_timeout=600, absolute_timeout=3600)
    page.clock.install()
    page.goto(f"http://localhost:{server}/")
    login_and_load(page)
    sent = []
    page.on("request", lambda request: sent.append(request.url) if "/api/" in request.url else None)
    page.clock.run_for(590 * 1000)  # idle, but not for long enough: asked, and answered
    add(page, "still here")
    expect(items(page).locator("label")).to_have_text(["still here"])
    asked = len(sent)
    assert asked >= 1
    page.clock.run_for(603 * 1000)  # past the idle timeout since that call
    add(page, "too late")
    expect(page.get_by_role("alert")).to_have_text("Your session has ended. Please sign in again.")
    expect(page.locator("form#login")).to_be_visible()
    assert len(sent) == asked and page.evaluate(KEY_ENTRIES) == {} and saved_session(page) is None


def test_a_closed_tabs_key_entry_is_purged_at_a_start_up_after_it_expired(server, context):
    first = context.new_page()
    first.goto(f"http://localhost:{server}/")
    login_and_load(first)
    first_kid = saved_session(first)["kid"]
    first.close()

    # Another tab's start-up keeps a live entry; its own login gets another key id.
    second = context.new_page()
    second.goto(f"http://localhost:{server}/")
    expect(second.locator("form#login")).to_be_visible()
    assert list(second.evaluate(KEY_ENTRIES)) == [first_kid]
    login_and_load(second)
    second_kid = saved_session(second)["kid"]
    assert second_kid != first_kid
    assert sorted(second.evaluate(KEY_ENTRIES)) == sorted([first_kid, second_kid])

    # A tab that starts an hour later (idle_timeout is 30 minutes) purges both.
    later = context.new_page()
    later.add_init_script("(() => { const now = Date.now; Date.now = () => now.call(Date) + 3600 * 1000; })()")
    later.goto(f"http://localhost:{server}/")
    expect(later.locator("form#login")).to_be_visible()
    assert later.evaluate(KEY_ENTRIES) == {}


#: Two ways a browser refuses IndexedDB (private modes): open() throws, or its request fails.
REFUSE_INDEXEDDB = {
    "throws": """IDBFactory.prototype.open = function () {
        throw new DOMException("The user denied permission to access the database.", "SecurityError");
    };""",
    "fails": """IDBFactory.prototype.open = function () {
        const request = {error: new DOMException("A mutation operation was attempted", "InvalidStateError")};
        setTimeout(() => request.onerror && request.onerror({target: request, preventDefault() {}}));
        return request;
    };""",
}


@pytest.mark.parametrize("refusal", sorted(REFUSE_INDEXEDDB))
def test_without_indexeddb_the_session_lives_in_memory_only(server, page, refusal):
    page.add_init_script(REFUSE_INDEXEDDB[refusal])
    page.goto(f"http://localhost:{server}/")
    answer = login_answer(page, lambda: login(page))
    add(page, "in memory")
    expect(items(page).locator("label")).to_have_text(["in memory"])
    assert_no_storage_holds(page, answer["key"])
    assert saved_session(page) is None
    page.reload()
    expect(page.locator("form#login")).to_be_visible()
    assert page.evaluate("() => Bastion.session()") is None


def test_a_session_saved_with_its_raw_key_by_an_older_client_is_scrubbed(server, page):
    page.goto(f"http://localhost:{server}/")
    answer = login_answer(page, lambda: page.evaluate("(password) => Bastion.login('alice', password)", PASSWORD))
    page.evaluate("""(answer) => sessionStorage.setItem("bastion.session", JSON.stringify(
        {sid: answer.sid, key: answer.key, expires: answer.expires, user: answer.user, offset: 0}))""", answer)
    page.reload()
    expect(page.locator("form#login")).to_be_visible()
    assert saved_session(page) is None
    assert_no_storage_holds(page, answer["key"])


def test_a_request_timeout_is_an_answer_the_server_cannot_sign(server, page, page_errors):
    page_errors.expect_statuses(408)
    page.goto(f"http://localhost:{server}/")
    page.evaluate("(password) => Bastion.login('alice', password)", PASSWORD)
    page.route("**/api/get_all", lambda route: route.fulfill(
        status=408, content_type="application/json", body='{"exc":"RequestTimeout","err":["too slow"]}'))
    got = page.evaluate("() => Bastion.safe_call('get_all').then(() => null, (e) => [e.exc, e.status, e.unsigned])")
    assert got == ["RequestTimeout", 408, True]
    page.unroute("**/api/get_all")
    # It says nothing about the session, which still works.
    assert page.evaluate("() => Bastion.safe_call('get_all')") == []
    assert page.evaluate("() => Bastion.session()") is not None


def test_bastion_js_says_clearly_that_it_needs_a_secure_context(launch_chromium, make_app, serve):
    """Over plain HTTP on a name that is not loopback, browsers offer no WebCrypto: say so, do not break."""
    import time

    app = make_app({"bastion": {"allowed_hosts": "insecure.test"}}, only=["storage_mem", "todo"], clock=time.time)
    with serve(app) as port:
        # The name resolves to loopback, but Chromium judges a context secure by its name: this one is not.
        page = launch_chromium("--host-resolver-rules=MAP insecure.test 127.0.0.1").new_page()
        page.goto(f"http://insecure.test:{port}/", wait_until="networkidle")
        assert page.evaluate("() => window.isSecureContext") is False
        got = page.evaluate("""() => Bastion.login("alice", "correct horse battery").then(
            () => null, (error) => ({exc: error.exc, err: error.err}))""")
        page.close()
    assert got["exc"] == "InsecureContext"
    assert "secure context" in " ".join(got["err"])


# -- TodoMVC's app spec, item by item, and what Bastion adds on top --------------------------------------------------

#: The element at the centre of a locator's box: what a pointer there would click.
HIT = """(element) => {
    const box = element.getBoundingClientRect();
    const hit = document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2);
    return hit === element;
}"""


def test_mark_all_as_complete_is_a_checkbox_a_click_on_itself_toggles(server, page):
    """The checkbox is its own hit area, not a 1 px box under its label; its state follows the todos."""
    page.goto(f"http://localhost:{server}/")
    login_and_load(page)
    for text in ("one", "two", "three"):
        add(page, text)
    expect(items(page)).to_have_count(3)
    toggle_all = page.locator("input.toggle-all")
    box = toggle_all.bounding_box()
    assert box["width"] >= 24 and box["height"] >= 24
    assert toggle_all.evaluate(HIT) is True
    toggle_all.click()
    expect(page.locator("ul.todo-list li.completed")).to_have_count(3)
    expect(toggle_all).to_be_checked()
    expect(page.locator(".todo-count")).to_have_text("0 items left")
    toggle_all.click()
    expect(page.locator("ul.todo-list li.completed")).to_have_count(0)
    expect(toggle_all).not_to_be_checked()

    # Checked once every todo is, one by one; unchecked again when one is not.
    for n in range(3):
        items(page).nth(n).locator("input.toggle").check()
    expect(toggle_all).to_be_checked()
    items(page).nth(1).locator("input.toggle").uncheck()
    expect(toggle_all).not_to_be_checked()
    expect(page.locator(".todo-count")).to_have_text("1 item left")

    # From the keyboard too: Space on the focused checkbox.
    toggle_all.focus()
    page.keyboard.press("Space")
    expect(page.locator("ul.todo-list li.completed")).to_have_count(3)

    # Clearing the completed todos leaves it unchecked, with nothing left to mark.
    page.click("button.clear-completed")
    expect(items(page)).to_have_count(0)
    expect(page.locator("section.main")).to_be_hidden()
    add(page, "four")
    expect(toggle_all).not_to_be_checked()


def test_a_todo_updated_in_a_filtered_view_follows_the_filter(server, page):
    page.goto(f"http://localhost:{server}/")
    login_and_load(page)
    add(page, "stays active")
    add(page, "gets done")
    page.click(".filters a[href='#/active']")
    expect(page.locator(".filters a.selected")).to_have_text("Active")
    expect(page.locator(".filters a[href='#/active']")).to_have_attribute("aria-current", "page")
    # click, not check(): the todo leaves the view once the server has it, so there is no box left to see checked.
    items(page).nth(1).locator("input.toggle").click()
    expect(items(page).locator("label")).to_have_text(["stays active"])
    page.click(".filters a[href='#/completed']")
    expect(items(page).locator("label")).to_have_text(["gets done"])
    items(page).first.locator("input.toggle").click()
    expect(items(page)).to_have_count(0)
    expect(page.locator("section.main")).to_be_visible()  # hidden only when there are no todos at all
    expect(page.locator("button.clear-completed")).to_be_hidden()
    page.click(".filters a[href='#/']")
    expect(items(page).locator("label")).to_have_text(["stays active", "gets done"])
    expect(page).to_have_url(f"http://localhost:{server}/#/")


def test_editing_follows_the_app_spec(server, page):
    """Double-click edits, with the text focused; Enter and blur save trimmed; Escape discards; empty destroys;
    editing mode is not kept across a reload; the other controls are hidden meanwhile."""
    page.goto(f"http://localhost:{server}/")
    login_and_load(page)
    add(page, "first")
    add(page, "second")
    first = items(page).first
    first.locator("label").dblclick()
    expect(first).to_have_class("editing")
    expect(first.locator("input.toggle")).to_be_hidden()
    expect(first.locator("button.destroy")).to_be_hidden()
    edit = first.locator("input.edit")
    expect(edit).to_be_focused()
    edit.press("End")
    page.keyboard.type(" changed  ")
    edit.press("Escape")
    expect(first.locator("label")).to_have_text("first")
    expect(first.locator("label")).to_be_focused()

    first.locator("label").dblclick()
    first.locator("input.edit").fill("  first, saved on blur  ")
    items(page).nth(1).locator("label").click()  # a click elsewhere blurs the edit
    expect(first.locator("label")).to_have_text("first, saved on blur")
    expect(first).not_to_have_class("editing")

    first.locator("label").dblclick()
    page.reload()
    expect(items(page).locator("label")).to_have_text(["first, saved on blur", "second"])
    expect(page.locator("ul.todo-list li.editing")).to_have_count(0)

    items(page).nth(1).locator("label").dblclick()
    items(page).nth(1).locator("input.edit").fill("")
    items(page).nth(1).locator("input.edit").press("Enter")
    expect(items(page).locator("label")).to_have_text(["first, saved on blur"])


TOO_LONG = "x" * 1001


def test_a_rejected_new_todo_keeps_its_text_with_the_reason_beside_it(server, page, page_errors):
    page_errors.expect_statuses(422)
    page.goto(f"http://localhost:{server}/")
    login_and_load(page)
    new_todo = page.locator("input.new-todo")
    add(page, TOO_LONG)
    error = page.locator("#new-todo-error")
    expect(error).to_have_text("A todo can be at most 1,000 characters long; this one has 1,001.")
    expect(new_todo).to_have_value(TOO_LONG)
    expect(new_todo).to_have_attribute("aria-invalid", "true")
    expect(new_todo).to_be_focused()
    expect(page.locator("[role=alert]")).to_be_empty()
    expect(items(page)).to_have_count(0)
    # Shortened by one character, it is added, and the reason goes.
    new_todo.press("End")
    new_todo.press("Backspace")
    new_todo.press("Enter")
    expect(items(page)).to_have_count(1)
    expect(new_todo).to_have_value("")
    expect(error).to_be_hidden()
    expect(new_todo).not_to_have_attribute("aria-invalid", "true")


def test_a_new_todo_the_server_cannot_store_now_keeps_its_text_too(server, page, page_errors):
    page_errors.expect_statuses(503)
    page.goto(f"http://localhost:{server}/")
    login_and_load(page)
    # What the server answers while its storage is down (unsigned, as it must be).
    page.route("**/api/add", lambda route: route.fulfill(
        status=503, content_type="application/json", headers={"Retry-After": "1"},
        body='{"exc":"ServiceUnavailable","err":["storage unavailable"],"retry_after":1}'))
    add(page, "not lost")
    expect(page.locator("#new-todo-error")).to_have_text(
        "The server's storage is unavailable. Please try again shortly.")
    expect(page.locator("input.new-todo")).to_have_value("not lost")
    page.unroute("**/api/add")
    page.press("input.new-todo", "Enter")
    expect(items(page).locator("label")).to_have_text(["not lost"])
    expect(page.locator("#new-todo-error")).to_be_hidden()


def test_a_rejected_edit_keeps_its_text_with_the_reason_beside_it(server, page, page_errors):
    page_errors.expect_statuses(422)
    page.goto(f"http://localhost:{server}/")
    login_and_load(page)
    add(page, "short")
    first = items(page).first
    first.locator("label").dblclick()
    first.locator("input.edit").fill(TOO_LONG)
    first.locator("input.edit").press("Enter")
    expect(first.locator(".edit-error")).to_have_text("A todo can be at most 1,000 characters long; this one has 1,001.")
    expect(first).to_have_class("editing")
    edit = first.locator("input.edit")
    expect(edit).to_have_value(TOO_LONG)
    expect(edit).to_be_focused()
    expect(edit).to_have_attribute("aria-invalid", "true")
    # Escape gives it up: the todo is as the server holds it.
    edit.press("Escape")
    expect(first.locator("label")).to_have_text("short")
    expect(first.locator(".edit-error")).to_have_count(0)
    # Again, then shortened: saved.
    first.locator("label").dblclick()
    first.locator("input.edit").fill(TOO_LONG)
    first.locator("input.edit").press("Enter")
    expect(first.locator(".edit-error")).to_be_visible()
    first.locator("input.edit").press("Backspace")
    first.locator("input.edit").press("Enter")
    expect(first.locator("label")).to_have_text("x" * 1000)
    expect(first.locator(".edit-error")).to_have_count(0)


def test_the_hint_and_editing_fit_the_pointer(server, page):
    """A mouse double-clicks; the pencil of touch screens is not shown."""
    page.goto(f"http://localhost:{server}/")
    login_and_load(page)
    add(page, "with a mouse")
    expect(page.locator(".info .hint-pointer")).to_be_visible()
    expect(page.locator(".info .hint-pointer")).to_have_text("Double-click a todo to edit it")
    expect(page.locator(".info .hint-touch")).to_be_hidden()
    expect(items(page).first.locator("button.edit-todo")).to_be_hidden()


def test_a_touch_screen_taps_to_edit_and_its_hint_says_so(server, browser, page_errors):
    phone = browser.new_context(viewport={"width": 360, "height": 740}, has_touch=True, is_mobile=True)
    try:
        page = page_errors.watch(phone.new_page())
        page.goto(f"http://localhost:{server}/")
        login_and_load(page)
        add(page, "tap me")
        expect(page.locator(".info .hint-touch")).to_be_visible()
        expect(page.locator(".info .hint-touch")).to_have_text("Tap ✎ beside a todo to edit it")
        expect(page.locator(".info .hint-pointer")).to_be_hidden()
        first = items(page).first
        pencil = first.locator("button.edit-todo")
        expect(pencil).to_be_visible()
        expect(pencil).to_have_attribute("aria-label", "Edit: tap me")
        pencil.tap()
        expect(first).to_have_class("editing")
        edit = first.locator("input.edit")
        expect(edit).to_be_focused()
        edit.press("End")
        page.keyboard.type(", tapped")
        edit.press("Enter")
        expect(first.locator("label")).to_have_text("tap me, tapped")
        # The other buttons are there without hovering, and the page still fits.
        expect(first.locator("button.destroy")).to_be_visible()
        expect(first.locator("button.destroy")).to_have_css("opacity", "1")
        expect(first.locator("button.history-open")).to_have_css("opacity", "1")
        first.locator("input.toggle").tap()
        expect(first).to_have_class("completed")
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 360
    finally:
        phone.close()


def test_chromium_prints_no_warning_on_any_screen(server, page):
    """Every message Chromium logs, at any level, on every screen of the UI: there is none."""
    messages = []
    page.on("console", lambda msg: messages.append((msg.type, msg.text)))
    page.goto(f"http://localhost:{server}/")
    expect(page.locator("form#login")).to_be_visible()
    login_and_load(page)
    add(page, "quiet")
    expect(items(page)).to_have_count(1)
    open_account(page)
    expect(sessions(page)).to_have_count(1)
    expect(page.locator("#password .password-username")).to_have_value("alice")
    page.click("button.account-close")
    items(page).first.hover()
    items(page).first.locator("button.history-open").click()
    expect(page.locator("ol.history-list li")).to_have_count(1)
    page.click("button.history-close")
    page.click("button.logout")
    expect(page.locator("form#login")).to_be_visible()
    assert messages == []


# -- a todo's history ---------------------------------------------------------------------------------------------------

AUDITED = {"users": ("bob@localhost",), "roles": {"alice@localhost": "auditor"}, "permissions": {"history": "auditor"}}


def history_entries(page):
    return page.locator("ol.history-list li")


def test_a_todos_history_says_who_changed_what_and_when_newest_first_a_page_at_a_time(todo_server, context):
    server = todo_server(**AUDITED)
    page = context.new_page()
    page.goto(f"http://localhost:{server}/")
    login_and_load(page)
    add(page, "Buy milk")
    first = items(page).first
    first.locator("label").dblclick()
    first.locator("input.edit").fill("Buy oat milk")
    first.locator("input.edit").press("Enter")
    expect(first.locator("label")).to_have_text("Buy oat milk")
    # Bob, elsewhere, ticks it and unticks it five times: 12 versions in all.
    bob = Client(f"http://localhost:{server}", host="localhost")
    bob.login("bob", PASSWORD)
    todo = bob.call("get_all")[0]
    for n in range(10):
        todo = bob.call("update", todo["id"], todo["vsn"], done=n % 2 == 0)
    expect(first.locator("button.history-open")).to_have_attribute("aria-label", "History: Buy oat milk")
    first.hover()
    first.locator("button.history-open").click()

    panel = page.locator("#history")
    expect(panel).to_be_visible()
    expect(page.locator("#history-title")).to_be_focused()
    expect(page.locator("#history .history-of")).to_have_text("Every change of “Buy oat milk”, newest first.")
    expect(page.locator("section.main")).to_be_hidden()
    expect(page.locator("input.new-todo")).to_be_hidden()
    entries = history_entries(page)
    expect(entries).to_have_count(10)
    expect(page.locator(".history-range")).to_have_text("Changes 1–10 of 12")
    assert entries.evaluate_all("(lis) => lis.map((li) => Number(li.dataset.vsn))") == list(range(12, 2, -1))
    expect(entries.first).to_contain_text("bob marked it active")
    expect(entries.nth(1)).to_contain_text("bob marked it completed")
    # When: a time element with the moment in ISO 8601 and the browser's own words for it.
    moment = entries.first.locator("time").get_attribute("datetime")
    assert moment.endswith("Z") and moment[:4].isdigit()
    expect(page.locator("button.history-newer")).to_be_disabled()

    page.click("button.history-older")
    expect(entries).to_have_count(2)
    expect(page.locator(".history-range")).to_have_text("Changes 11–12 of 12")
    expect(entries.locator(".by")).to_have_text(["alice", "alice"])
    expect(entries.locator(".what")).to_have_text(["changed “Buy milk” to “Buy oat milk”", "added “Buy milk”"])
    expect(page.locator("button.history-older")).to_be_disabled()
    expect(page.locator("#history-title")).to_be_focused()  # not left on a disabled button
    page.click("button.history-newer")
    expect(entries).to_have_count(10)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "todo-history.png"), full_page=True, animations="disabled")

    # Back to the list, which shows what bob changed meanwhile; the focus goes back where it was.
    page.click("button.history-close")
    expect(panel).to_be_hidden()
    expect(first.locator("button.history-open")).to_be_focused()
    expect(first).not_to_have_class("completed")
    expect(items(page)).to_have_count(1)


def test_history_is_offered_only_to_users_the_permissions_let_call_it(todo_server, context):
    server = todo_server(**AUDITED)
    alice = context.new_page()
    alice.goto(f"http://localhost:{server}/")
    login_and_load(alice)
    add(alice, "audited")
    expect(items(alice).first.locator("button.history-open")).to_be_attached()
    expect(items(alice).first.locator("button.history-open")).not_to_have_attribute("hidden", "")

    bob = context.new_page()
    bob.goto(f"http://localhost:{server}/")
    login_and_load(bob, "bob")
    expect(items(bob).locator("label")).to_have_text(["audited"])
    items(bob).first.hover()
    expect(items(bob).first.locator("button.history-open")).to_be_hidden()
    expect(items(bob).first.locator("button.destroy")).to_be_visible()


def test_without_permissions_every_user_sees_the_history(server, page):
    page.goto(f"http://localhost:{server}/")
    login_and_load(page)
    add(page, "open to all")
    items(page).first.locator("input.toggle").check()
    expect(items(page).first).to_have_class("completed")
    items(page).first.hover()
    items(page).first.locator("button.history-open").click()
    expect(history_entries(page).locator(".what")).to_have_text(["marked it completed", "added “open to all”"])
    expect(page.locator(".history-pages")).to_be_hidden()  # one page
    # From the keyboard too.
    page.locator("button.history-close").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#history")).to_be_hidden()


def test_history_refused_after_the_users_roles_changed_is_offered_no_more(todo_gunicorn, tmp_path, page, page_errors,
                                                                          capsys):
    """The operator takes the role away while the page is open: the next click is refused, said, and the button
    goes."""
    from kernel.testing import main

    page_errors.expect_statuses(403)
    server = todo_gunicorn(storage=f"sqlite:///{tmp_path / 'todos.sqlite3'}", **AUDITED)
    page.goto(f"http://localhost:{server.port}/")
    login_and_load(page)
    add(page, "audited")
    history = items(page).first.locator("button.history-open")
    expect(history).to_have_attribute("aria-label", "History: audited")
    expect(history).not_to_have_attribute("hidden", "")
    ini = Path(server.log_path).parent / "bastion.ini"
    assert main(["--config", str(ini), "roles", "alice", "--domain", "localhost", "--set", ""]) == 0
    assert "alice@localhost now has no roles." in capsys.readouterr().out
    items(page).first.hover()
    history.click()
    expect(page.get_by_role("alert")).to_have_text("You are not allowed to do that.")
    expect(page.locator("#history")).to_be_hidden()
    expect(items(page).locator("label")).to_have_text(["audited"])
    items(page).first.hover()
    expect(history).to_be_hidden()
