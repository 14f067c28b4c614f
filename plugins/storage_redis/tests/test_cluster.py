"""The Redis driver on a real Redis Cluster (3 masters, 1 replica each: the session's ``redis_cluster``).

The whole conformance suite runs through ``redis+cluster://``, with ``wait_replicas = 1`` (every write
acknowledged by a replica, as docs/storage-redis.md recommends on a Cluster); then what only a Cluster
has: one slot per domain, domains spread over the masters, a probe per master, a slot that moves (ASK,
then MOVED), a cluster unreachable at start, and replicas that do not acknowledge. The failover of a
master under load is tests/test_drivers_e2e.py's (one kill per session).
"""

from __future__ import annotations

import logging
import uuid

import pytest
from bastion_storage_redis import RedisDriver
from bastion_storage_redis.settings import parse_cluster_url, redact

from kernel import Change, Config, ConfigError, ServiceUnavailable, StoredRecord
from kernel.testing import DriverSuite, FakeClock, free_port

#: The Cluster settings the suite runs with.
REPLICATED = {"wait_replicas": 1}


@pytest.fixture
def open_cluster_driver(redis_cluster):
    """Factory of drivers on the session's cluster (or another URL), closed after the test."""
    drivers: list[RedisDriver] = []

    def open_(url: str | None = None, clock=None, **options) -> RedisDriver:
        driver = RedisDriver(url or redis_cluster.url, clock=clock or FakeClock(), options={**REPLICATED, **options})
        drivers.append(driver)
        return driver

    yield open_
    for driver in drivers:
        driver.close()


class TestRedisClusterDriver(DriverSuite):
    @pytest.fixture
    def driver(self, open_cluster_driver, clock):
        return open_cluster_driver(clock=clock)

    @pytest.fixture
    def reopen(self, redis_cluster, clock):
        """A new driver on the same cluster; the suite closes it."""
        return lambda: RedisDriver(redis_cluster.url, clock=clock, options=REPLICATED)


def _domain() -> str:
    return f"c{uuid.uuid4().hex[:12]}.test"


def _holders(redis_cluster, domain: str) -> set[int]:
    """The ports of the masters holding any key of ``domain``."""
    pattern = f"bastion:{{{domain}}}:*"
    return {master.port for master in redis_cluster.masters() if redis_cluster.command(master, "KEYS", pattern)}


def test_every_key_of_a_domain_lives_on_one_master(open_cluster_driver, redis_cluster):
    driver = open_cluster_driver()
    domain = _domain()
    driver.commit(domain, [Change("insert", "M", f"r{i}", 0, {"i": i}, {"even": i % 2 == 0}) for i in range(20)])
    driver.commit(domain, [Change("update", "M", "r0", 1, {"i": 100}, {"even": False}),
                           Change("delete", "M", "r1", 1, None, None)])
    driver.set(domain, "session", {"user": "ann"}, 60)
    driver.add(domain, "nonce", 1, 60, if_live="session")
    driver.incr(domain, "hits", 3, 60)
    driver.window_add(domain, "w", "m", 2, 60)
    assert driver.get_many(domain, ["session", "nonce", "hits", "w"]) == [{"user": "ann"}, 1, 3, None]
    assert [r.id for r in driver.select(domain, "M", {"even": True})] == [f"r{i}" for i in range(2, 20, 2)]
    assert len(_holders(redis_cluster, domain)) == 1
    master = redis_cluster.master_of(f"bastion:{{{domain}}}:seq")
    assert _holders(redis_cluster, domain) == {master.port}


def test_domains_spread_over_every_master(open_cluster_driver, redis_cluster):
    driver = open_cluster_driver()
    domains = [_domain() for _ in range(24)]
    for domain in domains:
        driver.commit(domain, [Change("insert", "Spread", "a", 0, {"d": domain}, {})])
        driver.set(domain, "k", 1, 60)
    owners = {redis_cluster.master_of(f"bastion:{{{domain}}}:seq").port for domain in domains}
    assert len(owners) == 3  # 24 random domains on 3 masters: every master serves some
    assert set(driver.domains("Spread")) >= set(domains)
    for domain in domains:
        assert driver.fetch(domain, "Spread", "a") == StoredRecord("Spread", "a", 1, {"d": domain})
    assert driver.state_count() >= len(domains)  # every master's keys are counted


def test_ping_writes_a_probe_on_every_master(open_cluster_driver, redis_cluster):
    open_cluster_driver().ping()
    for master in redis_cluster.masters():
        assert redis_cluster.command(master, "KEYS", "bastion:{#probe*}:ping"), master.port


