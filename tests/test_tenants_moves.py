"""Tenants move between every pair of shipped engines: users, todos, a third-party plugin's model, history.

A source app (auth, todo and a plugin model of this module) is filled through
its services on three tenants; the tenants go to the target by
``bastion copy --verify`` (or, for ``mem://``, which lives in one process,
by an export read or written in the app's own process); a target app then
serves them: the same ids and versions, the same history, and the users log
in with their old passwords.
"""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import pytest

from kernel import Errors, hookimpl, storage
from kernel.cli import main
from kernel.core.plugins import get_plugin_manager
from kernel.tenants import moves

PASSWORD = "correct horse battery"

#: The plugins of both apps and of the commands (the Note plugin of this module besides).
PLUGINS = ["auth", "todo", "storage_mem", "storage_sql", "storage_redis"]

UNICODE = "caf\u00e9 \u2603 \U0001F600 \u05e9\u05dc\u05d5\u05dd \u4e2d\u6587"


class Note:
    """A third-party plugin's model, keeping history: the commands know nothing of it."""

    __model__ = "TenantsNote"
    history = True
    history_limit = 5

    @classmethod
    def initialize(cls, record):
        record.merge(title="", tags=[])

    @classmethod
    def validate(cls, record):
        return Errors()

    @classmethod
    def index(cls, record):
        return {"title": record.title}


class NotePlugin:
    @hookimpl
    def bastion_models(self):
        return [Note]


def _tenants() -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"{name}-{run}.localhost" for name in ("alpha", "beta", "gamma")]


def _seed(app, login, tenants: list[str]) -> dict:
    """Three tenants: a user each, todos added, changed (history) and removed, unicode, notes; return what the
    target must serve: each tenant's todos, one history, its notes."""
    expected = {}
    for n, tenant in enumerate(tenants):
        client = login(f"user{n}@{tenant}")
        todos = [client.call("add", f"{UNICODE} {tenant} {i}") for i in range(6)]
        changed = client.call("update", todos[0]["id"], 1, done=True)
        client.call("update", changed["id"], changed["vsn"], text=f"{UNICODE} changed")
        client.call("remove", todos[1]["id"], 1)
        with app.runtime.bind(tenant):
            with storage() as db:
                note = db.insert(Note, id=f"note-{n}", title=UNICODE, tags=["a", "b"])
            with storage() as db:
                db.update(db.fetch(Note, note._id), title="second")
        expected[tenant] = {"todos": client.call("get_all"), "history": client.call("history", todos[0]["id"]),
                            "removed": client.call("history", todos[1]["id"]), "first": todos[0]["id"],
                            "gone": todos[1]["id"]}
    return expected


def _check_target(app, login, tenants: list[str], expected: dict) -> None:
    for n, tenant in enumerate(tenants):
        client = login(f"user{n}@{tenant}", password=PASSWORD, app=app)
        want = expected[tenant]
        assert client.call("get_all") == want["todos"]
        assert client.call("history", want["first"]) == want["history"]
        assert client.call("history", want["gone"]) == want["removed"]
        moved = client.call("update", want["todos"][0]["id"], want["todos"][0]["vsn"], done=False)
        assert moved["vsn"] == want["todos"][0]["vsn"] + 1  # a client holding {id, vsn} keeps working
        with app.runtime.bind(tenant), storage() as db:
            note = db.fetch(Note, f"note-{n}")
            assert (note.title, note.tags, note._vsn) == ("second", ["a", "b"], 2)
            assert [v["data"]["title"] for v in db.history(Note, note._id)] == [UNICODE, "second"]
            assert [r._id for r in db.select(Note, {"title": "second"})] == [note._id]


@pytest.fixture
def engine(tmp_path, request):
    """A fresh storage URL for an engine's name (a database of its own, or the shared server: the tenants'
    names are the test's own)."""
    def url(name: str) -> str:
        if name == "mem":
            return "mem://"
        if name == "sqlite":
            return f"sqlite:///{tmp_path / f'{uuid.uuid4().hex[:8]}.sqlite3'}"
        if name == "postgresql":
            return request.getfixturevalue("postgres_server").create_database(f"t{uuid.uuid4().hex[:10]}")
        if name == "redis":
            return request.getfixturevalue("redis_server").url
        if name == "cluster":
            return request.getfixturevalue("redis_cluster").url
        raise AssertionError(name)

    return url


def _ini(tmp_path: Path, storage_url: str = "mem://") -> str:
    ini = tmp_path / f"{uuid.uuid4().hex[:6]}.ini"
    ini.write_text(f"[bastion]\ndevelopment = true\nstorage = {storage_url}\n")
    return str(ini)


def _pm():
    pm = get_plugin_manager(only=PLUGINS, trace=False)
    pm.register(NotePlugin())
    return pm


def _app(users_app, url: str, tenants: list[str] | None = None):
    users = {f"user{n}@{tenant}": PASSWORD for n, tenant in enumerate(tenants or [])}
    return users_app(users, sections={"bastion": {"storage": url}}, plugins=[NotePlugin()], only=PLUGINS)


