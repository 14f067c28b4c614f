"""``bastion tenants``, ``export``, ``import`` and ``delete-tenant``: what they print, refuse and leave behind.

A refused file is one line naming its line number, and writes nothing; an
import killed halfway (SIGKILL) leaves the tenant it was loading absent,
and the tenants before it complete; a deleted tenant is gone, with a
security event, and the others are untouched.
"""

from __future__ import annotations

import hashlib
import io
import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from kernel import Errors, UnknownSession, hookimpl, storage
from kernel.cli import main, open_runtime
from kernel.core.plugins import get_plugin_manager
from kernel.tenants import moves

PASSWORD = "correct horse battery"
PLUGINS = ["auth", "todo", "storage_mem", "storage_sql", "storage_redis"]
ROOT = Path(__file__).resolve().parents[1]


class Gate:
    """A plugin model whose records sort after every other model's in an export (``ZGate``)."""

    __model__ = "ZGate"

    @classmethod
    def initialize(cls, record):
        record.merge(label="")

    @classmethod
    def validate(cls, record):
        return Errors()

    @classmethod
    def index(cls, record):
        return {"label": record.label}


class GatePlugin:
    @hookimpl
    def bastion_models(self):
        return [Gate]


def _pm():
    pm = get_plugin_manager(only=PLUGINS, trace=False)
    pm.register(GatePlugin())
    return pm


def _ini(tmp_path: Path, url: str, **sections: dict) -> Path:
    ini = tmp_path / f"{uuid.uuid4().hex[:6]}.ini"
    text = f"[bastion]\ndevelopment = true\nstorage = {url}\n[auth]\ndemo_user = false\n"
    for name, values in sections.items():
        text += f"[{name}]\n" + "".join(f"{key} = {value}\n" for key, value in values.items())
    ini.write_text(text)
    return ini


def _run(ini: Path, *argv: str, stdin: str | None = None, monkeypatch=None) -> int:
    """Run a command in this process; a SystemExit's message goes to stderr, as the interpreter writes it."""
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    try:
        return main(["--config", str(ini), *argv], pm=_pm())
    except SystemExit as exc:
        print(exc.code, file=sys.stderr)
        return 1


@pytest.fixture
def filled(users_app, login, tmp_path):
    """A SQLite storage with three tenants (a user, todos with history, a removed todo, a gate record each) and
    a live session in each; its URL, ini and tenants."""
    url = f"sqlite:///{tmp_path / 'source.sqlite3'}"
    tenants = [f"{name}.localhost" for name in ("alpha", "beta", "gamma")]
    # On the real clock, as the commands are: their sessions are live for them.
    app = users_app({f"u{n}@{t}": PASSWORD for n, t in enumerate(tenants)}, sections={"bastion": {"storage": url}},
                    plugins=[GatePlugin()], only=PLUGINS, clock=time.time)
    for n, tenant in enumerate(tenants):
        client = login(f"u{n}@{tenant}")
        first = client.call("add", "caf\u00e9 \u2603")
        client.call("update", first["id"], 1, done=True)
        client.call("remove", client.call("add", "gone")["id"], 1)
        with app.runtime.bind(tenant), storage() as db:
            db.insert(Gate, id="g", label=tenant)
    return url, _ini(tmp_path, url), tenants


def _export(ini: Path, path: Path, *tenants: str) -> list[bytes]:
    argv = ["export", "-o", str(path)]
    for tenant in tenants:
        argv += ["--tenant", tenant]
    assert _run(ini, *argv) == 0
    return path.read_bytes().splitlines(keepends=True)


def _reseal(lines: list[bytes]) -> bytes:
    """Lines with a trailer whose counts and checksum match them (a file changed by someone who knows the format)."""
    body = lines[:-1]
    records = [json.loads(line) for line in body[1:] if b'"model"' in line]
    end = {"tenants": sum(b'"tenant"' in line for line in body), "records": len(records),
           "history": sum(len(r["history"]) for r in records)}
    trailer = json.dumps({"end": end, "sha256": hashlib.sha256(b"".join(body)).hexdigest()}) + "\n"
    return b"".join(body) + trailer.encode()


def test_tenants_lists_each_tenant_with_records_per_model_history_and_sessions(filled, capsys):
    _, ini, tenants = filled
    assert _run(ini, "tenants") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "3 tenants"
    for line, tenant in zip(lines[:-1], tenants, strict=True):
        assert line.startswith(f"{tenant}  records 3 (Todo 1, User 1, ZGate 1)  history 4  state ")
        assert "session 1" in line


