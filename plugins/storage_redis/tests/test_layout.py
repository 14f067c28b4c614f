"""How the driver lays data out in Redis: one hash tag per domain, index sets, native TTLs."""

from __future__ import annotations

import uuid

import pytest
from redis.crc import key_slot

from kernel import Change, StoredRecord, index_token
from kernel.testing import FakeClock


@pytest.fixture
def domain():
    return f"layout-{uuid.uuid4().hex[:10]}.test"


def _keys_of(client, domain):
    return sorted(k for k in client.scan_iter(match="*", count=1000) if domain in k)


def test_every_key_of_a_domain_shares_its_hash_tag(open_driver, domain):
    driver = open_driver()
    driver.commit(domain, [Change("insert", "Note", "a", 0, {"t": 1}, {"done": False, "tag": "x"}),
                           Change("insert", "Other:Model", "b", 0, {}, {"k": 1})])
    driver.commit(domain, [Change("update", "Note", "a", 1, {"t": 2}, {"done": True, "tag": "x"}, 5, "ann"),
                           Change("insert", "Note", "gone", 0, {}, {}, 5, "ann")])
    driver.commit(domain, [Change("delete", "Note", "gone", 1, history=5, by="ann")])
    driver.set(domain, "session", {"user": "ann"}, 60)
    driver.add(domain, "nonce", 1, 60)
    driver.incr(domain, "hits", 1, 60)
    driver.window_add(domain, "sessions:ann", "s1", 1, 60)

    keys = _keys_of(driver.client, domain)
    assert len(keys) >= 9, keys
    assert driver.keys.history(domain, "Note", "a") in keys
    assert driver.keys.removals(domain, "Note") in keys  # the removed records whose history is kept
    tag = f"bastion:{{{domain}}}:"
    assert all(k.startswith(tag) for k in keys), keys
    assert len({key_slot(k.encode()) for k in keys}) == 1
    # The only key outside the tag is the admin registry, which names no domain.
    assert driver.client.sismember(driver.keys.registry("Note"), domain)


def test_key_prefix_setting_moves_every_key(open_driver, domain):
    driver = open_driver(key_prefix="tenant7")
    driver.commit(domain, [Change("insert", "M", "a", 0, {}, {"k": 1})])
    driver.set(domain, "s", 1, 60)
    keys = _keys_of(driver.client, domain)
    assert keys and all(k.startswith(f"tenant7:{{{domain}}}:") for k in keys), keys
    assert driver.domains("M") == [domain]
    assert open_driver().fetch(domain, "M", "a") is None


def test_braces_and_colons_in_names_cannot_break_the_tag_or_collide(open_driver):
    driver = open_driver()
    domain = f"odd}}{{:{uuid.uuid4().hex[:6]}"
    driver.commit(domain, [Change("insert", "A:b", "c", 0, {"who": "A:b/c"}, {}),
                           Change("insert", "A", "b:c", 0, {"who": "A/b:c"}, {})])
    assert driver.fetch(domain, "A:b", "c").data == {"who": "A:b/c"}
    assert driver.fetch(domain, "A", "b:c").data == {"who": "A/b:c"}
    keys = [k for k in driver.client.scan_iter(match="bastion:{odd*", count=1000)]
    assert len({key_slot(k.encode()) for k in keys}) == 1, keys
    assert domain in driver.domains("A:b")


def test_select_with_where_reads_the_index_sets(open_driver, domain):
    driver = open_driver()
    driver.commit(domain, [
        Change("insert", "M", "a", 0, {}, {"done": True, "tag": "x"}),
        Change("insert", "M", "b", 0, {}, {"done": True, "tag": "y"}),
        Change("insert", "M", "c", 0, {}, {"done": False, "tag": "x"}),
    ])
    keys, client = driver.keys, driver.client
    done = keys.index(domain, "M", "done", index_token(True))
    assert client.smembers(done) == {"a", "b"}
    assert client.smembers(keys.index(domain, "M", "tag", index_token("x"))) == {"a", "c"}
    # Take "a" out of the index behind the driver's back: a select that scanned
    # records would still find it, one that intersects index sets cannot.
    client.srem(done, "a")
    assert [r.id for r in driver.select(domain, "M", {"done": True})] == ["b"]
    assert [r.id for r in driver.select(domain, "M", {"done": True, "tag": "y"})] == ["b"]
    assert [r.id for r in driver.select(domain, "M")] == ["a", "b", "c"]
    assert driver.select(domain, "M", {"unindexed": 1}) == []


def test_index_entries_follow_updates_and_deletes(open_driver, domain):
    driver = open_driver()
    keys, client = driver.keys, driver.client
    driver.commit(domain, [Change("insert", "M", "a", 0, {}, {"tag": "old"})])
    driver.commit(domain, [Change("update", "M", "a", 1, {}, {"tag": "new"})])
    assert not client.exists(keys.index(domain, "M", "tag", index_token("old")))
    assert client.smembers(keys.index(domain, "M", "tag", index_token("new"))) == {"a"}
    driver.commit(domain, [Change("delete", "M", "a", 2)])
    assert _keys_of(client, domain) == [keys.seq(domain)]
    assert domain not in driver.domains("M")


