"""The Redis driver passes the whole conformance suite, persistence included."""

import pytest

from kernel.testing import DriverSuite


class TestRedisDriver(DriverSuite):
    @pytest.fixture
    def driver(self, open_driver, clock):
        return open_driver(clock=clock)

    @pytest.fixture
    def reopen(self, redis_server, clock):
        """A new driver on the same server; the suite closes it."""
        from bastion_storage_redis import RedisDriver

        return lambda: RedisDriver(redis_server.url, clock=clock)
