"""Fixtures: drivers on the session's throw-away redis-server (the ``redis_server`` fixture of kernel.testing)."""

from __future__ import annotations

import pytest
from bastion_storage_redis import RedisDriver

from kernel.testing import FakeClock


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
