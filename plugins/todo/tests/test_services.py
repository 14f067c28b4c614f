"""The todo services obey docs/protocol.md section 10, rule by rule and in its order of errors."""

from __future__ import annotations

import pytest
from bastion_todo import CLEAR_CHUNK, PAGE_LIMIT, Todo

from kernel import BastionError, ServiceUnavailable, storage

ALL_SERVICES = ["add", "clear_completed", "get_all", "history", "permitted", "remove", "update"]


def status(error) -> tuple[int, str]:
    return error.status, error.exc


# -- registration ------------------------------------------------------------


def test_the_plugin_registers_its_model_and_services(app):
    assert [info.name for info in app.runtime.models] == ["Todo"]
    assert [name for name in app.runtime.services.names() if name in ALL_SERVICES] == ALL_SERVICES


def test_permitted_names_every_todo_service_when_no_authorization_says_otherwise(call):
    assert call("permitted") == ["get_all", "add", "update", "remove", "clear_completed", "history"]


def test_permitted_names_only_the_services_the_callers_roles_allow(users_app, login):
    users_app({"alice@localhost": "alice's password", "bob@localhost": "bob's password"},
              sections={"permissions": {"history": "auditor", "clear_completed": "admin, auditor"},
                        "roles": {"alice@localhost": "auditor"}},
              only=["storage_mem", "auth", "permissions", "todo"])
    alice, bob = login("alice"), login("bob")
    assert alice.call("permitted") == ["get_all", "add", "update", "remove", "clear_completed", "history"]
    assert bob.call("permitted") == ["get_all", "add", "update", "remove"]
    todo = bob.call("add", "mine")
    assert len(alice.call("history", todo["id"])) == 1  # what permitted says is what the calls meet
    with pytest.raises(BastionError) as refused:
        bob.call("history", todo["id"])
    assert status(refused.value) == (403, "Forbidden")


def test_permitted_takes_no_argument(call):
    assert status(call.error("permitted", "history")) == (400, "InvalidCall")


def test_the_model_indexes_done(app):
    (info,) = list(app.runtime.models)
    assert info.index_fields == {"done"}


# -- add and get_all ---------------------------------------------------------


def test_add_returns_a_new_todo(call):
    todo = call("add", "Play with Fanery")
    assert set(todo) == {"id", "vsn", "text", "done"}
    assert isinstance(todo["id"], str) and todo["id"]
    assert todo["vsn"] == 1
    assert todo["text"] == "Play with Fanery"
    assert todo["done"] is False


def test_add_takes_text_by_name_too(call):
    assert call("add", text="named")["text"] == "named"


def test_get_all_lists_oldest_first(call):
    assert call("get_all") == []
    first = call("add", "one")
    second = call("add", "two")
    third = call("add", "three")
    assert call("get_all") == [first, second, third]


def test_get_all_shows_changes(call):
    todo = call("add", "one")
    changed = call("update", todo["id"], 1, done=True)
    assert call("get_all") == [changed]


def test_get_all_answers_pages_after_a_todo(call):
    todos = [call("add", f"todo {n}") for n in range(7)]
    assert call("get_all", None, 3) == todos[:3]
    assert call("get_all", todos[2]["id"], 3) == todos[3:6]
    assert call("get_all", after=todos[5]["id"], limit=3) == todos[6:]  # shorter than the limit: the last page
    assert call("get_all", after=todos[6]["id"]) == []
    assert call("get_all", limit=PAGE_LIMIT) == call("get_all") == call("get_all", None, None) == todos
    changed = call("update", todos[0]["id"], 1, done=True)
    assert call("get_all", limit=1) == [changed]  # a change keeps a todo's place


def test_get_all_answers_every_todo_and_pages_of_at_most_1000(app, call):
    with app.runtime.bind("localhost"), storage() as db:
        for n in range(PAGE_LIMIT + 1):
            db.insert(Todo, text=f"todo {n}")
    every = call("get_all")
    assert len(every) == PAGE_LIMIT + 1  # without a limit, every todo: the version 1 contract
    first = call("get_all", None, PAGE_LIMIT)
    assert PAGE_LIMIT == 1000 and first == every[:PAGE_LIMIT]
    assert call("get_all", first[-1]["id"], PAGE_LIMIT) == every[PAGE_LIMIT:]
    assert call("get_all", first[-1]["id"]) == every[PAGE_LIMIT:]  # every todo after that one


