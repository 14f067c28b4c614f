"""URLs, passwords, outages and recovery against real redis-server processes."""

from __future__ import annotations

import pytest
import redis
from bastion_storage_redis import RedisDriver

from kernel import Change, ServiceUnavailable, StoredRecord
from kernel.testing import FakeClock, RedisServer, RedisServerError, free_port

PASSWORD = "s3cret-Pa55"


@pytest.fixture
def private_server():
    """A redis-server of this test alone (it gets killed), with a password."""
    server = RedisServer(password=PASSWORD)
    server.start()
    yield server
    server.stop()


def _every_call(driver: RedisDriver):
    """One invocation of each driver method."""
    d = "outage.test"
    return {
        "ping": lambda: driver.ping(),
        "fetch": lambda: driver.fetch(d, "M", "a"),
        "select": lambda: driver.select(d, "M"),
        "select_where": lambda: driver.select(d, "M", {"k": 1}),
        "commit": lambda: driver.commit(d, [Change("update", "M", "a", 1, {}, {})]),
        "commit_insert": lambda: driver.commit(d, [Change("insert", "M", "new", 0, {}, {})]),
        "domains": lambda: driver.domains("M"),
        "get": lambda: driver.get(d, "k"),
        "set": lambda: driver.set(d, "k", 1, 10),
        "add": lambda: driver.add(d, "k2", 1, 10),
        "delete": lambda: driver.delete(d, "k"),
        "incr": lambda: driver.incr(d, "c", 1, 10),
        "window_add": lambda: driver.window_add(d, "w", "m", 1, 10),
        "window_entries": lambda: driver.window_entries(d, "w"),
        "window_discard": lambda: driver.window_discard(d, "w", "m"),
    }


def test_unix_socket_url(open_driver, redis_server):
    driver = open_driver(redis_server.unix_url)
    driver.ping()
    driver.commit("unix.test", [Change("insert", "M", "u", 0, {"via": "socket"}, {"k": 1})])
    assert driver.fetch("unix.test", "M", "u") == StoredRecord("M", "u", 1, {"via": "socket"})
    # The same data is visible over TCP: one server, two ways in.
    assert [r.id for r in open_driver().select("unix.test", "M", {"k": 1})] == ["u"]


def test_password_in_url(private_server):
    driver = RedisDriver(private_server.url)
    try:
        driver.set("pw.test", "k", "v", 10)
        assert driver.get("pw.test", "k") == "v"
        assert PASSWORD not in repr(driver)
    finally:
        driver.close()


def test_wrong_password_is_unavailable_without_leaking_it(private_server):
    url = private_server.url.replace(PASSWORD, "wrong-Secret-9")
    driver = RedisDriver(url)
    try:
        with pytest.raises(ServiceUnavailable) as info:
            driver.ping()
        assert "wrong-Secret-9" not in str(info.value) and "wrong-Secret-9" not in repr(info.value.body())
    finally:
        driver.close()


def test_outage_then_recovery_without_reopening(private_server):
    driver = RedisDriver(private_server.url, options={"socket_timeout": 1.0, "socket_connect_timeout": 1.0})
    try:
        driver.commit("outage.test", [Change("insert", "M", "a", 0, {"n": 1}, {"k": 1})])
        driver.window_add("outage.test", "w", "m", 1, 10)
        assert driver.fetch("outage.test", "M", "a").vsn == 1

        private_server.kill()
        for name, call in _every_call(driver).items():
            with pytest.raises(ServiceUnavailable) as info:
                call()
            body = info.value.body()
            assert body["exc"] == "ServiceUnavailable", name
            assert body["err"] == ["storage unavailable"], name
            assert PASSWORD not in str(body) and "127.0.0.1" not in str(body), name

        private_server.start()  # same port; nothing persisted, scripts forgotten
        driver.ping()
        assert driver.fetch("outage.test", "M", "a") is None
        for name, call in _every_call(driver).items():
            if name == "commit":  # the record it updates is gone with the old server
                continue
            call()
        assert driver.fetch("outage.test", "M", "new") == StoredRecord("M", "new", 1, {})
        assert driver.domains("M") == ["outage.test"]
        assert driver.incr("outage.test", "c", 1, 10) == 2
    finally:
        driver.close()


def test_server_restart_heals_every_pooled_connection(private_server):
    # Several connections are pooled before the restart; none may surface as an error after it.
    driver = RedisDriver(private_server.url)
    try:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: driver.incr("heal.test", "c", 1, 60), range(64)))
        private_server.kill()
        private_server.start()
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: driver.incr("heal.test", "c", 1, 60), range(64)))
        assert sorted(results) == list(range(1, 65))
    finally:
        driver.close()


def test_unreachable_server_at_start_is_unavailable_not_a_crash():
    driver = RedisDriver(f"redis://127.0.0.1:{free_port()}/0", options={"socket_connect_timeout": 0.5})
    try:
        with pytest.raises(ServiceUnavailable):
            driver.ping()
        with pytest.raises(ServiceUnavailable):
            driver.get("x.test", "k")
    finally:
        driver.close()


def test_scripts_are_reloaded_after_the_server_forgets_them(open_driver):
    driver = open_driver()
    driver.commit("flush.test", [Change("insert", "M", "a", 0, {}, {})])
    driver.client.script_flush()
    driver.commit("flush.test", [Change("insert", "M", "b", 0, {}, {})])  # pipelined path
    driver.client.script_flush()
    driver.commit("flush.test", [Change("update", "M", "b", 1, {"v": 2}, {})])  # plain script path
    assert [r.vsn for r in driver.select("flush.test", "M")] == [1, 2]


def test_a_missing_redis_server_is_a_clear_error():
    server = RedisServer(binary="/nonexistent/redis-server")
    with pytest.raises(RedisServerError, match="apt-get install redis-server"):
        server.start()
    server.stop()


def test_ping_fails_when_redis_refuses_writes(private_server):
    """A Redis out of memory under noeviction still answers PING and reads: ping must not say it is healthy."""
    driver = RedisDriver(private_server.url, clock=FakeClock())
    admin = driver.client
    try:
        driver.set("oom.test", "k", "kept", 60)
        driver.ping()
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1")
        try:
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                admin.set("plain-write", 1)  # Redis refuses writes, but still answers PING
            assert admin.ping() is True
            with pytest.raises(ServiceUnavailable) as info:
                driver.ping()
            assert str(info.value) == "storage unavailable"
            assert driver.get("oom.test", "k") == "kept"  # reads still answer
        finally:
            admin.config_set("maxmemory", "0")
        driver.ping()
    finally:
        driver.close()