def test_a_slot_that_moves_is_followed_through_ask_then_moved(open_cluster_driver, redis_cluster):
    driver = open_cluster_driver()
    domain = _domain()
    driver.commit(domain, [Change("insert", "M", "a", 0, {"n": 0}, {"k": 1})])
    driver.set(domain, "session", "s", 60)
    slot = redis_cluster.slot_of(f"bastion:{{{domain}}}:seq")
    source = redis_cluster.owner(slot)
    target = next(master for master in redis_cluster.masters() if master.port != source.port)

    def migrating():
        # Every key is on the target, the slot still the source's: the source answers ASK, the target serves.
        assert driver.fetch(domain, "M", "a").vsn == 1
        driver.commit(domain, [Change("update", "M", "a", 1, {"n": 1}, {"k": 1})])
        assert [r.id for r in driver.select(domain, "M", {"k": 1})] == ["a"]
        assert driver.get_many(domain, ["session"]) == ["s"]
        # A script naming keys that do not exist yet is TRYAGAIN while the slot is imported: 503, retry later.
        with pytest.raises(ServiceUnavailable):
            driver.add(domain, "nonce", 1, 60, if_live="session")

    redis_cluster.move_slot(slot, target, during=migrating)
    # The slot is the target's now; the driver's map still names the source: MOVED, once.
    assert driver.fetch(domain, "M", "a") == StoredRecord("M", "a", 2, {"n": 1})
    driver.commit(domain, [Change("update", "M", "a", 2, {"n": 2}, {"k": 1})])
    assert driver.add(domain, "nonce", 1, 60, if_live="session") is True
    assert _holders(redis_cluster, domain) == {target.port}
    assert driver.client.nodes_manager.get_node_from_slot(slot).port == target.port


def test_replicas_that_do_not_acknowledge_make_writes_unavailable(open_cluster_driver, caplog):
    """wait_replicas = 2 on a cluster with one replica per master: no write is acknowledged, reads serve."""
    domain = _domain()
    open_cluster_driver().set(domain, "k", "kept", 60)
    driver = open_cluster_driver(wait_replicas=2, wait_timeout=0.05)
    for write in (lambda: driver.set(domain, "k", 2, 60), lambda: driver.commit(domain, [Change("insert", "M", "a", 0, {}, {})]),
                  driver.ping):
        with caplog.at_level(logging.WARNING, "bastion.storage_redis"), pytest.raises(ServiceUnavailable):
            write()
    assert "1 of 2 replicas acknowledged" in caplog.text
    assert driver.get(domain, "k") == 2  # the master applied it: an unacknowledged write is not rolled back
    assert driver.fetch(domain, "M", "a") is not None


def test_an_unreachable_cluster_at_start_is_unavailable_not_a_crash():
    url = f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    driver = RedisDriver(url, options={"socket_connect_timeout": 0.5})
    try:
        for call in (driver.ping, lambda: driver.get("x.test", "k"), lambda: driver.fetch("x.test", "M", "a"),
                     driver.state_count):
            with pytest.raises(ServiceUnavailable):
                call()
    finally:
        driver.close()


def test_a_password_never_shows_in_messages_or_logs(redis_cluster, caplog):
    """No such user on the session's cluster: AUTH fails, and neither the error nor the log names the secret."""
    url = redis_cluster.url.replace("redis+cluster://", "redis+cluster://intruder:Cluster-Secret-7@")
    driver = RedisDriver(url)
    try:
        with caplog.at_level(logging.DEBUG), pytest.raises(ServiceUnavailable) as info:
            driver.ping()
        assert "Cluster-Secret-7" not in str(info.value.body()) and "Cluster-Secret-7" not in caplog.text
        assert "Cluster-Secret-7" not in repr(driver)
    finally:
        driver.close()


@pytest.mark.parametrize(("url", "nodes", "username", "password", "tls"), [
    ("redis+cluster://10.0.0.1:7000,10.0.0.2:7001", (("10.0.0.1", 7000), ("10.0.0.2", 7001)), None, None, False),
    ("REDIS+CLUSTER://h1", (("h1", 6379),), None, None, False),
    ("redis+cluster://:p%40ss@h1:7000/0", (("h1", 7000),), None, "p@ss", False),
    ("rediss+cluster://app:pw@[::1]:7000,h2:7001/", (("::1", 7000), ("h2", 7001)), "app", "pw", True),
])
def test_cluster_urls(url, nodes, username, password, tls):
    parsed = parse_cluster_url(url)
    assert (parsed.nodes, parsed.username, parsed.password, parsed.tls) == (nodes, username, password, tls)


@pytest.mark.parametrize(("url", "message"), [
    ("redis+cluster://h1:7000/1", "only database 0"),
    ("redis+cluster://h1:7000?socket_timeout=1", "no query string"),
    ("redis+cluster://h1:70000", "is not host:port"),
    ("redis+cluster://:secret@h1,,h2", "is not host:port"),
])
def test_bad_cluster_urls_stop_the_start_naming_no_password(url, message):
    from bastion_storage_redis import bastion_storage_driver

    with pytest.raises(ConfigError) as info:
        bastion_storage_driver(url=url, settings=Config.from_dict({}), clock=FakeClock())
    assert message in str(info.value) and "redis+cluster://" in str(info.value) and "secret" not in str(info.value)


def test_cluster_passwords_are_redacted():
    assert redact("redis+cluster://:hunter2@h1:7000,h2:7001") == "redis+cluster://:***@h1:7000,h2:7001"
    assert redact("rediss+cluster://app:hunter2@h1:7000") == "rediss+cluster://app:***@h1:7000"