def test_get_all_after_a_removed_or_unknown_todo_is_404(call, caller):
    kept, removed = call("add", "kept"), call("add", "removed")
    theirs = caller("other.localhost")("add", "another domain's")
    assert call("remove", removed["id"], 1) is True
    for after in (removed["id"], "no such todo", theirs["id"], "", "x" * 1000):
        assert status(call.error("get_all", after)) == (404, "RecordNotFound")
    assert call("get_all", kept["id"]) == []


@pytest.mark.parametrize("args, kwargs", [
    ((1,), {}), ((None, 0), {}), ((None, PAGE_LIMIT + 1), {}), ((None, -1), {}), ((None, True), {}), ((None, "10"), {}),
    ((None, 1.5), {}), ((), {"limit": "all"}), ((), {"after": ["x"]}), ((), {"page": 2}), ((None, 10, 3), {}),
])
def test_get_all_with_an_after_or_limit_of_the_wrong_kind_is_400(call, args, kwargs):
    call("add", "one")
    assert status(call.error("get_all", *args, **kwargs)) == (400, "InvalidCall")


@pytest.mark.parametrize("args, kwargs", [
    ((), {}),
    (("a", "b"), {}),
    ((), {"txt": "typo"}),
    (("a",), {"text": "twice"}),
])
def test_add_with_arguments_that_do_not_bind_is_400(call, args, kwargs):
    assert status(call.error("add", *args, **kwargs)) == (400, "InvalidCall")
    assert call("get_all") == []


@pytest.mark.parametrize("text, kind", [
    (None, "null"), (1, "number"), (1.5, "number"), (True, "boolean"), ([], "array"), ({}, "object"),
])
def test_add_with_text_that_is_not_a_string_is_422(call, text, kind):
    error = call.error("add", text)
    assert status(error) == (422, "ValidationError")
    assert error.fields == {"text": {"bad_type": kind}}
    assert call("get_all") == []


@pytest.mark.parametrize("text", [
    "", " ", "   \t\n\r ", "\u00a0", "\u2003\u3000", "\u2028\u2029", "\x0b\x0c\x1c\x85", " \u1680\u202f\u205f ",
])
def test_add_with_blank_text_is_422(call, text):
    error = call.error("add", text)
    assert status(error) == (422, "ValidationError")
    assert error.fields == {"text": {"invalid": text}}


@pytest.mark.parametrize("text", ["\u200b", "\ufeff", "\u180e", "x", " x "])
def test_characters_that_python_does_not_call_whitespace_are_not_blank(call, text):
    assert call("add", text)["text"] == text


def test_text_may_hold_1000_code_points(call):
    # Astral characters are one code point each (two UTF-16 units, four UTF-8 bytes).
    text = "😀" * 999 + "é"
    assert call("add", text)["text"] == text


def test_text_of_1001_code_points_is_422(call):
    error = call.error("add", "a" * 1001)
    assert status(error) == (422, "ValidationError")
    assert error.fields == {"text": {"too_long": 1001}}
    assert call("get_all") == []


def test_text_length_counts_code_points_not_bytes(call):
    assert status(call.error("add", "😀" * 1001)) == (422, "ValidationError")


# -- update: the order of errors ---------------------------------------------


@pytest.mark.parametrize("vsn", [True, False, "1", 1.0, None, [1], {"v": 1}])
def test_update_with_a_vsn_that_is_not_an_integer_is_400(call, vsn):
    todo = call("add", "one")
    error = call.error("update", todo["id"], vsn, done=True)
    assert status(error) == (400, "InvalidCall")
    assert "vsn" in error.err[0]
    assert call("get_all") == [todo]


@pytest.mark.parametrize("id", [1, None, True, ["x"], {"id": "x"}])
def test_update_with_an_id_that_is_not_a_string_is_400(call, id):
    error = call.error("update", id, 1, done=True)
    assert status(error) == (400, "InvalidCall")
    assert "id" in error.err[0]


def test_a_bad_vsn_type_is_400_even_for_an_unknown_id(call):
    assert status(call.error("update", "no-such-id", True)) == (400, "InvalidCall")


@pytest.mark.parametrize("kwargs", [{}, {"id": "x"}, {"vsn": 1}, {"id": "x", "vsn": 1, "colour": "red"}])
def test_update_with_arguments_that_do_not_bind_is_400(call, kwargs):
    assert status(call.error("update", **kwargs)) == (400, "InvalidCall")


