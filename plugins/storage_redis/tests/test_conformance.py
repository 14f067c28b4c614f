"""The Redis driver passes the whole conformance suite, persistence included."""

import pytest

from kernel.testing import DriverSuite, FakeClock


class TestRedisDriver(DriverSuite):
    @pytest.fixture
    def driver(self, open_driver, clock):
        return open_driver(clock=clock)

    @pytest.fixture
    def reopen(self, redis_server, clock):
        """A new driver on the same server; the suite closes it."""
        from bastion_storage_redis import RedisDriver

        return lambda: RedisDriver(redis_server.url, clock=clock)


def test_the_suite_holds_on_a_deployment_that_earlier_tests_filled(open_driver):
    """The session's redis-server is shared by every test: state other tests left live must not fail the suite.

    (The pile-up test once bounded the whole deployment's count, and failed whenever earlier tests in the same
    session had left more than a few hundred live keys.)
    """
    clock = FakeClock()
    driver = open_driver(clock=clock)
    for i in range(700):
        driver.set("earlier.test", f"session:{i}", 1, 600)
    TestRedisDriver().test_expired_state_does_not_pile_up(driver, "d-shared.test", clock)
