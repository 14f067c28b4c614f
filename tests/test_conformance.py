"""The conformance suite runs against the in-memory driver, and catches a broken driver."""

from __future__ import annotations

import pytest
from bastion_storage_mem import MemoryDriver

from kernel.errors import VersionConflict
from kernel.testing import DriverSuite, FakeClock


class TestMemoryDriverFromKernel(DriverSuite):
    @pytest.fixture
    def driver(self, clock):
        return MemoryDriver(clock=clock)


class LostUpdateDriver(MemoryDriver):
    """Broken on purpose: updates ignore the version they were read at (Fanery's bug)."""

    def commit(self, domain, changes):
        fixed = []
        for change in changes:
            if change.op == "update":
                stored = self.fetch(domain, change.model, change.id)
                change = type(change)(change.op, change.model, change.id, stored.vsn if stored else change.vsn,
                                      change.data, change.index)
            fixed.append(change)
        super().commit(domain, fixed)


class ImmortalStateDriver(MemoryDriver):
    """Broken on purpose: keys never expire."""

    def set(self, domain, key, value, ttl):
        super().set(domain, key, value, 1e12)


class HoardingDriver(MemoryDriver):
    """Broken on purpose: expired state is never reclaimed (mem:// before it had its heap of expiries)."""

    def _reclaim(self, now, budget=0):
        return None


class UnguardedAddDriver(MemoryDriver):
    """Broken on purpose: ``add`` ignores its guard, so a call could pass after a concurrent logout."""

    def add(self, domain, key, value, ttl, if_live=None):
        return super().add(domain, key, value, ttl)


@pytest.mark.parametrize("broken, test_name", [
    (LostUpdateDriver, "test_update_with_stale_version_conflicts"),
    (LostUpdateDriver, "test_concurrent_writers_never_both_win"),
    (LostUpdateDriver, "test_unit_of_work_conflict_between_readers"),
    (ImmortalStateDriver, "test_state_set_get_and_expiry"),
    (HoardingDriver, "test_expired_state_does_not_pile_up"),
    (UnguardedAddDriver, "test_state_add_if_live"),
    (UnguardedAddDriver, "test_state_add_if_live_never_passes_after_the_guard_is_deleted"),
])
def test_the_suite_fails_a_broken_driver(broken, test_name):
    clock = FakeClock()
    suite = DriverSuite()
    test = getattr(suite, test_name)
    kwargs = {"driver": broken(clock=clock), "domain": "broken.test", "other_domain": "other.test", "clock": clock,
              "models": DriverSuite.models.__wrapped__(suite)}
    params = test.__code__.co_varnames[1:test.__code__.co_argcount]
    with pytest.raises((AssertionError, pytest.fail.Exception, VersionConflict)):
        test(**{p: kwargs[p] for p in params})