def test_update_of_an_unknown_id_is_404_before_a_bad_vsn(call):
    call("add", "one")
    assert status(call.error("update", "no-such-id", 1, done=True)) == (404, "RecordNotFound")
    assert status(call.error("update", "no-such-id", 99, done=None)) == (404, "RecordNotFound")
    assert status(call.error("update", "", 1)) == (404, "RecordNotFound")


def test_update_with_a_stale_vsn_is_409_and_changes_nothing(call):
    todo = call("add", "one")
    current = call("update", todo["id"], 1, text="two")
    for vsn in (1, 3, 0, -1):
        assert status(call.error("update", todo["id"], vsn, text="three", done=True)) == (409, "VersionConflict")
    assert call("get_all") == [current]


def test_a_stale_vsn_is_409_before_invalid_fields(call):
    todo = call("add", "one")
    call("update", todo["id"], 1, done=True)
    assert status(call.error("update", todo["id"], 1, text=None, done="yes")) == (409, "VersionConflict")


@pytest.mark.parametrize("fields, expected", [
    ({"text": None}, {"text": {"bad_type": "null"}}),
    ({"done": None}, {"done": {"bad_type": "null"}}),
    ({"text": ""}, {"text": {"invalid": ""}}),
    ({"text": " \u3000 "}, {"text": {"invalid": " \u3000 "}}),
    ({"text": "x" * 1001}, {"text": {"too_long": 1001}}),
    ({"text": 7}, {"text": {"bad_type": "number"}}),
    ({"done": 1}, {"done": {"bad_type": "number"}}),
    ({"done": 0}, {"done": {"bad_type": "number"}}),
    ({"done": "true"}, {"done": {"bad_type": "string"}}),
    ({"text": None, "done": None}, {"text": {"bad_type": "null"}, "done": {"bad_type": "null"}}),
])
def test_update_with_invalid_fields_is_422_and_changes_nothing(call, fields, expected):
    todo = call("add", "one")
    error = call.error("update", todo["id"], 1, **fields)
    assert status(error) == (422, "ValidationError")
    assert error.fields == expected
    assert call("get_all") == [todo]


def test_one_invalid_field_spoils_the_whole_update(call):
    todo = call("add", "one")
    assert status(call.error("update", todo["id"], 1, text="fine", done=None)) == (422, "ValidationError")
    assert call("get_all") == [todo]


# -- update: what it changes -------------------------------------------------


def test_update_naming_no_field_changes_nothing_and_returns_the_todo_as_stored(call):
    todo = call("add", "one")
    assert call("update", todo["id"], 1) == todo
    assert call("update", id=todo["id"], vsn=1) == todo
    assert call("get_all") == [todo]


def test_update_without_fields_still_checks_the_version(call):
    todo = call("add", "one")
    assert status(call.error("update", todo["id"], 2)) == (409, "VersionConflict")


def test_update_done_raises_the_version_by_one(call):
    todo = call("add", "one")
    done = call("update", todo["id"], 1, done=True)
    assert done == {**todo, "vsn": 2, "done": True}
    undone = call("update", todo["id"], 2, done=False)
    assert undone == {**todo, "vsn": 3, "done": False}


def test_update_text_raises_the_version_by_one(call):
    todo = call("add", "one")
    assert call("update", todo["id"], 1, text="uno") == {**todo, "vsn": 2, "text": "uno"}


def test_update_of_both_fields_is_one_version(call):
    todo = call("add", "one")
    assert call("update", todo["id"], 1, text="uno", done=True) == {**todo, "vsn": 2, "text": "uno", "done": True}


def test_update_takes_its_parameters_in_documented_order(call):
    todo = call("add", "one")
    assert call("update", todo["id"], 1, "uno", True) == {**todo, "vsn": 2, "text": "uno", "done": True}


def test_update_to_the_same_value_is_still_a_new_version(call):
    todo = call("add", "one")
    assert call("update", todo["id"], 1, text="one", done=False)["vsn"] == 2


# -- remove --------------------------------------------------------------------


def test_remove_returns_true_and_the_todo_is_gone(call):
    keep = call("add", "keep")
    todo = call("add", "drop")
    assert call("remove", todo["id"], 1) is True
    assert call("get_all") == [keep]
    assert status(call.error("update", todo["id"], 1)) == (404, "RecordNotFound")
    assert status(call.error("remove", todo["id"], 1)) == (404, "RecordNotFound")


@pytest.mark.parametrize("vsn", [True, "1", 1.0, None])
def test_remove_with_a_vsn_that_is_not_an_integer_is_400(call, vsn):
    todo = call("add", "one")
    assert status(call.error("remove", todo["id"], vsn)) == (400, "InvalidCall")
    assert call("get_all") == [todo]