#: Every ordered pair of the persistent engines (mem:// goes out and comes in through a file, below).
PAIRS = [(source, target) for source in ("sqlite", "postgresql", "redis", "cluster")
         for target in ("sqlite", "postgresql", "redis", "cluster") if source != target]


@pytest.mark.parametrize(("source", "target"), PAIRS, ids=[f"{a}-to-{b}" for a, b in PAIRS])
def test_copy_verify_moves_three_tenants_between_engines(source, target, engine, users_app, login, tmp_path, capsys):
    tenants = _tenants()
    source_url, target_url = engine(source), engine(target)
    expected = _seed(_app(users_app, source_url, tenants), login, tenants)
    argv = ["--config", _ini(tmp_path), "copy", "--from", source_url, "--to", target_url, "--verify"]
    for tenant in tenants:
        argv += ["--tenant", tenant]
    assert main(argv, pm=_pm()) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert f"verified 3 tenants: {3 * (5 + 1 + 1 + 1)} records" in out  # 5 todos, 1 removed, a user, a note each
    _check_target(_app(users_app, target_url), login, tenants, expected)


@pytest.mark.parametrize("target", ["sqlite", "redis"])
def test_mem_tenants_go_out_and_come_in_through_a_file(target, engine, users_app, login, tmp_path, capsys):
    """mem:// lives in its app's process: its tenants are exported there, imported with the command, and back."""
    tenants = _tenants()
    source = _app(users_app, "mem://", tenants)
    expected = _seed(source, login, tenants)
    store, models = source.runtime.records, moves.declared_models(source.runtime.models)
    path = tmp_path / "mem.export"
    with path.open("wb") as out:
        moves.export(store, {t: store.tenant_counts(t) for t in tenants}, models, out, "test")
    target_url = engine(target)
    assert main(["--config", _ini(tmp_path, target_url), "import", str(path)], pm=_pm()) == 0, capsys.readouterr()
    # And back into a fresh mem://, from an export the command writes (before the target serves: it changes a todo).
    again = tmp_path / "again.export"
    argv = ["--config", _ini(tmp_path, target_url), "export", "-o", str(again)]
    for tenant in tenants:
        argv += ["--tenant", tenant]
    assert main(argv, pm=_pm()) == 0
    _check_target(_app(users_app, target_url), login, tenants, expected)
    back = _app(users_app, "mem://")
    with again.open("rb") as stream:
        moves.import_file(stream, back.runtime.records, moves.declared_models(back.runtime.models))
    _check_target(back, login, tenants, expected)


def test_an_export_holds_no_session_nonce_ban_or_lock(users_app, login, tmp_path):
    tenants = _tenants()[:1]
    app = _app(users_app, "mem://", tenants)
    login(f"user0@{tenants[0]}").call("add", "x")
    assert app.runtime.records.tenant_counts(tenants[0]).state  # a live session, nonces
    out = io.BytesIO()
    store = app.runtime.records
    moves.export(store, {tenants[0]: store.tenant_counts(tenants[0])}, moves.declared_models(app.runtime.models), out,
                 "test")
    text = out.getvalue().decode()
    assert '"model":"User"' in text and '"password":"$argon2id$' in text
    assert "session" not in text and "nonce" not in text


def test_copy_refuses_a_driver_without_the_capability(tmp_path, capsys):
    class Bare:
        capabilities = frozenset()

        def close(self):
            return None

    class BarePlugin:
        @hookimpl
        def bastion_storage_driver(self, url):
            return Bare() if url.startswith("bare:") else None

    pm = _pm()
    pm.register(BarePlugin())
    assert main(["--config", _ini(tmp_path), "copy", "--from", "bare://x", "--to", "mem://"], pm=pm) == 1
    err = capsys.readouterr().err.strip()
    assert err == "bastion: --from cannot list or move tenants: its driver does not declare the 'tenants' capability"



def test_ten_thousand_todos_go_from_sqlite_to_a_redis_cluster_with_their_history(engine, users_app, login, tmp_path,
                                                                                 capsys):
    tenants = _tenants()[:1]
    source_url, target_url = engine("sqlite"), engine("cluster")
    source = _app(users_app, source_url, tenants)
    todo = source.runtime.models.named("Todo").cls
    with source.runtime.bind(tenants[0]):
        for start in range(0, 10_000, 1000):
            with storage() as db:
                made = [db.insert(todo, text=f"{UNICODE} {n}") for n in range(start, start + 1000)]
            with storage() as db:
                for record in made[::10]:
                    db.update(todo, record._id, 1, done=True)
    before = login(f"user0@{tenants[0]}").call("get_all")
    argv = ["--config", _ini(tmp_path), "copy", "--from", source_url, "--to", target_url, "--tenant", tenants[0],
            "--verify"]
    assert main(argv, pm=_pm()) == 0, capsys.readouterr()
    assert "verified 1 tenant: 10001 records and 11000 history entries identical" in capsys.readouterr().out
    client = login(f"user0@{tenants[0]}", password=PASSWORD, app=_app(users_app, target_url))
    assert client.call("get_all") == before
    assert client.call("get_all", after=before[4999]["id"], limit=2) == before[5000:5002]
    assert [v["vsn"] for v in client.call("history", before[10]["id"])] == [1, 2]