def test_export_then_import_into_an_empty_storage(filled, tmp_path, capsys):
    _, ini, tenants = filled
    lines = _export(ini, tmp_path / "all.export")
    header = json.loads(lines[0])
    assert (header["format"], header["version"], header["tenants"]) == ("bastion-export", 1, tenants)
    assert header["models"]["ZGate"] == {"fields": ["label"], "history": 0, "keep_removed": 100}
    assert not (tmp_path / "all.export.partial").exists()
    target = _ini(tmp_path, f"sqlite:///{tmp_path / 'target.sqlite3'}")
    capsys.readouterr()
    assert _run(target, "import", str(tmp_path / "all.export")) == 0
    assert capsys.readouterr().out.splitlines() == [f"imported {t}: 4 records, 4 history entries" for t in tenants]
    assert _run(target, "tenants") == 0
    out = capsys.readouterr().out
    assert "history 4  state 0" in out and "3 tenants" in out


def _refused(target: Path, path: Path, capsys) -> str:
    capsys.readouterr()
    assert _run(target, "import", str(path)) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert _run(target, "tenants") == 0
    assert capsys.readouterr().out == "0 tenants\n"  # nothing written
    return err


@pytest.mark.parametrize(("change", "expected"), [
    (lambda lines: lines[:-1], "line 12: the file ends before its trailer (truncated)"),
    (lambda lines: [*lines[:-1], lines[-1][:-5]], "line 12: the file ends in the middle of a line (truncated)"),
    (lambda lines: [lines[0], lines[1], lines[2].replace(b"caf", b"CAF"), *lines[3:]],
     "line 12: checksum mismatch: the file was changed or damaged after it was written"),
    (lambda lines: [lines[0].replace(b'"version":1', b'"version":2'), *lines[1:]],
     "line 1: format version 2 is not one this Bastion reads (1)"),
    (lambda lines: _reseal([lines[0], lines[1], lines[2].replace(b'"model":"Todo"', b'"model":"Ghost"'),
                            *lines[3:]]),
     "line 3: a record of model 'Ghost', which the header does not declare"),
    (lambda lines: _reseal([lines[0].replace(b'"ZGate":', b'"Ghost":{"fields":null},"ZGate":'), lines[1],
                            lines[2].replace(b'"model":"Todo"', b'"model":"Ghost"'), *lines[3:]]),
     "line 3: a record of model 'Ghost', which no installed plugin declares"),
    (lambda lines: _reseal([*lines[:3], lines[2], *lines[3:]]), "line 4: a second Todo"),
    (lambda lines: [lines[0], b"{not json\n", *lines[2:]], "line 2: not a JSON object"),
    (lambda lines: [], "line 1: the file is empty: not a Bastion export"),
])
def test_a_malformed_truncated_or_tampered_file_is_one_line_naming_the_line_and_writes_nothing(
        filled, tmp_path, capsys, change, expected):
    _, ini, tenants = filled
    lines = _export(ini, tmp_path / "one.export", *tenants[:2])
    assert len(lines) == 12  # header, then per tenant: its line, a todo, a removed todo, a user, a gate; trailer
    changed = change(lines)
    path = tmp_path / "changed.export"
    path.write_bytes(changed if isinstance(changed, bytes) else b"".join(changed))
    target = _ini(tmp_path, f"sqlite:///{tmp_path / 'target.sqlite3'}")
    err = _refused(target, path, capsys)
    assert err.startswith(f"bastion: import: {path}: {expected}"), err
    assert err.endswith("nothing was imported")


def test_import_refuses_a_tenant_with_data_unless_replace_which_ends_its_sessions(filled, users_app, login, tmp_path,
                                                                                  capsys):
    url, ini, tenants = filled
    _export(ini, tmp_path / "alpha.export", tenants[0])
    with_session = login(f"u0@{tenants[0]}", password=PASSWORD,
                         app=users_app(None, sections={"bastion": {"storage": url}}, plugins=[GatePlugin()],
                                       only=PLUGINS, clock=time.time))
    added = with_session.call("add", "after the export")
    capsys.readouterr()
    assert _run(ini, "import", str(tmp_path / "alpha.export")) == 1
    assert capsys.readouterr().err.strip() == (
        f"bastion: import: {tmp_path / 'alpha.export'}: tenant {tenants[0]} already holds data (4 records, "
        "5 history entries): nothing was imported; --replace replaces what it holds")
    assert _run(ini, "import", str(tmp_path / "alpha.export"), "--replace") == 0
    assert "event=tenant_imported domain=alpha.localhost origin=cli" in capsys.readouterr().err
    todos = [todo["id"] for todo in login(f"u0@{tenants[0]}", password=PASSWORD).call("get_all")]
    assert added["id"] not in todos and len(todos) == 1
    with pytest.raises(UnknownSession):  # the old session went with what the tenant held
        with_session.call("get_all")