def test_remove_of_an_unknown_id_is_404_before_a_bad_vsn(call):
    assert status(call.error("remove", "no-such-id", 42)) == (404, "RecordNotFound")
    assert status(call.error("remove", 7, 1)) == (400, "InvalidCall")


def test_remove_with_a_stale_vsn_is_409_and_removes_nothing(call):
    todo = call("add", "one")
    current = call("update", todo["id"], 1, done=True)
    assert status(call.error("remove", todo["id"], 1)) == (409, "VersionConflict")
    assert call("get_all") == [current]


def test_remove_takes_no_fields(call):
    todo = call("add", "one")
    assert status(call.error("remove", todo["id"], 1, done=True)) == (400, "InvalidCall")


# -- clear_completed -----------------------------------------------------------


def test_clear_completed_removes_the_done_todos_and_counts_them(call):
    a = call("add", "a")
    b = call("add", "b")
    c = call("add", "c")
    d = call("add", "d")
    call("update", a["id"], 1, done=True)
    call("update", c["id"], 1, done=True)
    assert call("clear_completed") == 2
    assert call("get_all") == [b, d]
    assert call("clear_completed") == 0


def test_clear_completed_with_no_todos_is_zero(call):
    assert call("clear_completed") == 0


def test_clear_completed_takes_no_arguments(call):
    assert status(call.error("clear_completed", True)) == (400, "InvalidCall")


class RacingDriver:
    """Delegates to a driver, running ``race`` once just before the next commit."""

    def __init__(self, driver, race):
        self._driver = driver
        self._race = race

    def commit(self, domain, changes):
        race, self._race = self._race, None
        if race is not None:
            race()
        return self._driver.commit(domain, changes)

    def __getattr__(self, name):
        return getattr(self._driver, name)


def test_clear_completed_is_all_or_nothing(app, call):
    a = call("add", "a")
    b = call("add", "b")
    a = call("update", a["id"], 1, done=True)
    b = call("update", b["id"], 1, done=True)

    def someone_else_edits_b():
        with storage() as db:
            db.update(Todo, b["id"], b["vsn"], text="edited meanwhile")

    app.runtime.records = RacingDriver(app.runtime.records, someone_else_edits_b)
    assert status(call.error("clear_completed")) == (409, "VersionConflict")
    assert call("get_all") == [a, {**b, "vsn": 3, "text": "edited meanwhile"}]


class CommitLog:
    """Delegates to a driver, keeping the changes of each commit it is asked for; ``fail`` (an error to raise,
    or a callable to run first) acts on the commit whose number (from 1) is ``at``."""

    def __init__(self, driver, fail=None, at: int = 0):
        self._driver = driver
        self._fail, self._at = fail, at
        self.commits: list[list] = []

    def commit(self, domain, changes):
        self.commits.append(list(changes))
        if len(self.commits) == self._at:
            if isinstance(self._fail, BaseException):
                raise self._fail
            self._fail()
        return self._driver.commit(domain, changes)

    def __getattr__(self, name):
        return getattr(self._driver, name)


def _fill(app, count: int) -> tuple[list[dict], list[str]]:
    """``count`` todos, every fifth one not done, added in one unit of work; return them and the done ones' ids."""
    with app.runtime.bind("localhost"), storage() as db:
        records = [db.insert(Todo, text=f"todo {n}", done=n % 5 != 0) for n in range(count)]
    todos = [Todo.to_dict(record) for record in records]
    return todos, [todo["id"] for todo in todos if todo["done"]]


@pytest.fixture(params=["mem", "sqlite"])
def any_app(request, make_app, tmp_path):
    """An app on the in-memory storage, or on a SQLite file."""
    if request.param == "mem":
        return make_app(only=["storage_mem", "todo"])
    pytest.importorskip("bastion_storage_sql", reason="the SQL storage plugin is not installed")
    return make_app({"bastion": {"storage": f"sqlite:///{tmp_path}/todo.sqlite3"}}, only=["storage_sql", "todo"])


