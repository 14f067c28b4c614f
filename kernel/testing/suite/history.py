"""The history part of the conformance suite: every committed version of a record, kept in the same commit.

A change that names ``history`` (its model's ``history_limit``) is appended
to its record's history by the commit that applies it, atomically with it, and
the oldest entries beyond the limit go; a commit that fails writes nothing,
history included. A removed record keeps its history until ``keep_removed``
(its model's ``history_keep_removed``) more removals of its model in its domain
have followed, so a domain that adds and removes records in a loop holds the
history of a bounded number of them. Through the driver API first, then
through the unit of work (``history = True`` on a model, ``db.history``).
"""

from __future__ import annotations

from typing import Any

import pytest

from kernel.core.driver import DEFAULT_HISTORY_KEEP_REMOVED, REMOVED_HISTORY_STEP, Change, RecordVersion
from kernel.core.errors import ValidationError, VersionConflict
from kernel.core.store import Errors, Models, UnitOfWork
from kernel.testing.suite.base import BAD_IDS, THREADS, UNENCODABLE, SuiteBase, requires, run_together


def _insert(id: str, data: dict, keep: int = 5, by: str | None = "alice") -> Change:
    return Change("insert", "H", id, 0, data, {}, keep, by)


def _update(id: str, vsn: int, data: dict, keep: int = 5, by: str | None = "alice") -> Change:
    return Change("update", "H", id, vsn, data, {}, keep, by)


def _delete(id: str, vsn: int, keep: int = 5, by: str | None = "alice",
            removed: int = DEFAULT_HISTORY_KEEP_REMOVED, model: str = "H") -> Change:
    return Change("delete", model, id, vsn, history=keep, by=by, keep_removed=removed)


def _with_history(driver, domain: str, ids, model: str = "H") -> list[str]:
    """The ids among ``ids`` whose record has history kept, in the order given."""
    return [id for id in ids if driver.history(domain, model, id)]


class Page:
    """A model that keeps the last 3 versions of each record, and the history of its last 2 removed records."""

    __model__ = "SuitePage"
    history = True
    history_limit = 3
    history_keep_removed = 2

    @classmethod
    def initialize(cls, record):
        record.merge(title="", body="")

    @classmethod
    def validate(cls, record):
        errors = Errors()
        if not record.title:
            errors.title.invalid = record.title
        return errors


class Memo:
    """A model with the default history limit."""

    __model__ = "SuiteMemo"
    history = True

    @classmethod
    def initialize(cls, record):
        record.merge(text="")


class Plain:
    """A model that keeps no history."""

    __model__ = "SuitePlain"

    @classmethod
    def initialize(cls, record):
        record.merge(text="")