def test_delete_tenant_asks_for_the_name_then_deletes_everything_of_it_and_nothing_else(filled, tmp_path, capsys,
                                                                                      monkeypatch):
    url, ini, tenants = filled
    from bastion_storage_sql import SqlDriver

    driver = SqlDriver(url)
    try:
        others = {t: [list(driver.tenant_records(t, m)) for m in ("Todo", "User", "ZGate")] for t in tenants[1:]}
        before = {t: driver.tenant_counts(t) for t in tenants[1:]}
        capsys.readouterr()
        assert _run(ini, "delete-tenant", tenants[0], stdin="beta.localhost\n", monkeypatch=monkeypatch) == 1
        assert "the name typed is not alpha.localhost: nothing was deleted" in capsys.readouterr().err
        assert driver.tenant_counts(tenants[0]).holds_data
        assert _run(ini, "delete-tenant", "ALPHA.localhost", stdin="alpha.localhost\n", monkeypatch=monkeypatch) == 0
        captured = capsys.readouterr()
        assert captured.out.startswith("deleted alpha.localhost: records 3 (Todo 1, User 1, ZGate 1)  history 4")
        assert "WARNING bastion.security event=tenant_deleted domain=alpha.localhost origin=cli" in captured.err
        assert "records=3 history=4" in captured.err
        assert driver.tenant_counts(tenants[0]).empty and tenants[0] not in driver.tenants()
        assert {t: driver.tenant_counts(t) for t in tenants[1:]} == before
        assert {t: [list(driver.tenant_records(t, m)) for m in ("Todo", "User", "ZGate")]
                for t in tenants[1:]} == others
        assert _run(ini, "delete-tenant", tenants[1], "--yes") == 0
        assert _run(ini, "delete-tenant", tenants[1], "--yes") == 1
        assert capsys.readouterr().err.strip().endswith(f"{tenants[1]} holds nothing (no record, history or live state)")
    finally:
        driver.close()


# -- kill -9 halfway --------------------------------------------------------------------------------------------------

#: The import the test kills: its ZGate model lets the first tenant's record "stop" through, and stops the load at
#: the second tenant's (after every todo of that tenant was written), says so, and waits for the kill.
KILLED_IMPORT = """
import sys
from kernel import Errors, hookimpl
from kernel.cli import main, open_runtime
from kernel.core.plugins import get_plugin_manager

seen = []

class Gate:
    __model__ = "ZGate"
    @classmethod
    def initialize(cls, record):
        record.merge(label="")
    @classmethod
    def validate(cls, record):
        return Errors()
    @classmethod
    def index(cls, record):
        if record._id == "stop":
            seen.append(record)
            if len(seen) == 2:
                print("halfway", flush=True)
                sys.stdin.read()
        return {"label": record.label}

class GatePlugin:
    @hookimpl
    def bastion_models(self):
        return [Gate]

pm = get_plugin_manager(only=%r, trace=False)
pm.register(GatePlugin())
sys.exit(main(sys.argv[1:], pm=pm))
""".replace("%r", repr(PLUGINS))


def _big_export(users_app, path: Path, tenants: list[str], todos: int) -> None:
    """Tenants of ``todos`` todos each (with history), a user, and two gate records, the last one "stop"."""
    app = users_app({f"u@{t}": PASSWORD for t in tenants}, plugins=[GatePlugin()], only=PLUGINS)
    todo = app.runtime.models.named("Todo").cls
    for tenant in tenants:
        with app.runtime.bind(tenant):
            for start in range(0, todos, 500):
                with storage() as db:
                    for n in range(start, min(todos, start + 500)):
                        db.insert(todo, text=f"todo {n} \u2603")
            with storage() as db:
                db.insert(Gate, id="go", label="a")
                db.insert(Gate, id="stop", label="b")
    store = app.runtime.records
    with path.open("wb") as out:
        moves.export(store, {t: store.tenant_counts(t) for t in tenants}, moves.declared_models(app.runtime.models),
                     out, "test")


