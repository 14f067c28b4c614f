"""How the driver uses the database: index lookups, index tokens and purging of expired state."""

import pytest
import sqlalchemy as sa
from bastion_storage_sql import SqlDriver
from bastion_storage_sql.schema import state, windows
from bastion_storage_sql.state import PURGE_BATCH, PURGE_EVERY, PURGE_INTERVAL

from kernel import Change
from kernel.testing import FakeClock

DOMAIN = "queries.test"


@pytest.fixture(params=["sqlite", "postgresql"])
def any_url(request, sqlite_url):
    """A database of each backend."""
    return sqlite_url if request.param == "sqlite" else request.getfixturevalue("fresh_pg_url")


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def driver(any_url, clock):
    driver = SqlDriver(any_url, clock=clock)
    yield driver
    driver.close()


def test_select_with_where_starts_from_the_index_on_sqlite(sqlite_url):
    driver = SqlDriver(sqlite_url)
    driver.commit(DOMAIN, [Change("insert", "M", f"r{i}", 0, {}, {"done": i == 7}) for i in range(50)])
    assert [r.id for r in driver.select(DOMAIN, "M", {"done": True})] == ["r7"]
    sql, values = driver.records._select_query(DOMAIN, "M", {"done": True})  # the statement select just ran
    with driver.engine.connect() as connection:
        plan = [row[3] for row in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + sql.text, sql.params(values))]
    driver.close()
    # The first step is a search of the index entries by (domain, model, field, token).
    assert plan[0].startswith("SEARCH i0 USING PRIMARY KEY (domain=? AND model=? AND field=? AND token=?)"), plan
    assert not any(step.startswith("SCAN") for step in plan), plan


def test_removals_are_numbered_and_dropped_through_indexes_on_sqlite(sqlite_url):
    """The statements a commit that removes runs read index ranges of one domain and model, never a scan."""
    driver = SqlDriver(sqlite_url)
    driver.commit(DOMAIN, [Change("insert", "M", f"r{i}", 0, {}, {}, 5) for i in range(50)])
    driver.commit(DOMAIN, [Change("delete", "M", f"r{i}", 1, history=5, keep_removed=10) for i in range(50)])
    values = {"d": DOMAIN, "m": "M", "id": "r3", "keep": 10, "most": 17}
    with driver.engine.connect() as connection:
        for sql in (driver.records._removal_sql, driver.records._drop_removed_sql, driver.records._forget_sql):
            plan = [row[3] for row in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + sql.text, sql.params(values))]
            assert not any(step.startswith("SCAN") for step in plan), (sql, plan)
            assert any(step.startswith("SEARCH") for step in plan), (sql, plan)
    driver.close()


def test_long_and_nul_index_values_are_found_exactly(driver):
    long_a, long_b = "a" * 5000, "a" * 4999 + "b"
    driver.commit(DOMAIN, [
        Change("insert", "M", "la", 0, {}, {"v": long_a}),
        Change("insert", "M", "lb", 0, {}, {"v": long_b}),
        Change("insert", "M", "nul", 0, {}, {"v": "x\x00y"}),
    ])
    assert [r.id for r in driver.select(DOMAIN, "M", {"v": long_a})] == ["la"]
    assert [r.id for r in driver.select(DOMAIN, "M", {"v": long_b})] == ["lb"]
    assert [r.id for r in driver.select(DOMAIN, "M", {"v": "x\x00y"})] == ["nul"]
    assert driver.select(DOMAIN, "M", {"v": "x"}) == []


def test_large_integers_and_other_values_in_state(driver):
    driver.set(DOMAIN, "big", 2**70, 60)
    driver.set(DOMAIN, "flag", True, 60)
    assert driver.get(DOMAIN, "big") == 2**70
    assert driver.get(DOMAIN, "flag") is True
    assert driver.incr(DOMAIN, "flag", 2, 60) == 2  # a counter over a non-integer starts again


def test_keys_and_windows_share_one_namespace(driver):
    driver.window_add(DOMAIN, "k", "m", 1, 60)
    driver.set(DOMAIN, "k", "plain", 60)
    assert driver.window_entries(DOMAIN, "k") == []
    driver.window_add(DOMAIN, "k", "m", 1, 60)
    assert driver.get(DOMAIN, "k") is None


def _rows(driver, table):
    with driver.engine.connect() as connection:
        return connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def test_expired_state_is_purged_a_batch_at_a_time(driver, clock):
    for i in range(5):
        driver.set(DOMAIN, f"k{i}", i, 10)
        driver.window_add(DOMAIN, f"w{i}", "m", 1, 10)
    driver.set(DOMAIN, "live", 1, 1000)
    clock.advance(11)
    assert driver.purge_expired(limit=2) == 4
    assert driver.purge_expired() == 6
    assert (_rows(driver, state), _rows(driver, windows)) == (1, 0)
    assert driver.get(DOMAIN, "live") == 1


def test_writes_purge_now_and_then(driver, clock):
    driver.set(DOMAIN, "old", 1, 10)
    clock.advance(120)
    driver.set(DOMAIN, "new", 1, 10)  # the purge interval has passed: this write purges
    assert _rows(driver, state) == 1
    assert driver.add(DOMAIN, "old", 2, 10) is True


def test_writes_purge_every_hundred_writes_whatever_the_clock(driver, clock):
    driver.set(DOMAIN, "first", 1, 600)  # the first write purges, and the next purge is a minute away
    for i in range(PURGE_EVERY):
        driver.set(DOMAIN, f"short{i}", i, 1)
    clock.advance(2)  # the short keys have expired; far less than a minute has passed
    for i in range(PURGE_EVERY):
        driver.set(DOMAIN, f"long{i}", i, 600)
    assert _rows(driver, state) == 1 + PURGE_EVERY
    assert driver.state_count() == 1 + PURGE_EVERY


def test_a_full_purge_is_followed_by_another_at_the_next_write(driver, clock):
    """A backlog of many batches (left by processes that stopped, say) is gone after a few writes."""
    driver.set(DOMAIN, "first", 1, 6000)
    backlog = int(2.5 * PURGE_BATCH)
    with driver.engine.begin() as connection:
        connection.execute(state.insert(), [{"domain": DOMAIN, "key": f"old{i}", "value": "1", "n": None,
                                             "expires": clock() + 1} for i in range(backlog)])
        connection.execute(windows.insert(), [{"domain": DOMAIN, "key": "w", "member": f"m{i}", "weight": 1,
                                               "expires": clock() + 1} for i in range(backlog)])
    clock.advance(PURGE_INTERVAL + 1)
    for i in range(3):
        driver.set(DOMAIN, f"new{i}", i, 600)
    assert (_rows(driver, state), _rows(driver, windows)) == (4, 0)


def test_ping_writes_a_probe_row_no_tenant_sees(driver, clock):
    driver.ping()
    with driver.engine.connect() as connection:
        rows = connection.execute(sa.select(state.c.domain, state.c.key, state.c.expires)).all()
    assert rows == [("#probe", "ping", clock())]  # expired as soon as written
    assert driver.state_count() == 0
    clock.advance(PURGE_INTERVAL + 1)
    driver.set(DOMAIN, "k", 1, 60)  # the purge takes the probe row too
    assert _rows(driver, state) == 1
