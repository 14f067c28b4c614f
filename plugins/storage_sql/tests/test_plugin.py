"""The plugin's hooks: its INI section, the URLs it serves, and a whole runtime on SQLite."""

import pytest
from bastion_storage_sql import SqlDriver, bastion_configure, bastion_storage_driver
from bastion_storage_sql.engine import is_sql_url
from bastion_storage_sql.settings import SCHEMA

from kernel import Config, ConfigError
from kernel.testing import FakeClock, get_plugin_manager


def test_plugin_is_registered_under_its_entry_point():
    pm = get_plugin_manager(only=["storage_sql"], trace=False)
    assert pm.get_plugin("storage_sql") is not None


def test_section_defaults():
    config = Config.from_dict({})
    bastion_configure(config)
    settings = config.section("storage_sql", SCHEMA)  # the plugin's claim, read again
    assert settings.pool_size == 5 and settings.max_overflow == 10 and settings.pool_timeout == 10.0
    assert settings.connect_timeout == 5 and settings.sqlite_busy_timeout == 30.0 and settings.echo is False
    assert settings.sqlite_wal_limit == 16 * 1024 * 1024


@pytest.mark.parametrize("limit, pages", [(None, 1000), (1024 * 1024, 256), (0, 1)])
def test_sqlite_connections_bound_the_wal(sqlite_url, limit, pages):
    driver = SqlDriver(sqlite_url, options={} if limit is None else {"sqlite_wal_limit": limit})
    try:
        with driver.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_size_limit").scalar() == (
                16 * 1024 * 1024 if limit is None else limit)
            assert connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == pages
    finally:
        driver.close()


def test_section_rejects_bad_values_and_unknown_keys():
    with pytest.raises(ConfigError, match=r"\[storage_sql\] pool_size"):
        bastion_configure(Config.from_dict({"storage_sql": {"pool_size": "many"}}))
    with pytest.raises(ConfigError, match="unknown key"):
        bastion_configure(Config.from_dict({"storage_sql": {"pool": "5"}}))


@pytest.mark.parametrize("url", ["sqlite:///var/x.sqlite3", "sqlite:////srv/x.sqlite3", "postgresql://u:p@h:5432/db",
                                 "postgresql+psycopg://u:p@h/db", "SQLite:///x"])
def test_serves_sql_urls(url):
    assert is_sql_url(url)


@pytest.mark.parametrize("url", ["mem://", "redis://localhost/0", "unix:///tmp/redis.sock", "mysql://u@h/db"])
def test_leaves_other_urls_to_other_plugins(url):
    assert bastion_storage_driver(url, Config.from_dict({}), FakeClock()) is None


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_refuses_in_memory_sqlite(url):
    with pytest.raises(ConfigError, match="mem://"):
        SqlDriver(url)


def test_relative_sqlite_path_follows_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    driver = SqlDriver("sqlite:///var/nested/bastion.sqlite3")
    driver.close()
    assert (tmp_path / "var" / "nested" / "bastion.sqlite3").is_file()


def test_a_runtime_serves_from_sqlite(make_app, sqlite_url):
    app = make_app({"bastion": {"storage": sqlite_url}, "storage_sql": {"pool_size": 2}})
    assert isinstance(app.runtime.records, SqlDriver)
    app.runtime.ping()
