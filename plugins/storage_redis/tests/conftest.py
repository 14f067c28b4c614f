"""Fixtures: one throw-away redis-server for the whole session, drivers on it."""

from __future__ import annotations

import pytest
from bastion_storage_redis import RedisDriver
from bastion_storage_redis.testing import RedisServer, RedisServerError

from kernel.testing import FakeClock


@pytest.fixture(scope="session")
def redis_server():
    """A running redis-server on 127.0.0.1; a missing binary fails the tests (CI installs it)."""
    server = RedisServer()
    try:
        server.start()
    except RedisServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def open_driver(redis_server):
    """Factory of drivers on the session server (or another URL), closed after the test."""
    drivers: list[RedisDriver] = []

    def open_(url: str | None = None, clock=None, **options) -> RedisDriver:
        driver = RedisDriver(url or redis_server.url, clock=clock or FakeClock(), options=options)
        drivers.append(driver)
        return driver

    yield open_
    for driver in drivers:
        driver.close()