@pytest.fixture(params=["sqlite", "postgresql", "redis", "cluster"])
def target(request, tmp_path):
    """An empty storage (a Redis key prefix of its own): its ini, and a driver that reads it."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'target.sqlite3'}"
    elif request.param == "postgresql":
        url = request.getfixturevalue("postgres_server").create_database(f"k{uuid.uuid4().hex[:10]}")
    else:
        url = request.getfixturevalue("redis_server" if request.param == "redis" else "redis_cluster").url
    ini = _ini(tmp_path, url, storage_redis={"key_prefix": f"k{uuid.uuid4().hex[:8]}"})
    runtime = open_runtime(str(ini), _pm())
    yield ini, runtime.records
    runtime.close()


def test_an_import_killed_halfway_leaves_the_tenant_it_was_loading_absent(target, users_app, tmp_path, capsys):
    ini, driver = target
    tenants = ["first.localhost", "second.localhost"]
    path = tmp_path / "big.export"
    _big_export(users_app, path, tenants, 1200)
    complete = {"Todo": 1200, "User": 1, "ZGate": 2}
    child = subprocess.Popen([sys.executable, "-c", KILLED_IMPORT, "--config", str(ini), "import", str(path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             cwd=ROOT)
    try:
        assert child.stdout.readline() == "halfway\n"  # the second tenant's todos are written, not committed
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        child.stdin.close()
    assert driver.tenant_counts(tenants[0]).records == complete
    assert driver.tenant_counts(tenants[1]).empty
    assert list(driver.tenants()) == [tenants[0]]
    # What the killed load left behind gets in no one's way: the same file goes in, the first tenant replaced.
    assert _run(ini, "import", str(path), "--replace") == 0
    assert [driver.tenant_counts(t).records for t in tenants] == [complete, complete]
    assert [len(list(driver.tenant_records(t, "Todo"))) for t in tenants] == [1200, 1200]


def test_verify_says_what_differs_record_by_record(filled, tmp_path, capsys):
    url, ini, tenants = filled
    target_url = f"sqlite:///{tmp_path / 'copy.sqlite3'}"
    assert _run(ini, "copy", "--from", url, "--to", target_url, "--tenant", tenants[0], "--verify") == 0
    assert capsys.readouterr().out.splitlines()[-1] == ("verified 1 tenant: 4 records and 4 history entries identical "
                                                        "on both sides")
    from bastion_storage_sql import SqlDriver

    from kernel.core.driver import Change

    source, target = SqlDriver(url), SqlDriver(target_url)
    try:
        todo = next(r for r in target.tenant_records(tenants[0], "Todo") if r.vsn)
        target.commit(tenants[0], [Change("update", "Todo", todo.id, todo.vsn, {**todo.data, "text": "changed"},
                                          {"done": True})])
        target.commit(tenants[0], [Change("insert", "ZGate", "extra", 0, {"label": "x"}, {"label": "x"})])
        records, history, differences = moves.verify(source, target, tenants[0])
        assert (records, history) == (5, 4)
        assert differences == [
            f"{tenants[0]}: Todo {todo.id!r}: version, data differ (version 2, 2 history entries in the source, "
            "version 3, 2 history entries in the target)",
            f"{tenants[0]}: ZGate 'extra': only in the target"]
    finally:
        source.close()
        target.close()


def test_records_and_state_apart_are_listed_together_and_deleted_together(users_app, login, redis_server, tmp_path,
                                                                          capsys):
    """SQLite records, Redis state: the listing adds both up, the deletion empties both."""
    prefix = f"mixed{uuid.uuid4().hex[:8]}"
    url = f"sqlite:///{tmp_path / 'mixed.sqlite3'}"
    sections = {"bastion": {"storage": url, "state": redis_server.url}, "storage_redis": {"key_prefix": prefix}}
    tenants = ["one.localhost", "two.localhost"]
    users_app({f"u@{t}": PASSWORD for t in tenants}, sections=sections, plugins=[GatePlugin()], only=PLUGINS,
              clock=time.time)
    for tenant in tenants:
        login(f"u@{tenant}").call("add", "x")
    ini = _ini(tmp_path, url, storage_redis={"key_prefix": prefix})
    text = ini.read_text().replace(f"storage = {url}\n", f"storage = {url}\nstate = {redis_server.url}\n")
    ini.write_text(text)
    capsys.readouterr()
    assert _run(ini, "tenants") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "2 tenants"
    assert all("records 2 (Todo 1, User 1)" in line and "session 1" in line for line in lines[:-1]), lines
    assert _run(ini, "delete-tenant", tenants[0], "--yes") == 0
    assert "session 1" in capsys.readouterr().out
    assert _run(ini, "tenants") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "1 tenant" and lines[0].startswith(f"{tenants[1]}  records 2") and "session 1" in lines[0]
