"""The health part of the conformance suite: ``ping`` proves the backend accepts writes, unseen by tenants."""

from __future__ import annotations

from kernel.testing.suite.base import SuiteBase


class HealthSuite(SuiteBase):
    """``ping()``, behind ``/healthz`` and ``bastion check``."""

    def test_ping(self, driver):
        assert driver.ping() is None

    def test_ping_writes_nothing_a_tenant_sees(self, driver, domain):
        driver.set(domain, "k", 1, 60)
        before = driver.state_count()
        for _ in range(3):
            assert driver.ping() is None
        # At most: suites may share one backend, where another test's key can expire meanwhile.
        assert driver.state_count() <= before
        assert driver.get(domain, "ping") is None
