"""Schema lifecycle: development creates it, production refuses without it, `bastion initdb` makes it."""

import json
import subprocess
import sys
import threading

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from bastion_storage_sql import SqlDriver, bastion_storage_driver, migrate
from bastion_storage_sql.schema import VERSION_TABLE, metadata

from kernel import Config, ConfigError
from kernel.testing import FakeClock, main

PRODUCTION = Config.from_dict({"bastion": {"development": False}})
DEVELOPMENT = Config.from_dict({"bastion": {"development": True}})


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request, tmp_path):
    """An empty database of each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/var/bastion.sqlite3"
    return request.getfixturevalue("fresh_pg_url")


def test_production_refuses_a_missing_schema(empty_url):
    with pytest.raises(ConfigError, match="run `bastion initdb`"):
        bastion_storage_driver(empty_url, PRODUCTION, FakeClock())


def test_development_creates_the_schema(empty_url):
    bastion_storage_driver(empty_url, DEVELOPMENT, FakeClock()).close()
    bastion_storage_driver(empty_url, PRODUCTION, FakeClock()).close()


def test_production_refuses_a_schema_it_does_not_know(empty_url):
    driver = SqlDriver(empty_url)
    with driver.engine.begin() as connection:
        connection.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = 'ffff'"))
    driver.close()
    with pytest.raises(ConfigError, match="newer than this bastion-storage-sql"):
        bastion_storage_driver(empty_url, PRODUCTION, FakeClock())


def test_initdb_creates_then_finds_the_schema(empty_url, tmp_path, capsys):
    ini = tmp_path / "bastion.ini"
    ini.write_text(f"[bastion]\nstorage = {empty_url}\n")
    assert main(["--config", str(ini), "initdb"]) == 0
    assert "created the schema at revision" in capsys.readouterr().out
    bastion_storage_driver(empty_url, PRODUCTION, FakeClock()).close()
    assert main(["--config", str(ini), "initdb"]) == 0
    output = capsys.readouterr().out
    assert "already at revision" in output
    password = sa.engine.make_url(empty_url).password
    assert not password or password not in output


def test_two_nodes_running_initdb_at_once_create_one_schema(fresh_pg_url, tmp_path):
    """Two `bastion initdb` processes held at the migration lock, then released together: one creates, one finds."""
    import time
    from pathlib import Path

    import psycopg

    ini = tmp_path / "bastion.ini"
    ini.write_text(f"[bastion]\nstorage = {fresh_pg_url}\n")
    holder = psycopg.connect(fresh_pg_url, autocommit=True)
    try:
        holder.execute("SELECT pg_advisory_lock(%s)", (migrate.MIGRATION_LOCK,))
        command = [str(Path(sys.executable).with_name("bastion")), "--config", str(ini), "initdb"]
        nodes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        deadline = time.monotonic() + 60
        while holder.execute(waiting).fetchone()[0] < 2:  # both have read "no schema" and wait for the lock
            assert time.monotonic() < deadline and all(node.poll() is None for node in nodes), "initdb did not wait"
            time.sleep(0.02)  # processes starting up: nothing to wait on but the lock table
        holder.execute("SELECT pg_advisory_unlock(%s)", (migrate.MIGRATION_LOCK,))
        outcomes = [node.communicate(timeout=120) + (node.returncode,) for node in nodes]
    finally:
        holder.close()
    assert [code for _, _, code in outcomes] == [0, 0], outcomes
    said = sorted(out.split(": ", 2)[2].strip() for out, _, _ in outcomes)
    assert said[0].startswith("created the schema at revision") and said[1].startswith("the schema is already"), said
    driver = SqlDriver(fresh_pg_url, schema="check")
    try:
        with driver.engine.connect() as connection:
            assert connection.exec_driver_sql(f"SELECT count(*) FROM {VERSION_TABLE}").scalar() == 1
    finally:
        driver.close()


def test_initdb_covers_a_separate_state_url(tmp_path, fresh_pg_url, capsys):
    records_url = f"sqlite:///{tmp_path}/records.sqlite3"
    ini = tmp_path / "bastion.ini"
    ini.write_text(f"[bastion]\nstorage = {records_url}\nstate = {fresh_pg_url}\n[storage_sql]\npool_size = 2\n")
    assert main(["--config", str(ini), "initdb"]) == 0
    assert capsys.readouterr().out.count("created the schema") == 2
    for url in (records_url, fresh_pg_url):
        driver = SqlDriver(url, schema="none")
        assert migrate.status(driver.engine).up_to_date
        driver.close()


def test_initdb_without_sql_storage_does_nothing(tmp_path, capsys):
    ini = tmp_path / "bastion.ini"
    ini.write_text("[bastion]\nstorage = mem://\n")
    assert main(["--config", str(ini), "initdb"]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_migrations_build_exactly_the_declared_tables(empty_url):
    driver = SqlDriver(empty_url)
    try:
        with driver.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
            assert compare_metadata(context, metadata) == []
    finally:
        driver.close()


def test_development_start_of_many_threads_at_once_is_safe(empty_url):
    barrier = threading.Barrier(6)
    errors = []
    clock = FakeClock()

    def open_driver():
        barrier.wait()
        try:
            driver = bastion_storage_driver(empty_url, DEVELOPMENT, clock)
            driver.incr("race.test", "opened", 1, 60)
            driver.close()
        except Exception as exc:  # collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=open_driver) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    driver = SqlDriver(empty_url, clock=clock, schema="check")
    assert driver.get("race.test", "opened") == 6
    driver.close()


_OPEN_IN_DEVELOPMENT = """
import sys
from bastion_storage_sql import bastion_storage_driver
from kernel import Config
driver = bastion_storage_driver(sys.argv[1], Config.from_dict({"bastion": {"development": True}}), None)
driver.incr("race.test", "opened", 1, 600)
driver.close()
"""


def test_development_start_of_many_processes_at_once_is_safe(empty_url):
    processes = [subprocess.Popen([sys.executable, "-c", _OPEN_IN_DEVELOPMENT, empty_url],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outcomes = [(p.wait(timeout=120), p.stderr.read()) for p in processes]
    for process in processes:
        process.stdout.close()
        process.stderr.close()
    assert [code for code, _ in outcomes] == [0] * 4, outcomes
    driver = SqlDriver(empty_url, schema="check")
    assert driver.get("race.test", "opened") == 4
    driver.close()


def test_a_database_at_the_first_revision_upgrades_and_keeps_its_records(empty_url):
    """A database made before record history existed (revision 0001) gets the history table at the next open."""
    from alembic import command
    from bastion_storage_sql import settings
    from bastion_storage_sql.engine import create_engine, parse_url

    from kernel import Change

    engine = create_engine(parse_url(empty_url), settings.defaults())
    with engine.begin() as connection:
        command.upgrade(migrate._config(connection), "0001")
    engine.dispose()
    old = SqlDriver(empty_url, schema="none")
    old.commit("upgrade.test", [Change("insert", "M", "a", 0, {"x": 1}, {})])
    assert migrate.status(old.engine).current == "0001"
    old.close()

    with pytest.raises(ConfigError, match="run `bastion initdb` to upgrade it"):
        bastion_storage_driver(empty_url, PRODUCTION, FakeClock())
    driver = bastion_storage_driver(empty_url, DEVELOPMENT, FakeClock())  # development upgrades
    try:
        assert migrate.status(driver.engine).up_to_date
        assert driver.fetch("upgrade.test", "M", "a").data == {"x": 1}
        driver.commit("upgrade.test", [Change("update", "M", "a", 1, {"x": 2}, {}, 5, "alice")])
        assert [(v.vsn, v.by, v.data) for v in driver.history("upgrade.test", "M", "a")] == [(2, "alice", {"x": 2})]
    finally:
        driver.close()


def test_a_database_at_revision_0002_numbers_the_records_it_had_removed(empty_url):
    """Records removed before removed histories were bounded (revision 0002) keep their history through the
    upgrade, numbered in the order of their removal, and the removals after it drop the oldest beyond the bound."""
    from alembic import command
    from bastion_storage_sql import settings
    from bastion_storage_sql.engine import create_engine, parse_url

    from kernel import Change

    engine = create_engine(parse_url(empty_url), settings.defaults())
    with engine.begin() as connection:
        command.upgrade(migrate._config(connection), "0002")
        # What revision 0002 held: "b" removed first, then "a"; "c" removed and inserted again; "live" never removed.
        rows = [("a", 1, 1, 10.0, {"x": 1}), ("a", 2, 2, 30.0, None), ("b", 1, 1, 5.0, {"x": 1}),
                ("b", 2, 2, 20.0, None), ("c", 1, 1, 1.0, {"x": 1}), ("c", 2, 2, 2.0, None),
                ("c", 3, 1, 3.0, {"x": 2}), ("live", 1, 1, 1.0, {"x": 1})]
        for id, n, vsn, at, data in rows:
            connection.execute(sa.text("INSERT INTO bastion_history (domain, model, id, n, vsn, committed_at, "
                                       "committed_by, data) VALUES ('old.test', 'M', :id, :n, :vsn, :at, 'ann', :data)"),
                               {"id": id, "n": n, "vsn": vsn, "at": at,
                                "data": None if data is None else json.dumps(data)})
    engine.dispose()

    driver = bastion_storage_driver(empty_url, DEVELOPMENT, FakeClock())  # development upgrades
    try:
        assert migrate.status(driver.engine).up_to_date
        with driver.engine.connect() as connection:
            numbered = connection.execute(sa.text("SELECT id, n FROM bastion_history_removed "
                                                  "WHERE domain = 'old.test' ORDER BY n")).all()
        assert [tuple(row) for row in numbered] == [("b", 1), ("a", 2)]
        assert [v.vsn for v in driver.history("old.test", "M", "a")] == [1, 2]
        driver.commit("old.test", [Change("insert", "M", "new", 0, {}, {}, 5, "ann")])
        driver.commit("old.test", [Change("delete", "M", "new", 1, history=5, by="ann", keep_removed=2)])
        # The third removal, with a bound of 2: b's history goes, a's stays.
        assert driver.history("old.test", "M", "b") == []
        assert [v.vsn for v in driver.history("old.test", "M", "a")] == [1, 2]
        driver.commit("old.test", [Change("insert", "M", "other", 0, {}, {}, 5, "ann")])
        driver.commit("old.test", [Change("delete", "M", "other", 1, history=5, by="ann", keep_removed=1)])
        assert driver.history("old.test", "M", "a") == []
        assert driver.history("old.test", "M", "new") == []
        assert [v.vsn for v in driver.history("old.test", "M", "other")] == [1, 2]
        # Inserted again after its removal, c was no removed record: its history is untouched, as is a live one's.
        assert [(v.vsn, v.data) for v in driver.history("old.test", "M", "c")] == [(1, {"x": 1}), (2, None),
                                                                                   (1, {"x": 2})]
        assert [v.vsn for v in driver.history("old.test", "M", "live")] == [1]
    finally:
        driver.close()
