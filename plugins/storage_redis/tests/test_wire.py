"""Round trips, scripts and pooled connections as Redis sees them."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from bastion_storage_redis import RedisDriver
from redis.crc import key_slot

from kernel import Change, ServiceUnavailable
from kernel.testing import FakeClock, RedisServer


@pytest.fixture
def domain():
    return f"wire-{uuid.uuid4().hex[:10]}.test"


def _calls(client) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): stats["calls"] for name, stats in client.info("commandstats").items()}


#: Commands a client sends to run scripts (the commands scripts run are counted too, so they are left out).
SCRIPTING = {"eval", "evalsha", "eval_ro", "evalsha_ro", "script|load"}


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0) and k in SCRIPTING}


def test_get_many_is_one_script_on_one_slot(open_driver, domain):
    driver = open_driver()
    driver.set(domain, "a", 1, 60)
    driver.window_add(domain, "w", "m", 1, 60)
    keys = [f"k{i}" for i in range(20)] + ["a", "w"]
    assert len({key_slot(driver.keys.state(domain, k).encode()) for k in keys}) == 1
    driver.get_many(domain, ["a"])  # the script is known to Redis from here on
    before = _calls(driver.client)
    assert driver.get_many(domain, keys) == [None] * 20 + [1, None]
    assert _delta(before, _calls(driver.client)) == {"evalsha": 1}
    before = _calls(driver.client)
    assert driver.get_many(domain, []) == []
    assert _delta(before, _calls(driver.client)) == {}


def test_replace_is_one_script_that_restarts_the_native_ttl(open_driver, domain):
    clock = FakeClock()
    driver = open_driver(clock=clock)
    client, key = driver.client, driver.keys.state(domain, "s")
    driver.set(domain, "s", {"n": 1}, 5)
    driver.replace(domain, "other", 1, 5)  # the script is known to Redis from here on
    before = _calls(client)
    assert driver.replace(domain, "s", {"n": 2}, 600) is True
    assert _delta(before, _calls(client)) == {"evalsha": 1}
    assert 5_000 < client.pttl(key) <= 600_000
    assert client.hgetall(key)["v"] == '{"n":2}'


def test_replace_leaves_windows_alone(open_driver, domain):
    driver = open_driver()
    driver.window_add(domain, "w", "m", 3, 60)
    assert driver.replace(domain, "w", "plain", 60) is False
    assert [(e.member, e.weight) for e in driver.window_entries(domain, "w")] == [("m", 3)]


def test_scripts_are_sent_once_then_run_by_sha(open_driver, domain):
    driver = open_driver()
    driver.client.script_flush()
    driver.set(domain, "k", 1, 60)
    before = _calls(driver.client)
    for _ in range(5):
        driver.get_many(domain, ["k", "x"])
        driver.add(domain, f"n{uuid.uuid4().hex}", 1, 60)
        driver.replace(domain, "k", 2, 60)
        driver.commit(domain, [Change("insert", "M", uuid.uuid4().hex, 0, {}, {})])
        driver.select(domain, "M")
    delta = _delta(before, _calls(driver.client))
    # Each script is loaded once (after the flush), never sent whole with EVAL.
    assert "eval" not in delta
    assert delta.get("script|load", 0) <= 5
    assert delta["evalsha"] >= 25


def test_connections_are_bounded_and_reused_across_threads(open_driver, redis_server, domain):
    name = f"wire{uuid.uuid4().hex[:8]}"
    driver = open_driver(max_connections=2, client_name=name)
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda i: driver.incr(domain, "c", 1, 60), range(120)))
    assert sorted(results) == list(range(1, 121))
    # The connection asking (the admin client's own) is not one of the driver's.
    clients = [c for c in driver.client.client_list() if c.get("name") == name and c.get("cmd") != "client|list"]
    assert 1 <= len(clients) <= 2, clients


def test_a_caller_waits_for_a_free_connection_then_fails_as_an_outage(open_driver, domain):
    driver = open_driver(max_connections=1, pool_timeout=0.2)
    driver.set(domain, "k", 1, 60)
    held = driver._wire._checkout()  # the only connection
    try:
        with pytest.raises(ServiceUnavailable):
            driver.get(domain, "k")
        # Given back while another caller waits: that caller gets it.
        timer = threading.Timer(0.05, lambda: driver._wire._idle.put(held))
        timer.start()
        assert driver.get(domain, "k") == 1
        timer.join()
    finally:
        held.disconnect()


def test_wait_replicas_acknowledges_a_write_only_once_a_replica_has_it(redis_server, domain):
    """One server and its replica (redis://): WAIT rides in the write's round trip; without the replica, writes are 503."""
    driver = RedisDriver(redis_server.url, clock=FakeClock(), options={"wait_replicas": 1, "wait_timeout": 0.2})
    driver.client.config_set("repl-diskless-sync-delay", 0)  # sync the replica at once
    replica = RedisServer(extra_args=["--replicaof", "127.0.0.1", str(redis_server.port)]).start()
    try:
        from_replica = redis.Redis.from_url(replica.url, decode_responses=True)
        deadline = time.monotonic() + 30
        while from_replica.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica did not sync"
            time.sleep(0.05)  # replication gives no event to wait on
        # The scripts are known to Redis from here on (another test flushes them).
        driver.set(domain, "k", "v", 60)
        driver.commit(domain, [Change("insert", "M", "warm", 0, {}, {})])
        driver.get(domain, "k")
        before = _calls(driver.client)
        driver.set(domain, "k", "v2", 60)
        driver.commit(domain, [Change("insert", "M", "a", 0, {"n": 1}, {})])
        assert driver.get(domain, "k") == "v2"
        after = _calls(driver.client)
        assert (after["evalsha"] - before["evalsha"], after.get("wait", 0) - before.get("wait", 0)) == (3, 2)
        # Acknowledged: the replica has both writes already.
        assert from_replica.hget(driver.keys.state(domain, "k"), "v") == '"v2"'
        assert from_replica.hget(driver.keys.record(domain, "M", "a"), "v") == "1"
        from_replica.close()
        replica.kill()
        for write in (lambda: driver.set(domain, "k", "v3", 60), driver.ping,
                      lambda: driver.commit(domain, [Change("insert", "M", "b", 0, {}, {})])):
            with pytest.raises(ServiceUnavailable):
                write()
        assert driver.get(domain, "k") == "v3"  # reads serve; the unacknowledged write was applied all the same
    finally:
        driver.close()
        replica.stop()