def test_clear_completed_removes_every_done_todo_a_chunk_per_commit(any_app):
    def call(name, *args):
        with any_app.runtime.bind("localhost"):
            return any_app.runtime.services.get(name)(list(args), {})

    todos, done = _fill(any_app, 1300)  # 1,040 done: chunks of 500, 500 and 40
    log = any_app.runtime.records = CommitLog(any_app.runtime.records)
    assert call("clear_completed") == len(done) == 1040
    assert call("get_all") == [todo for todo in todos if not todo["done"]]  # only the done ones went
    assert [len(changes) for changes in log.commits] == [CLEAR_CHUNK, CLEAR_CHUNK, 40]
    assert [[(c.op, c.id) for c in changes] for changes in log.commits] == [
        [("delete", id) for id in done[start:start + CLEAR_CHUNK]] for start in range(0, len(done), CLEAR_CHUNK)]
    assert [v["data"] for v in call("history", done[-1])][-1] is None  # its removal is in its history
    assert call("clear_completed") == 0 and len(log.commits) == 3  # nothing to remove: no commit


def test_clear_completed_of_exactly_one_chunk_answers_it_after_one_commit(app, call):
    _, done = _fill(app, CLEAR_CHUNK * 5 // 4)  # every fifth not done: CLEAR_CHUNK done
    log = app.runtime.records = CommitLog(app.runtime.records)
    assert len(done) == CLEAR_CHUNK and call("clear_completed") == CLEAR_CHUNK
    assert [len(changes) for changes in log.commits] == [CLEAR_CHUNK]  # the next read found none: nothing to commit
    assert [todo for todo in call("get_all") if todo["done"]] == []


def test_a_later_chunk_reads_its_todos_again_and_removes_only_those_still_done(app, call):
    todos, done = _fill(app, 1300)
    undone, gone = done[CLEAR_CHUNK + 100], done[CLEAR_CHUNK + 200]  # of the second chunk

    def others_change_the_second_chunk_meanwhile():  # after the list was read, before the second chunk is
        with storage() as db:
            db.update(Todo, undone, 1, done=False)
            db.delete(Todo, gone, 1)

    app.runtime.records = CommitLog(app.runtime.records, others_change_the_second_chunk_meanwhile, at=1)
    assert call("clear_completed") == len(done) - 2  # neither is counted: this call did not remove them
    assert [todo["id"] for todo in call("get_all")] == [todo["id"] for todo in todos
                                                         if not todo["done"] or todo["id"] == undone]


@pytest.mark.parametrize("failure", ["conflict", "outage"])
def test_a_chunk_that_fails_removes_nothing_and_leaves_the_chunks_before_it_removed(app, call, failure):
    todos, done = _fill(app, 1300)
    first_of_second = next(todo for todo in todos if todo["id"] == done[CLEAR_CHUNK])

    def someone_else_edits_a_todo_of_the_second_chunk():
        with storage() as db:
            db.update(Todo, first_of_second["id"], 1, text="edited meanwhile")

    if failure == "conflict":  # the driver refuses the second chunk's commit: one of its todos changed once read
        log = CommitLog(app.runtime.records, someone_else_edits_a_todo_of_the_second_chunk, at=2)
    else:
        log = CommitLog(app.runtime.records, ServiceUnavailable("storage unavailable"), at=2)
    app.runtime.records = log
    expected = (409, "VersionConflict") if failure == "conflict" else (503, "ServiceUnavailable")
    assert status(call.error("clear_completed")) == expected
    removals = [changes for changes in log.commits if all(change.op == "delete" for change in changes)]
    assert len(removals) == 2  # nothing was tried after the chunk that failed (the edit was a commit too)
    left = {todo["id"]: todo for todo in call("get_all")}
    assert not set(done[:CLEAR_CHUNK]) & set(left)  # the first chunk stays removed
    assert set(done[CLEAR_CHUNK:]) <= set(left)  # the second removed nothing (nor did anything after it)
    assert [todo["id"] for todo in todos if not todo["done"]] == [id for id in left if not left[id]["done"]]
    assert call("clear_completed") == len(done) - CLEAR_CHUNK  # calling again removes the rest
    assert [todo for todo in call("get_all") if todo["done"]] == []


# -- tenants -------------------------------------------------------------------


def test_todos_are_private_to_their_domain(caller):
    alpha, beta = caller("alpha.localhost"), caller("beta.localhost")
    todo = alpha("add", "alpha's")
    alpha("update", todo["id"], 1, done=True)
    theirs = beta("add", "beta's")
    beta("update", theirs["id"], 1, done=True)

    assert beta("get_all") == [{**theirs, "vsn": 2, "done": True}]
    assert status(beta.error("update", todo["id"], 2, text="stolen")) == (404, "RecordNotFound")
    assert status(beta.error("remove", todo["id"], 2)) == (404, "RecordNotFound")
    assert beta("clear_completed") == 1
    assert alpha("get_all") == [{**todo, "vsn": 2, "done": True}]
    assert beta("get_all") == []


def test_a_domain_sees_only_its_own_todos_in_order(caller):
    alpha, beta = caller("alpha.localhost"), caller("beta.localhost")
    a1 = alpha("add", "a1")
    b1 = beta("add", "b1")
    a2 = alpha("add", "a2")
    assert alpha("get_all") == [a1, a2]
    assert beta("get_all") == [b1]


# -- the model on its own --------------------------------------------------------


def test_a_new_todo_is_not_done_and_empty(app, call):
    with app.runtime.bind("localhost"), storage() as db:
        record = db.insert(Todo, id="fixed")
        assert (record.text, record.done) == ("", False)
        assert Todo.validate(record) == {"text": {"invalid": ""}}
        db.delete(record)


def test_to_dict_is_the_wire_form(app):
    with app.runtime.bind("localhost"):
        with storage() as db:
            record = db.insert(Todo, text="x")
        assert Todo.to_dict(record) == {"id": record._id, "vsn": 1, "text": "x", "done": False}


# -- history -----------------------------------------------------------------


def test_the_model_keeps_its_history():
    assert (Todo.history, Todo.history_limit) == (True, 100)


def test_history_returns_every_version_oldest_first(app, call, fake_clock):
    todo = call("add", "one")
    fake_clock.advance(10)
    call("update", todo["id"], 1, text="two")
    call("update", todo["id"], 2, done=True)
    fake_clock.advance(5)
    call("remove", todo["id"], 3)
    start = fake_clock() - 15
    # Outside a signed call (here: a caller bound by the kernel) nobody is named.
    assert call("history", todo["id"]) == [
        {"vsn": 1, "at": start, "by": None, "data": {"done": False, "text": "one"}},
        {"vsn": 2, "at": start + 10, "by": None, "data": {"done": False, "text": "two"}},
        {"vsn": 3, "at": start + 10, "by": None, "data": {"done": True, "text": "two"}},
        {"vsn": 4, "at": start + 15, "by": None, "data": None},  # removed: its history stays (within the bound)
    ]


def test_history_names_who_committed_each_version(users_app, login):
    users_app({"alice@localhost": "alice's password", "bob@localhost": "bob's password"}, only=["storage_mem", "todo"])
    alice, bob = login("alice"), login("bob")
    todo = alice.call("add", "shared")
    bob.call("update", todo["id"], 1, done=True)
    done = [todo["id"] for todo in alice.call("get_all") if todo["done"]]
    assert alice.call("clear_completed") == 1 and done == [todo["id"]]
    assert [(v["vsn"], v["by"], v["data"] and v["data"]["done"]) for v in bob.call("history", todo["id"])] == [
        (1, "alice", False), (2, "bob", True), (3, "alice", None)]


def test_a_change_that_fails_writes_no_version(call):
    todo = call("add", "one")
    for name, args, kwargs in (("update", (todo["id"], 1), {"text": "  "}), ("update", (todo["id"], 7), {"done": True}),
                               ("remove", (todo["id"], 9), {}), ("update", (todo["id"], 1), {"done": "yes"})):
        with pytest.raises(BastionError):
            call(name, *args, **kwargs)
    assert [v["vsn"] for v in call("history", todo["id"])] == [1]


def test_history_keeps_the_last_hundred_versions(call):
    todo = call("add", "v1")
    for vsn in range(1, 120):
        call("update", todo["id"], vsn, text=f"v{vsn + 1}")
    versions = call("history", todo["id"])
    assert len(versions) == 100
    assert [v["vsn"] for v in versions] == list(range(21, 121))
    assert versions[-1]["data"]["text"] == "v120"


@pytest.mark.parametrize("id", ["no such todo", "", "a\u0000b", "x" * 257])
def test_history_of_an_unknown_todo_is_record_not_found(call, id):
    assert status(call.error("history", id)) == (404, "RecordNotFound")


@pytest.mark.parametrize("args", [[], [1], [None], ["a", "b"]])
def test_history_needs_one_string_id(call, args):
    assert status(call.error("history", *args)) == (400, "InvalidCall")


def test_history_is_private_to_its_domain(caller):
    alpha, beta = caller("alpha.localhost"), caller("beta.localhost")
    todo = alpha("add", "alpha's")
    assert status(beta.error("history", todo["id"])) == (404, "RecordNotFound")
    assert len(alpha("history", todo["id"])) == 1