class HistorySuite(SuiteBase):
    """Record history: written in the commit of the record, who and which version, bounded, never by a failed commit."""

    # -- the driver API ---------------------------------------------------

    def test_history_keeps_every_committed_version_oldest_first(self, driver, domain, clock):
        driver.commit(domain, [_insert("a", {"x": 1})])
        clock.advance(10)
        driver.commit(domain, [_update("a", 1, {"x": 2}, by="bob")])
        clock.advance(5)
        driver.commit(domain, [_delete("a", 2)])
        start = clock() - 15
        assert driver.history(domain, "H", "a") == [
            RecordVersion(1, start, "alice", {"x": 1}),
            RecordVersion(2, start + 10, "bob", {"x": 2}),
            RecordVersion(3, start + 15, "alice", None),  # the deletion: the version after the last, no data
        ]
        assert driver.fetch(domain, "H", "a") is None

    def test_history_of_a_record_without_any_is_empty(self, driver, domain):
        assert driver.history(domain, "H", "never") == []
        driver.commit(domain, [Change("insert", "H", "plain", 0, {"x": 1}, {})])
        driver.commit(domain, [Change("update", "H", "plain", 1, {"x": 2}, {})])
        assert driver.history(domain, "H", "plain") == []
        for bad in BAD_IDS:
            assert driver.history(domain, "H", bad) == []

    def test_history_is_written_in_the_commit_of_every_change(self, driver, domain, clock):
        driver.commit(domain, [_insert("a", {"n": 1}), _insert("b", {"n": 1}), Change("insert", "H", "c", 0, {}, {})])
        driver.commit(domain, [_update("a", 1, {"n": 2}, by="carol"), _delete("b", 1, by="carol"),
                               Change("update", "H", "c", 1, {"n": 2}, {})])
        assert [(v.vsn, v.by, v.data) for v in driver.history(domain, "H", "a")] == [(1, "alice", {"n": 1}),
                                                                                      (2, "carol", {"n": 2})]
        assert [(v.vsn, v.by, v.data) for v in driver.history(domain, "H", "b")] == [(1, "alice", {"n": 1}),
                                                                                      (2, "carol", None)]
        assert driver.history(domain, "H", "c") == []

    def test_a_failed_commit_writes_no_history(self, driver, domain):
        driver.commit(domain, [_insert("a", {"x": 1}), _insert("b", {"x": 1})])
        with pytest.raises(VersionConflict):
            driver.commit(domain, [
                _insert("new", {"x": 9}),
                _update("a", 1, {"x": 2}),
                _delete("b", 1),
                _update("b", 5, {"x": 3}),  # the stale one: nothing of this commit is written
            ])
        with pytest.raises(VersionConflict):
            driver.commit(domain, [_update("a", 1, {"x": 2}), _insert("b", {"x": 2})])  # b exists
        bad_data: list[dict[str, Any]] = [{"text": UNENCODABLE[0]}, {"deep": [{UNENCODABLE[1]: 1}]}]
        for data in bad_data:
            with pytest.raises(TypeError):
                driver.commit(domain, [_update("a", 1, {"x": 2}), _insert("bad", data)])
        assert driver.history(domain, "H", "new") == []
        assert driver.history(domain, "H", "bad") == []
        assert [(v.vsn, v.data) for v in driver.history(domain, "H", "a")] == [(1, {"x": 1})]
        assert [(v.vsn, v.data) for v in driver.history(domain, "H", "b")] == [(1, {"x": 1})]

    def test_history_limits_hold(self, driver, domain):
        driver.commit(domain, [_insert("a", {"n": 1}, keep=3)])
        for n in range(1, 10):
            driver.commit(domain, [_update("a", n, {"n": n + 1}, keep=3)])
            assert len(driver.history(domain, "H", "a")) == min(n + 1, 3)
        assert [(v.vsn, v.data) for v in driver.history(domain, "H", "a")] == [(8, {"n": 8}), (9, {"n": 9}),
                                                                                 (10, {"n": 10})]
        # A lower limit (the model's limit lowered in a later release) trims at the next commit; a limit of 1
        # keeps only the newest.
        driver.commit(domain, [_update("a", 10, {"n": 11}, keep=1)])
        assert [v.vsn for v in driver.history(domain, "H", "a")] == [11]
        driver.commit(domain, [_delete("a", 11, keep=2)])
        assert [(v.vsn, v.data) for v in driver.history(domain, "H", "a")] == [(11, {"n": 11}), (12, None)]

    def test_a_change_without_history_leaves_the_kept_versions_alone(self, driver, domain):
        driver.commit(domain, [_insert("a", {"n": 1})])
        driver.commit(domain, [Change("update", "H", "a", 1, {"n": 2}, {})])  # the model stopped keeping history
        assert [v.vsn for v in driver.history(domain, "H", "a")] == [1]
        driver.commit(domain, [_update("a", 2, {"n": 3})])
        assert [v.vsn for v in driver.history(domain, "H", "a")] == [1, 3]

    def test_history_outlives_the_record_and_goes_on_after_a_reinsert(self, driver, domain):
        driver.commit(domain, [_insert("a", {"n": 1})])
        driver.commit(domain, [_delete("a", 1)])
        driver.commit(domain, [_insert("a", {"n": "again"})])
        assert [(v.vsn, v.data) for v in driver.history(domain, "H", "a")] == [(1, {"n": 1}), (2, None),
                                                                                 (1, {"n": "again"})]

    def test_history_is_private_to_its_domain_and_model(self, driver, domain, other_domain):
        driver.commit(domain, [_insert("a", {"owner": 1})])
        driver.commit(domain, [Change("insert", "Other", "a", 0, {}, {}, 5, "alice")])
        assert driver.history(other_domain, "H", "a") == []
        driver.commit(other_domain, [_insert("a", {"owner": 2}, by="eve")])
        assert [(v.by, v.data) for v in driver.history(domain, "H", "a")] == [("alice", {"owner": 1})]
        assert [(v.by, v.data) for v in driver.history(other_domain, "H", "a")] == [("eve", {"owner": 2})]
        assert [v.data for v in driver.history(domain, "Other", "a")] == [{}]

    def test_history_round_trips_json_and_hands_out_copies(self, driver, domain):
        data = {"text": "café ☕ — ü \u0000 \"quoted\" 𝄞", "int": 2**53 + 1, "float": 0.1, "none": None,
                "list": [1, "two", [3, {"four": 4}]], "nested": {"": "empty key"}}
        driver.commit(domain, [_insert("j", data, by="émile"), _insert("anonymous", {}, by=None)])
        kept = driver.history(domain, "H", "j")
        assert kept == [RecordVersion(1, kept[0].at, "émile", data)]
        assert type(kept[0].data["int"]) is int and type(kept[0].data["float"]) is float
        kept[0].data["list"].append("mine")
        assert driver.history(domain, "H", "j")[0].data == data
        assert driver.history(domain, "H", "anonymous")[0].by is None

    def test_history_refuses_what_it_cannot_give_back(self, driver, domain):
        for change in (Change("insert", "H", "a", 0, {}, {}, 5, UNENCODABLE[0]),
                       Change("insert", "H", "a", 0, {}, {}, -1, "alice"),
                       Change("insert", "H", "a", 0, {}, {}, True, "alice")):
            with pytest.raises(TypeError):
                driver.commit(domain, [change])
        assert driver.fetch(domain, "H", "a") is None
        assert driver.history(domain, "H", "a") == []

    def test_concurrent_writers_write_one_version_each(self, driver, domain):
        driver.commit(domain, [_insert("hot", {"n": 0})])
        results = run_together(THREADS, lambda i: driver.commit(domain, [_update("hot", 1, {"n": i}, by=f"w{i}")]))
        winners = [i for i, r in enumerate(results) if r is None]
        assert len(winners) == 1, results
        assert [(v.vsn, v.by, v.data) for v in driver.history(domain, "H", "hot")] == [
            (1, "alice", {"n": 0}), (2, f"w{winners[0]}", {"n": winners[0]})]

    # -- removed records: a bounded number keep their history ----------------

    def test_removed_records_keep_their_history_until_enough_removals_follow(self, driver, domain):
        ids = [f"r{n}" for n in range(8)]
        driver.commit(domain, [_insert(id, {"n": 0}) for id in [*ids, "live"]])
        driver.commit(domain, [_update(id, 1, {"n": 1}) for id in [*ids, "live"]])
        driver.commit(domain, [_delete("r0", 2, removed=3)])
        driver.commit(domain, [_delete("r1", 2, removed=3), _delete("r2", 2, removed=3)])
        for id in ("r0", "r1", "r2"):  # three removals, a bound of three: each keeps all it had
            assert [(v.vsn, v.data) for v in driver.history(domain, "H", id)] == [(1, {"n": 0}), (2, {"n": 1}),
                                                                                    (3, None)]
        driver.commit(domain, [_delete("r3", 2, removed=3)])  # the third removal after r0's: r0's history goes
        assert driver.history(domain, "H", "r0") == []
        assert _with_history(driver, domain, ids) == ["r1", "r2", "r3", "r4", "r5", "r6", "r7"]
        # The removals of one commit count in the order of its changes (r5, then r4), whatever the driver
        # writes first.
        driver.commit(domain, [_delete("r5", 2, removed=3), _delete("r4", 2, removed=3)])
        assert _with_history(driver, domain, ids) == ["r3", "r4", "r5", "r6", "r7"]
        driver.commit(domain, [_delete("r6", 2, removed=3)])
        assert _with_history(driver, domain, ids) == ["r4", "r5", "r6", "r7"]
        driver.commit(domain, [_delete("r7", 2, removed=3)])
        assert _with_history(driver, domain, ids) == ["r4", "r6", "r7"]  # r5 was removed before r4
        assert [v.vsn for v in driver.history(domain, "H", "r7")] == [1, 2, 3]
        # A live record's history is none of this: it keeps its versions, however many records go.
        assert [v.vsn for v in driver.history(domain, "H", "live")] == [1, 2]

    def test_removals_count_within_their_model_and_domain_only(self, driver, domain, other_domain):
        driver.commit(domain, [_insert("a", {}), _insert("b", {}), Change("insert", "H", "plain", 0, {}, {}),
                               Change("insert", "Other", "o", 0, {}, {}, 5, "alice")])
        driver.commit(other_domain, [_insert("x", {})])
        driver.commit(domain, [_delete("a", 1, removed=1)])
        driver.commit(other_domain, [_delete("x", 1, removed=1)])  # another domain's removal
        driver.commit(domain, [_delete("o", 1, removed=1, model="Other")])  # another model's
        driver.commit(domain, [Change("delete", "H", "plain", 1)])  # a delete that keeps no history is no removal
        assert [v.data for v in driver.history(domain, "H", "a")] == [{}, None]
        assert [v.data for v in driver.history(other_domain, "H", "x")] == [{}, None]
        assert [v.data for v in driver.history(domain, "Other", "o")] == [{}, None]
        driver.commit(domain, [_delete("b", 1, removed=1)])
        assert driver.history(domain, "H", "a") == []
        assert [v.data for v in driver.history(domain, "H", "b")] == [{}, None]
        assert [v.data for v in driver.history(other_domain, "H", "x")] == [{}, None]
        assert [v.data for v in driver.history(domain, "Other", "o")] == [{}, None]

    def test_a_record_inserted_again_keeps_the_versions_after_its_removal(self, driver, domain):
        driver.commit(domain, [_insert("a", {"life": 1}), _insert("b", {}), _insert("c", {}), _insert("d", {})])
        driver.commit(domain, [_delete("a", 1, removed=2)])
        driver.commit(domain, [_insert("a", {"life": 2})])
        driver.commit(domain, [_update("a", 1, {"life": 2, "n": 2})])
        driver.commit(domain, [_delete("b", 1, removed=2)])
        assert [(v.vsn, v.data) for v in driver.history(domain, "H", "a")] == [
            (1, {"life": 1}), (2, None), (1, {"life": 2}), (2, {"life": 2, "n": 2})]
        driver.commit(domain, [_delete("c", 1, removed=2)])  # a's removal is two removals old: its first life goes
        assert [(v.vsn, v.data) for v in driver.history(domain, "H", "a")] == [
            (1, {"life": 2}), (2, {"life": 2, "n": 2})]
        assert driver.fetch(domain, "H", "a").data == {"life": 2, "n": 2}
        # Removed again, it counts from its latest removal.
        driver.commit(domain, [_delete("a", 2, removed=2)])
        driver.commit(domain, [_delete("d", 1, removed=2)])
        assert [v.vsn for v in driver.history(domain, "H", "a")] == [1, 2, 3]
        assert _with_history(driver, domain, ["b", "c", "d"]) == ["d"]
        driver.commit(domain, [_insert("e", {})])
        driver.commit(domain, [_delete("e", 1, removed=2)])
        assert driver.history(domain, "H", "a") == []
        assert _with_history(driver, domain, ["a", "b", "c", "d", "e"]) == ["d", "e"]

    def test_keep_removed_0_drops_the_history_with_the_record_in_the_same_commit(self, driver, domain):
        driver.commit(domain, [_insert("a", {"x": 1}), _insert("b", {"x": 1}), _insert("c", {"x": 1})])
        with pytest.raises(VersionConflict):
            driver.commit(domain, [_delete("a", 1, removed=0), _update("b", 7, {"x": 2})])
        assert [v.data for v in driver.history(domain, "H", "a")] == [{"x": 1}]  # a failed commit drops nothing
        driver.commit(domain, [_delete("a", 1, removed=0), _update("b", 1, {"x": 2})])
        assert driver.fetch(domain, "H", "a") is None
        assert driver.history(domain, "H", "a") == []
        assert [v.data for v in driver.history(domain, "H", "b")] == [{"x": 1}, {"x": 2}]
        driver.commit(domain, [_insert("a", {"x": "again"})])
        assert [(v.vsn, v.data) for v in driver.history(domain, "H", "a")] == [(1, {"x": "again"})]

    def test_a_lowered_bound_is_reached_over_the_next_removals(self, driver, domain):
        ids = [f"r{n:02}" for n in range(48)]
        driver.commit(domain, [_insert(id, {"n": n}) for n, id in enumerate(ids)])
        driver.commit(domain, [_delete(id, 1, removed=100) for id in ids[:40]])
        assert _with_history(driver, domain, ids) == ids  # 40 removals, a bound of 100
        kept = 40
        for n, id in enumerate(ids[40:], start=41):
            driver.commit(domain, [_delete(id, 1, removed=2)])  # the model's bound, lowered to 2
            now = _with_history(driver, domain, ids[:n])
            # Each removal drops the histories beyond the bound, oldest removal first, up to one for itself
            # and REMOVED_HISTORY_STEP more.
            assert len(now) == max(kept + 1 - (1 + REMOVED_HISTORY_STEP), 2), (kept, now)
            assert now == ids[n - len(now):n], now
            kept = len(now)
        assert kept == 2

    def test_concurrent_removals_keep_the_bound(self, driver, domain):
        ids = [f"c{i}" for i in range(THREADS)]
        driver.commit(domain, [_insert(id, {"i": i}) for i, id in enumerate(ids)])
        results = run_together(THREADS, lambda i: driver.commit(domain, [_delete(ids[i], 1, removed=3)]))
        assert results == [None] * THREADS
        assert len(_with_history(driver, domain, ids)) == 3
        for id in _with_history(driver, domain, ids):
            assert [(v.vsn, v.data is None) for v in driver.history(domain, "H", id)] == [(1, False), (2, True)]

    @requires("persistent")
    def test_persistent_history_survives_reopen(self, driver, domain, reopen):
        driver.commit(domain, [_insert("p", {"x": 1})])
        driver.commit(domain, [_update("p", 1, {"x": 2})])
        expected = driver.history(domain, "H", "p")
        reopened = reopen()
        try:
            assert reopened.history(domain, "H", "p") == expected
            reopened.commit(domain, [_update("p", 2, {"x": 3}, keep=2)])
            assert [v.vsn for v in reopened.history(domain, "H", "p")] == [2, 3]
        finally:
            reopened.close()

    # -- through the unit of work ------------------------------------------

    @pytest.fixture
    def history_models(self) -> Models:
        """The history part's models."""
        return Models([Page, Memo, Plain])

    def test_unit_of_work_records_who_and_which_version(self, driver, domain, clock, history_models):
        with UnitOfWork(driver, domain, history_models, author="alice") as db:
            page = db.insert(Page, id="home", title="Home", body="v1")
        clock.advance(60)
        with UnitOfWork(driver, domain, history_models, author="bob") as db:
            db.update(Page, "home", 1, body="v2")
            assert [v["vsn"] for v in db.history(Page, "home")] == [1]  # what this unit changes is not committed yet
        with UnitOfWork(driver, domain, history_models, author=None) as db:
            db.delete(Page, "home", 2)
        with UnitOfWork(driver, domain, history_models) as db:
            assert db.history(Page, page._id) == [
                {"vsn": 1, "at": clock() - 60, "by": "alice", "data": {"title": "Home", "body": "v1"}},
                {"vsn": 2, "at": clock(), "by": "bob", "data": {"title": "Home", "body": "v2"}},
                {"vsn": 3, "at": clock(), "by": None, "data": None},
            ]

    def test_unit_of_work_history_is_the_commit(self, driver, domain, history_models):
        with UnitOfWork(driver, domain, history_models, author="alice") as db:
            db.insert(Page, id="p", title="one")
        # A failed validation, a conflict and an exception commit nothing, history included.
        with pytest.raises(ValidationError):
            with UnitOfWork(driver, domain, history_models, author="alice") as db:
                db.update(Page, "p", 1, title="")
                db.insert(Memo, id="m", text="beside it")
        stale = UnitOfWork(driver, domain, history_models, author="mallory")
        stale.update(stale.fetch(Page, "p"), title="lost")
        with UnitOfWork(driver, domain, history_models, author="alice") as db:
            db.update(Page, "p", 1, title="two")
        with pytest.raises(VersionConflict):
            stale.commit()
        with pytest.raises(RuntimeError):
            with UnitOfWork(driver, domain, history_models, author="alice") as db:
                db.update(Page, "p", 2, title="three")
                raise RuntimeError("boom")
        with UnitOfWork(driver, domain, history_models) as db:
            assert [(v["vsn"], v["by"], v["data"]["title"]) for v in db.history(Page, "p")] == [
                (1, "alice", "one"), (2, "alice", "two")]
            assert db.history(Memo, "m") == []

    def test_unit_of_work_history_limits_hold(self, driver, domain, history_models):
        with UnitOfWork(driver, domain, history_models, author="alice") as db:
            db.insert(Page, id="p", title="v1")
            db.insert(Memo, id="m", text="v1")
        for n in range(2, 8):
            with UnitOfWork(driver, domain, history_models, author="alice") as db:
                db.update(Page, "p", n - 1, title=f"v{n}")
                db.update(Memo, "m", n - 1, text=f"v{n}")
        with UnitOfWork(driver, domain, history_models) as db:
            assert [v["data"]["title"] for v in db.history(Page, "p")] == ["v5", "v6", "v7"]
            assert len(db.history(Memo, "m")) == 7  # far below the default limit

    def test_unit_of_work_history_of_removed_records_is_bounded(self, driver, domain, history_models):
        with UnitOfWork(driver, domain, history_models, author="alice") as db:
            for n in range(1, 5):
                db.insert(Page, id=f"p{n}", title=f"page {n}")
                db.insert(Memo, id=f"m{n}", text=f"memo {n}")
        for n in (1, 2):
            with UnitOfWork(driver, domain, history_models, author="bob") as db:
                db.delete(Page, f"p{n}", 1)
                db.delete(Memo, f"m{n}", 1)
        with UnitOfWork(driver, domain, history_models) as db:
            assert [(v["vsn"], v["by"], v["data"]) for v in db.history(Page, "p1")] == [
                (1, "alice", {"title": "page 1", "body": ""}), (2, "bob", None)]
        with UnitOfWork(driver, domain, history_models, author="bob") as db:
            db.delete(Page, "p3", 1)  # Page keeps the history of its last 2 removed records: p1's goes
        with UnitOfWork(driver, domain, history_models) as db:
            assert db.history(Page, "p1") == []
            assert [len(db.history(Page, f"p{n}")) for n in (2, 3, 4)] == [2, 2, 1]
            db.delete(Page, "p4", 1)
            db.delete(Memo, "m3", 1)
        with UnitOfWork(driver, domain, history_models) as db:
            assert [len(db.history(Page, f"p{n}")) for n in (1, 2, 3, 4)] == [0, 0, 2, 2]
            # Memo keeps the default bound: its three removed records keep their history.
            assert [len(db.history(Memo, f"m{n}")) for n in (1, 2, 3, 4)] == [2, 2, 2, 1]

    def test_unit_of_work_keeps_no_history_for_a_model_that_does_not_ask(self, driver, domain, history_models):
        with UnitOfWork(driver, domain, history_models, author="alice") as db:
            db.insert(Plain, id="x", text="v1")
        with UnitOfWork(driver, domain, history_models, author="alice") as db:
            db.update(Plain, "x", 1, text="v2")
            with pytest.raises(ValueError):
                db.history(Plain, "x")
        assert driver.history(domain, "SuitePlain", "x") == []
        with UnitOfWork(driver, domain, history_models) as db:
            for bad in BAD_IDS:
                assert db.history(Page, bad) == []
