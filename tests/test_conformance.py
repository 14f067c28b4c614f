"""The conformance suite runs against the kernel's built-in in-memory driver, and catches a broken driver."""

from __future__ import annotations

import dataclasses

import pytest

from kernel.core.errors import VersionConflict
from kernel.storage_mem import MemoryDriver
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


class EagerHistoryDriver(MemoryDriver):
    """Broken on purpose: history is written before the versions are checked, so a failed commit leaves some."""

    def commit(self, domain, changes):
        with self._lock:
            for change in changes:
                if change.history:
                    self._keep(domain, change, self.clock())
        super().commit(domain, changes)


class UnboundedHistoryDriver(MemoryDriver):
    """Broken on purpose: the history limit is ignored, so a record's history grows without end."""

    def _keep(self, domain, change, now):
        super()._keep(domain, dataclasses.replace(change, history=10**9), now)


class ForgetfulHistoryDriver(MemoryDriver):
    """Broken on purpose: no history is ever kept."""

    def _keep(self, domain, change, now):
        return None


class RemovedHistoryHoardingDriver(MemoryDriver):
    """Broken on purpose: a removed record's history stays for ever (every driver before the removed-history bound)."""

    def _drop_removed(self, domain, model, order, last_dropped, most):
        return None


class OverreadingPageDriver(MemoryDriver):
    """Broken on purpose: a page is cut from the whole answer at the wrong place (one record too late)."""

    def select(self, domain, model, where=None, *, after=None, limit=None):
        rows = super().select(domain, model, where)
        ids = [row.id for row in rows]
        if after is not None:
            rows = rows[ids.index(after) + 2:] if after in ids else []
        return rows if limit is None else rows[:limit]


class LostPlaceDriver(MemoryDriver):
    """Broken on purpose: a page after a record that is gone answers the records after nothing, not an error."""

    def select(self, domain, model, where=None, *, after=None, limit=None):
        if after is not None and super().fetch(domain, model, after) is None:
            return []
        return super().select(domain, model, where, after=after, limit=limit)


class StalePlacesDriver(MemoryDriver):
    """Broken on purpose: the creation order a page is cut from is never made again after a commit."""

    def commit(self, domain, changes):
        kept = dict(self._places)
        super().commit(domain, changes)
        self._places.update(kept)


@pytest.mark.parametrize("broken, test_name", [
    (StalePlacesDriver, "test_a_page_follows_what_was_committed_since_the_last_one"),
    (OverreadingPageDriver, "test_select_reads_one_page_of_the_creation_order"),
    (OverreadingPageDriver, "test_select_and_values_read_pages_of_the_creation_order"),
    (LostPlaceDriver, "test_select_after_a_record_the_domain_does_not_hold_is_record_not_found"),
    (LostPlaceDriver, "test_a_page_after_a_record_the_domain_does_not_hold_is_record_not_found"),
    (LostUpdateDriver, "test_update_with_stale_version_conflicts"),
    (LostUpdateDriver, "test_concurrent_writers_never_both_win"),
    (LostUpdateDriver, "test_unit_of_work_conflict_between_readers"),
    (ImmortalStateDriver, "test_state_set_get_and_expiry"),
    (HoardingDriver, "test_expired_state_does_not_pile_up"),
    (UnguardedAddDriver, "test_state_add_if_live"),
    (UnguardedAddDriver, "test_state_add_if_live_never_passes_after_the_guard_is_deleted"),
    (EagerHistoryDriver, "test_a_failed_commit_writes_no_history"),
    (EagerHistoryDriver, "test_unit_of_work_history_is_the_commit"),
    (UnboundedHistoryDriver, "test_history_limits_hold"),
    (UnboundedHistoryDriver, "test_unit_of_work_history_limits_hold"),
    (ForgetfulHistoryDriver, "test_history_keeps_every_committed_version_oldest_first"),
    (ForgetfulHistoryDriver, "test_unit_of_work_records_who_and_which_version"),
    (RemovedHistoryHoardingDriver, "test_removed_records_keep_their_history_until_enough_removals_follow"),
    (RemovedHistoryHoardingDriver, "test_a_lowered_bound_is_reached_over_the_next_removals"),
    (RemovedHistoryHoardingDriver, "test_keep_removed_0_drops_the_history_with_the_record_in_the_same_commit"),
    (RemovedHistoryHoardingDriver, "test_unit_of_work_history_of_removed_records_is_bounded"),
])
def test_the_suite_fails_a_broken_driver(broken, test_name):
    clock = FakeClock()
    suite = DriverSuite()
    test = getattr(suite, test_name)
    kwargs = {"driver": broken(clock=clock), "domain": "broken.test", "other_domain": "other.test", "clock": clock,
              "models": DriverSuite.models.__wrapped__(suite),
              "history_models": DriverSuite.history_models.__wrapped__(suite)}
    params = test.__code__.co_varnames[1:test.__code__.co_argcount]
    with pytest.raises((AssertionError, pytest.fail.Exception, VersionConflict)):
        test(**{p: kwargs[p] for p in params})
