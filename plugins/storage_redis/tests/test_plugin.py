"""The plugin's hooks: its INI section, the schemes it claims, and a runtime on Redis."""

from __future__ import annotations

import pytest
import redis
from bastion_storage_redis import RedisDriver, bastion_configure, bastion_storage_driver
from bastion_storage_redis.settings import redact

from kernel import Config, ConfigError, Runtime
from kernel.testing import FakeClock, get_plugin_manager


def test_other_schemes_are_left_to_other_plugins():
    config = Config.from_dict({})
    for url in ("mem://", "sqlite:///var/b.sqlite3", "postgresql://db/b", "redisx://h", "unixfoo://x"):
        assert bastion_storage_driver(url=url, settings=config, clock=FakeClock()) is None


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0", "REDIS://127.0.0.1:1/2", "rediss://h.example:6380/0",
                                 "unix:///run/redis/redis.sock?db=1"])
def test_redis_schemes_open_a_driver_without_connecting(url):
    driver = bastion_storage_driver(url=url, settings=Config.from_dict({}), clock=FakeClock())
    try:
        assert isinstance(driver, RedisDriver)
    finally:
        driver.close()


def test_section_settings_reach_the_pool():
    config = Config.from_dict({"storage_redis": {"max_connections": 7, "socket_timeout": 0.5,
                                                 "health_check_interval": 0, "key_prefix": "blue"}})
    bastion_configure(settings=config)
    driver = bastion_storage_driver(url="redis://127.0.0.1:1/3", settings=config, clock=FakeClock())
    try:
        pool = driver.client.connection_pool
        assert isinstance(pool, redis.BlockingConnectionPool)
        assert pool.max_connections == 7
        assert pool.connection_kwargs["socket_timeout"] == 0.5
        assert pool.connection_kwargs["db"] == 3
        assert driver.keys.domain("x") == "blue:{x}:"
    finally:
        driver.close()


@pytest.mark.parametrize(("key", "value", "message"), [
    ("max_connections", "0", "[storage_redis] max_connections"),
    ("socket_timeout", "soon", "[storage_redis] socket_timeout"),
    ("key_prefix", "a{b}", "[storage_redis] key_prefix"),
    ("max_conections", "5", "unknown key"),
])
def test_bad_settings_stop_the_start(key, value, message):
    config = Config.from_string(f"[storage_redis]\n{key} = {value}\n", path="bastion.ini")
    with pytest.raises(ConfigError) as info:
        bastion_configure(settings=config)
    assert message in str(info.value) and "bastion.ini" in str(info.value)


def test_passwords_are_redacted():
    assert redact("redis://:hunter2@h:6379/0") == "redis://:***@h:6379/0"
    assert redact("rediss://user:hunter2@h/0") == "rediss://user:***@h/0"
    assert redact("unix:///run/r.sock") == "unix:///run/r.sock"
    with pytest.raises(ValueError) as info:
        RedisDriver("http://:hunter2@h/")
    assert "hunter2" not in str(info.value)


def test_entry_point_loads_the_plugin():
    pm = get_plugin_manager(only=["storage_redis"], trace=False)
    assert pm.get_plugin("storage_redis") is not None


def test_runtime_on_redis_alone(redis_server):
    config = Config.from_dict({"bastion": {"development": True, "storage": redis_server.url},
                               "storage_redis": {"max_connections": 4}})
    runtime = Runtime(config, get_plugin_manager(only=["storage_redis"], trace=False), clock=FakeClock())
    try:
        assert isinstance(runtime.records, RedisDriver) and runtime.state is runtime.records
        assert runtime.records.client.connection_pool.max_connections == 4
        runtime.ping()
    finally:
        runtime.close()


def test_runtime_in_mixed_mode(redis_server):
    config = Config.from_dict({"bastion": {"development": True, "storage": "mem://", "state": redis_server.url}})
    runtime = Runtime(config, get_plugin_manager(only=["storage_redis", "storage_mem"], trace=False),
                      clock=FakeClock())
    try:
        assert isinstance(runtime.state, RedisDriver)
        assert not isinstance(runtime.records, RedisDriver)
        runtime.ping()
    finally:
        runtime.close()


def test_a_malformed_url_is_a_configuration_error():
    with pytest.raises(ConfigError) as info:
        bastion_storage_driver(url="redis://:hunter2@h:port/zero", settings=Config.from_dict({}), clock=FakeClock())
    assert "hunter2" not in str(info.value) and "Redis URL" in str(info.value)
