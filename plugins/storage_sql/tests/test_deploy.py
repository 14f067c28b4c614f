"""The SQL plugin's part of `bastion check --deploy`: read from the URLs alone, no database opened."""

from bastion_storage_sql import deploy

from kernel import Config


def problems(storage: str, state: str = "") -> dict[str, str]:
    config = Config.from_dict({"bastion": {"storage": storage, "state": state}})
    return {p.id: p.message for p in deploy.problems(config.for_plugin("test").storage_urls)}


def test_sqlite_is_one_machine_a_warning_named_once():
    found = problems("sqlite:///var/bastion.sqlite3", "sqlite:///var/state.sqlite3")
    assert list(found) == ["sql.W001"] and found["sql.W001"].startswith("[bastion] storage and state: SQLite")


def test_a_remote_postgresql_without_password_or_verified_tls_is_named_without_secrets():
    found = problems("postgresql://bastion@db.internal/bastion")
    assert set(found) == {"sql.W002", "sql.W003"} and "db.internal" in found["sql.W002"]
    found = problems("postgresql://bastion:hunter2@db.internal/bastion?sslmode=require")
    assert set(found) == {"sql.W003"} and "hunter2" not in found["sql.W003"] and "***" in found["sql.W003"]
    assert problems("postgresql://bastion:hunter2@db.internal/bastion?sslmode=verify-full") == {}


def test_postgresql_on_this_machine_is_fine():
    for url in ("postgresql://bastion@127.0.0.1/b", "postgresql://bastion@localhost/b", "postgresql://bastion@[::1]/b",
                "postgresql:///bastion?host=/run/postgresql"):
        assert problems(url) == {}, url


def test_other_schemes_are_not_the_plugins():
    assert problems("redis://10.0.0.1/0", "mem://") == {}
