"""The state part of the conformance suite: short-lived keys, add and replace, windows, expiry, reclamation."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from kernel.core.driver import WindowEntry
from kernel.testing.suite.base import THREADS, UNENCODABLE, SuiteBase, requires, run_together


def race_delete_against_guarded_adds(driver, domain: str, guard: str, adders: int, delay: float) -> list:
    """One thread deletes ``guard`` while others add nonces guarded by it; return, per adder, the adds that
    started after the delete returned and still stored (the deleter's entry is always empty)."""
    driver.set(domain, guard, 1, 60)
    deleted = threading.Event()  # set once delete has returned

    def act(i):
        if i == 0:
            time.sleep(delay)
            driver.delete(domain, guard)
            deleted.set()
            return []
        late, tried_after = [], 0
        for j in range(2000):  # until three adds have started after the delete returned (or enough)
            after = deleted.is_set()
            if driver.add(domain, f"{guard}:nonce:{i}:{j}", 1, 60, if_live=guard) and after:
                late.append(j)
            tried_after += after
            if tried_after >= 3:
                break
        return late

    return run_together(adders + 1, act)


class StateSuite(SuiteBase):
    """Short-lived state: time to live on the driver's clock, atomic add/replace/incr, windows, bounded memory."""

    @requires("count_live")
    def test_count_live_counts_live_plain_keys_by_prefix_in_every_domain(self, driver, domain, other_domain, clock):
        before = driver.count_live("sess%_:")
        driver.set(domain, "sess%_:a", 1, 10)
        driver.set(domain, "sess%_:b", 1, 30)
        driver.set(other_domain, "sess%_:a", 1, 30)
        driver.set(domain, "sessXY:c", 1, 30)  # % and _ are no wildcards
        driver.window_add(domain, "sess%_:w", "m", 1, 30)  # a window is no plain key
        assert driver.count_live("sess%_:") == before + 3
        clock.advance(20)
        assert driver.count_live("sess%_:") == before + 2
        driver.delete(domain, "sess%_:b")
        assert driver.count_live("sess%_:") == before + 1

    def test_state_set_get_and_expiry(self, driver, domain, clock):
        driver.set(domain, "k", {"v": [1, "two"]}, 10)
        assert driver.get(domain, "k") == {"v": [1, "two"]}
        clock.advance(9.5)
        assert driver.get(domain, "k") == {"v": [1, "two"]}
        clock.advance(1)
        assert driver.get(domain, "k") is None
        assert driver.get(domain, "never") is None

    def test_state_set_overwrites_and_resets_ttl(self, driver, domain, clock):
        driver.set(domain, "k", 1, 10)
        clock.advance(8)
        driver.set(domain, "k", 2, 10)
        clock.advance(8)
        assert driver.get(domain, "k") == 2

    def test_state_get_many(self, driver, domain, other_domain, clock):
        driver.set(domain, "a", {"v": 1}, 10)
        driver.set(domain, "b", "two", 20)
        driver.set(other_domain, "c", 3, 10)
        driver.window_add(domain, "w", "m", 1, 10)
        assert driver.get_many(domain, ["a", "missing", "b", "c", "w"]) == [{"v": 1}, None, "two", None, None]
        assert driver.get_many(domain, []) == []
        clock.advance(15)
        assert driver.get_many(domain, ["a", "b"]) == [None, "two"]

    def test_state_replace_only_a_live_key(self, driver, domain, clock):
        assert driver.replace(domain, "k", 1, 10) is False
        assert driver.get(domain, "k") is None
        driver.set(domain, "k", 1, 10)
        clock.advance(8)
        assert driver.replace(domain, "k", 2, 10) is True
        clock.advance(8)  # the replace restarted the time to live
        assert driver.get(domain, "k") == 2
        driver.delete(domain, "k")
        assert driver.replace(domain, "k", 3, 10) is False
        assert driver.get(domain, "k") is None
        driver.set(domain, "k", 4, 1)
        clock.advance(2)
        assert driver.replace(domain, "k", 5, 10) is False
        assert driver.get(domain, "k") is None

    def test_state_replace_never_revives_a_deleted_key(self, driver, domain):
        for round_ in range(20):
            driver.set(domain, "s", round_, 60)

            def act(i):
                return driver.delete(domain, "s") if i == 0 else driver.replace(domain, "s", -i, 60)

            run_together(4, act)
            assert driver.get(domain, "s") is None, round_

    def test_state_add_if_absent(self, driver, domain, clock):
        assert driver.add(domain, "n", "first", 5) is True
        assert driver.add(domain, "n", "second", 5) is False
        assert driver.get(domain, "n") == "first"
        clock.advance(6)
        assert driver.add(domain, "n", "third", 5) is True
        assert driver.get(domain, "n") == "third"

    def test_state_add_if_live(self, driver, domain, other_domain, clock):
        driver.set(domain, "session", {"user": "ann"}, 10)
        assert driver.add(domain, "n1", "first", 5, if_live="session") is True
        assert driver.get(domain, "n1") == "first"
        assert driver.add(domain, "n1", "again", 5, if_live="session") is False  # the key itself is live
        assert driver.add(domain, "n2", 1, 5, if_live="never-set") is False
        assert driver.add(other_domain, "n3", 1, 5, if_live="session") is False  # the guard is another domain's
        driver.window_add(domain, "win", "m", 1, 60)
        assert driver.add(domain, "n4", 1, 5, if_live="win") is False  # a window counts as absent
        driver.set(domain, "gone", 1, 60)
        driver.delete(domain, "gone")
        assert driver.add(domain, "n5", 1, 5, if_live="gone") is False
        assert driver.add(domain, "self", 1, 5, if_live="self") is False
        clock.advance(11)  # the session has expired, and so has n1
        assert driver.add(domain, "n6", 1, 5, if_live="session") is False
        driver.set(domain, "session2", {"user": "bob"}, 10)
        assert driver.add(domain, "n1", "taken over", 5, if_live="session2") is True
        assert driver.get_many(domain, ["n1", "n2", "n3", "n4", "n5", "self", "n6"]) == [
            "taken over", None, None, None, None, None, None]
        assert driver.get(other_domain, "n3") is None
        with pytest.raises(TypeError):
            driver.add(domain, "n7", {1, 2}, 5, if_live="session2")

    def test_state_add_if_live_never_passes_after_the_guard_is_deleted(self, driver, domain):
        adders = 5
        for round_ in range(8):
            results = race_delete_against_guarded_adds(driver, domain, f"session:{round_}", adders, 0.002 * (round_ % 4))
            assert results == [[]] * (adders + 1), (round_, results)
            assert driver.add(domain, f"session:{round_}:late", 1, 60, if_live=f"session:{round_}") is False

    def test_state_delete(self, driver, domain):
        driver.set(domain, "k", 1, 10)
        assert driver.delete(domain, "k") is True
        assert driver.get(domain, "k") is None
        assert driver.delete(domain, "k") is False

    def test_state_incr_in_a_fixed_window(self, driver, domain, clock):
        assert driver.incr(domain, "c", 1, 10) == 1
        assert driver.incr(domain, "c", 2, 10) == 3
        clock.advance(5)
        assert driver.incr(domain, "c", 1, 10) == 4
        clock.advance(5.5)  # the window opened by the first increment has ended
        assert driver.incr(domain, "c", 1, 10) == 1
        assert driver.get(domain, "c") == 1

    def test_state_is_isolated_by_domain(self, driver, domain, other_domain):
        driver.set(domain, "k", "mine", 10)
        driver.window_add(domain, "w", "m", 1, 10)
        assert driver.get(other_domain, "k") is None
        assert driver.add(other_domain, "k", "theirs", 10) is True
        assert driver.get(domain, "k") == "mine"
        assert driver.window_entries(other_domain, "w") == []
        assert driver.incr(other_domain, "k2", 1, 10) == 1

    def test_state_add_under_threads(self, driver, domain):
        results = run_together(THREADS, lambda i: driver.add(domain, "nonce", i, 60))
        assert results.count(True) == 1, results
        assert results.count(False) == THREADS - 1, results

    def test_state_incr_under_threads(self, driver, domain):
        def bump(i):
            return [driver.incr(domain, "hits", 1, 60) for _ in range(10)]

        results = run_together(THREADS, bump)
        seen = sorted(v for r in results for v in r)
        assert seen == list(range(1, THREADS * 10 + 1)), results
        assert driver.get(domain, "hits") == THREADS * 10

    def test_window_members_expire_one_by_one(self, driver, domain, clock):
        driver.window_add(domain, "w", "a", 1, 10)
        clock.advance(4)
        entries = driver.window_add(domain, "w", "b", 3, 10)
        assert [(e.member, e.weight) for e in entries] == [("a", 1), ("b", 3)]
        assert entries[0].expires == pytest.approx(clock() - 4 + 10)
        clock.advance(7)  # a is gone, b stays
        assert [(e.member, e.weight) for e in driver.window_entries(domain, "w")] == [("b", 3)]
        clock.advance(4)
        assert driver.window_entries(domain, "w") == []

    def test_window_replace_discard_and_delete(self, driver, domain, clock):
        driver.window_add(domain, "w", "a", 1, 10)
        driver.window_add(domain, "w", "b", 1, 10)
        entries = driver.window_add(domain, "w", "a", 5, 20)
        assert {(e.member, e.weight) for e in entries} == {("a", 5), ("b", 1)}
        assert [e.member for e in entries] == ["b", "a"]
        assert driver.window_discard(domain, "w", "b") is True
        assert driver.window_discard(domain, "w", "b") is False
        assert [e.member for e in driver.window_entries(domain, "w")] == ["a"]
        assert driver.delete(domain, "w") is True
        assert driver.window_entries(domain, "w") == []

    def test_window_add_under_threads(self, driver, domain):
        results = run_together(THREADS, lambda i: driver.window_add(domain, "w", f"m{i}", 1, 60))
        assert all(isinstance(r, list) for r in results), results
        assert len(driver.window_entries(domain, "w")) == THREADS
        assert max(len(r) for r in results) == THREADS
        assert all(isinstance(e, WindowEntry) for e in results[0])

    def test_unencodable_strings_in_state_are_refused(self, driver, domain):
        driver.set(domain, "k", "kept", 60)
        driver.window_add(domain, "w", "m", 1, 60)
        for text in UNENCODABLE:
            writes: list[tuple[Any, ...]] = [
                (driver.set, "k", text, 60),
                (driver.set, "n", {"a": [1, {"b": text}]}, 60),
                (driver.set, "n", {text: 1}, 60),
                (driver.replace, "k", [text], 60),
                (driver.add, "a", text, 60),
                (driver.window_add, "w", text, 1, 60),
            ]
            for write, *args in writes:
                with pytest.raises(TypeError):
                    write(domain, *args)
        assert driver.get_many(domain, ["k", "n", "a"]) == ["kept", None, None]
        assert [(e.member, e.weight) for e in driver.window_entries(domain, "w")] == [("m", 1)]
        assert driver.add(domain, "a", "café 🙂", 60) is True
        assert driver.get(domain, "a") == "café 🙂"

    def test_expired_state_does_not_pile_up(self, driver, domain, clock):
        """Sustained load of short-lived keys and window members: what the backend holds stays near what is live.

        ``state_count`` counts the whole deployment, and suites may share one backend (each test has its own
        domain): what earlier tests left live is counted before and only the growth is bounded.
        """
        before = driver.state_count()
        rounds, per_round = 15, 200
        ttl = 0.05  # seconds: native TTLs (Redis) follow real time, not the test clock
        for round_ in range(rounds):
            for i in range(per_round * 4 // 5):
                assert driver.add(domain, f"nonce:{round_}:{i}", 1, ttl) is True
            for i in range(per_round // 5):
                driver.window_add(domain, f"calls:{i % 4}", f"{round_}:{i}", 1, ttl)
            clock.advance(5)  # each round's entries have expired when the next one starts
        time.sleep(2 * ttl)
        for i in range(5):  # a few more writes, of keys that stay
            driver.set(domain, f"live:{i}", i, 600)
        held = driver.state_count()
        assert held >= 5, f"the 5 live keys are not counted: {held}"
        assert held - before <= 3 * per_round + 5, \
            f"{held - before} more state entries held after {rounds * per_round} writes ({before} before)"
        assert driver.get_many(domain, [f"live:{i}" for i in range(5)]) == list(range(5))