def test_expiry_follows_the_injected_clock_and_native_ttl_follows_ttl(open_driver, domain):
    # A clock far from real time: native TTLs must still come from `ttl`.
    clock = FakeClock(start=4_000_000_000.0)
    driver = open_driver(clock=clock)
    client, keys = driver.client, driver.keys
    driver.set(domain, "k", "v", 30)
    assert 0 < client.pttl(keys.state(domain, "k")) <= 30_000
    driver.incr(domain, "c", 1, 40)
    first = client.pttl(keys.state(domain, "c"))
    driver.incr(domain, "c", 1, 40)
    assert 0 < client.pttl(keys.state(domain, "c")) <= first <= 40_000
    driver.window_add(domain, "w", "m1", 1, 50)
    driver.window_add(domain, "w", "m2", 1, 20)
    assert 20_000 < client.pttl(keys.state(domain, "w")) <= 50_000
    assert 20_000 < client.pttl(keys.weights(domain, "w")) <= 50_000

    clock.advance(31)
    assert client.exists(keys.state(domain, "k"))  # still in Redis, logically gone
    assert driver.get(domain, "k") is None
    assert driver.delete(domain, "k") is False
    assert [e.member for e in driver.window_entries(domain, "w")] == ["m1"]


def test_window_add_drops_expired_members_from_redis(open_driver, domain):
    clock = FakeClock()
    driver = open_driver(clock=clock)
    driver.window_add(domain, "w", "old", 1, 5)
    clock.advance(10)
    driver.window_add(domain, "w", "new", 2, 5)
    client, keys = driver.client, driver.keys
    assert client.zrange(keys.state(domain, "w"), 0, -1) == ["new"]
    assert client.hgetall(keys.weights(domain, "w")) == {"new": "2"}


def test_plain_keys_and_windows_share_one_namespace(open_driver, domain):
    driver = open_driver()
    driver.window_add(domain, "x", "m", 1, 60)
    assert driver.get(domain, "x") is None
    assert driver.add(domain, "x", 1, 60) is False  # a live window occupies the name
    driver.set(domain, "x", "plain", 60)
    assert driver.window_entries(domain, "x") == []
    assert driver.get(domain, "x") == "plain"
    assert [e.member for e in driver.window_add(domain, "x", "m2", 1, 60)] == ["m2"]
    assert driver.incr(domain, "x", 5, 60) == 5


def test_state_values_must_be_json(open_driver, domain):
    driver = open_driver()
    with pytest.raises(TypeError):
        driver.set(domain, "k", {1, 2}, 60)
    with pytest.raises(TypeError):
        driver.commit(domain, [Change("insert", "M", "a", 0, {"bad": {1}}, {})])
    assert driver.fetch(domain, "M", "a") is None


def test_a_commit_is_one_script_even_with_many_changes(open_driver, domain):
    driver = open_driver()
    changes = [Change("insert", "M", f"r{i:03}", 0, {"i": i}, {"even": i % 2 == 0}) for i in range(200)]
    driver.commit(domain, changes)
    evens = driver.select(domain, "M", {"even": True})
    assert [r.id for r in evens] == [f"r{i:03}" for i in range(0, 200, 2)]
    assert evens[0] == StoredRecord("M", "r000", 1, {"i": 0})


def test_every_state_key_gets_a_native_ttl(open_driver, domain):
    """Redis reclaims state by itself: no state write leaves a key without a native TTL."""
    driver = open_driver()
    client, keys = driver.client, driver.keys
    driver.set(domain, "session", {"user": "ann"}, 60)
    driver.replace(domain, "session", {"user": "ann", "seen": 1}, 60)
    driver.add(domain, "nonce", 1, 3)
    driver.add(domain, "guarded", 1, 3, if_live="session")
    driver.incr(domain, "hits", 1, 60)
    driver.incr(domain, "hits", 1, 60)
    driver.window_add(domain, "sessions:ann", "s1", 1, 60)
    driver.window_add(domain, "sessions:ann", "s2", 1, 30)
    driver.window_discard(domain, "sessions:ann", "s1")
    driver.window_add(domain, "set-then-window", "m", 1, 60)
    driver.set(domain, "set-then-window", 1, 60)
    driver.set(domain, "window-then-set", 1, 60)
    driver.window_add(domain, "window-then-set", "m", 1, 60)
    driver.ping()

    state = [k for k in _keys_of(client, domain) if k.startswith((keys.state(domain, ""), keys.weights(domain, "")))]
    assert len(state) >= 7, state
    assert {k: client.pttl(k) for k in state if client.pttl(k) <= 0} == {}
    assert driver.state_count() >= 6
    probe = keys.domain("#probe") + "ping"
    assert 0 < client.pttl(probe) <= 10_000


def test_state_count_counts_only_this_deployments_state(open_driver, domain):
    driver, other = open_driver(key_prefix="countme"), open_driver(key_prefix="notme")
    assert driver.state_count() == 0
    driver.commit(domain, [Change("insert", "M", "x}:s:y", 0, {}, {"k": 1})])  # a record key that looks like state
    driver.set(domain, "a", 1, 60)
    driver.window_add(domain, "w", "m1", 1, 60)
    driver.window_add(domain, "w", "m2", 1, 60)
    other.set(domain, "b", 1, 60)
    assert driver.state_count() == 3
    assert other.state_count() == 1


def test_history_is_one_list_per_record_trimmed_in_the_commit(open_driver, domain):
    driver = open_driver(clock=FakeClock(1000.0))
    driver.commit(domain, [Change("insert", "Page", "p", 0, {"t": "é"}, {}, 2, "ann"),
                           Change("insert", "Plain", "q", 0, {"t": 1}, {})])
    for vsn in (1, 2):
        driver.commit(domain, [Change("update", "Page", "p", vsn, {"t": vsn + 1}, {}, 2, None)])
    key = driver.keys.history(domain, "Page", "p")
    assert driver.client.type(key) == "list"
    assert driver.client.lrange(key, 0, -1) == ['{"vsn":2,"at":1000.0,"by":null,"data":{"t":2}}',
                                                '{"vsn":3,"at":1000.0,"by":null,"data":{"t":3}}']
    assert driver.client.ttl(key) == -1  # kept like the record, never expired
    # A model that keeps no history has no list.
    assert not driver.client.exists(driver.keys.history(domain, "Plain", "q"))
