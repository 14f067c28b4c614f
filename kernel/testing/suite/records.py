"""The records part of the conformance suite: the driver API itself (commit, fetch, select, domains)."""

from __future__ import annotations

from typing import Any

import pytest

from kernel.core.driver import MAX_ID_LENGTH, Change, StoredRecord
from kernel.core.errors import RecordNotFound, VersionConflict
from kernel.testing.suite.base import BAD_IDS, THREADS, UNENCODABLE, SuiteBase, requires, run_together


class RecordsSuite(SuiteBase):
    """Records through the driver API: versions, atomic commits, indexes, domains, JSON, record ids, races."""

    def test_insert_then_fetch(self, driver, domain):
        driver.commit(domain, [Change("insert", "M", "a", 0, {"x": 1}, {"k": "v"})])
        assert driver.fetch(domain, "M", "a") == StoredRecord("M", "a", 1, {"x": 1})

    def test_fetch_missing_is_none(self, driver, domain):
        assert driver.fetch(domain, "M", "nope") is None
        assert driver.select(domain, "M") == []

    def test_update_bumps_version(self, driver, domain):
        driver.commit(domain, [Change("insert", "M", "a", 0, {"x": 1}, {})])
        driver.commit(domain, [Change("update", "M", "a", 1, {"x": 2}, {})])
        assert driver.fetch(domain, "M", "a") == StoredRecord("M", "a", 2, {"x": 2})

    def test_update_with_stale_version_conflicts(self, driver, domain):
        driver.commit(domain, [Change("insert", "M", "a", 0, {"x": 1}, {})])
        driver.commit(domain, [Change("update", "M", "a", 1, {"x": 2}, {})])
        with pytest.raises(VersionConflict):
            driver.commit(domain, [Change("update", "M", "a", 1, {"x": 3}, {})])
        assert driver.fetch(domain, "M", "a") == StoredRecord("M", "a", 2, {"x": 2})

    def test_update_of_missing_record_conflicts(self, driver, domain):
        with pytest.raises(VersionConflict):
            driver.commit(domain, [Change("update", "M", "ghost", 1, {"x": 3}, {})])
        assert driver.fetch(domain, "M", "ghost") is None

    def test_delete_checks_version(self, driver, domain):
        driver.commit(domain, [Change("insert", "M", "a", 0, {}, {})])
        with pytest.raises(VersionConflict):
            driver.commit(domain, [Change("delete", "M", "a", 7)])
        driver.commit(domain, [Change("delete", "M", "a", 1)])
        assert driver.fetch(domain, "M", "a") is None
        with pytest.raises(VersionConflict):
            driver.commit(domain, [Change("delete", "M", "a", 1)])

    def test_insert_of_existing_id_conflicts(self, driver, domain):
        driver.commit(domain, [Change("insert", "M", "a", 0, {"x": 1}, {})])
        with pytest.raises(VersionConflict):
            driver.commit(domain, [Change("insert", "M", "a", 0, {"x": 2}, {})])
        assert driver.fetch(domain, "M", "a").data == {"x": 1}

    def test_reinsert_after_delete(self, driver, domain):
        driver.commit(domain, [Change("insert", "M", "a", 0, {"x": 1}, {})])
        driver.commit(domain, [Change("delete", "M", "a", 1)])
        driver.commit(domain, [Change("insert", "M", "a", 0, {"x": 2}, {})])
        assert driver.fetch(domain, "M", "a") == StoredRecord("M", "a", 1, {"x": 2})

    def test_failed_commit_applies_nothing(self, driver, domain):
        driver.commit(domain, [Change("insert", "M", "a", 0, {"x": 1}, {}), Change("insert", "M", "b", 0, {"x": 1}, {})])
        with pytest.raises(VersionConflict):
            driver.commit(domain, [
                Change("insert", "M", "new", 0, {"x": 9}, {}),
                Change("update", "M", "a", 1, {"x": 2}, {}),
                Change("delete", "M", "b", 1),
                Change("update", "M", "b", 5, {"x": 3}, {}),
            ])
        assert driver.fetch(domain, "M", "new") is None
        assert driver.fetch(domain, "M", "a") == StoredRecord("M", "a", 1, {"x": 1})
        assert driver.fetch(domain, "M", "b") == StoredRecord("M", "b", 1, {"x": 1})

    def test_select_keeps_creation_order(self, driver, domain):
        ids = [f"r{i}" for i in (5, 3, 9, 1, 7)]
        for i in ids:
            driver.commit(domain, [Change("insert", "M", i, 0, {"n": i}, {})])
        driver.commit(domain, [Change("update", "M", "r5", 1, {"n": "changed"}, {})])
        assert [r.id for r in driver.select(domain, "M")] == ids

    def test_records_inserted_by_one_commit_keep_the_order_of_its_changes(self, driver, domain):
        ids = ["m", "c", "x", "a", "q"]
        driver.commit(domain, [Change("insert", "M", "first", 0, {}, {"k": 1})])
        driver.commit(domain, [Change("update", "M", "first", 1, {"n": 1}, {"k": 1}),
                               *(Change("insert", "M", i, 0, {}, {"k": 1}) for i in ids)])
        assert [r.id for r in driver.select(domain, "M")] == ["first", *ids]
        assert [r.id for r in driver.select(domain, "M", {"k": 1})] == ["first", *ids]

    def test_select_filters_on_index(self, driver, domain):
        driver.commit(domain, [
            Change("insert", "M", "a", 0, {}, {"done": False, "tag": "x"}),
            Change("insert", "M", "b", 0, {}, {"done": True, "tag": "x"}),
            Change("insert", "M", "c", 0, {}, {"done": True, "tag": "y"}),
        ])
        assert [r.id for r in driver.select(domain, "M", {"done": True})] == ["b", "c"]
        assert [r.id for r in driver.select(domain, "M", {"done": True, "tag": "x"})] == ["b"]
        assert driver.select(domain, "M", {"tag": "z"}) == []
        driver.commit(domain, [Change("update", "M", "a", 1, {}, {"done": True, "tag": "y"})])
        assert [r.id for r in driver.select(domain, "M", {"done": True})] == ["a", "b", "c"]
        driver.commit(domain, [Change("delete", "M", "b", 1)])
        assert [r.id for r in driver.select(domain, "M", {"done": True})] == ["a", "c"]

    @requires("paged_select")
    def test_select_reads_one_page_of_the_creation_order(self, driver, domain, other_domain):
        ids = [f"r{i}" for i in (5, 4, 9, 1, 8, 7)]
        for i in ids:
            driver.commit(domain, [Change("insert", "M", i, 0, {"n": i}, {"odd": int(i[1:]) % 2 == 1})])
        driver.commit(domain, [Change("update", "M", "r5", 1, {"n": "changed"}, {"odd": True})])
        every = driver.select(domain, "M")
        assert [r.id for r in driver.select(domain, "M", limit=4)] == ids[:4]
        assert driver.select(domain, "M", after="r9") == every[3:]  # the same records, data and versions
        assert [r.id for r in driver.select(domain, "M", after="r9", limit=2)] == ["r1", "r8"]
        assert driver.select(domain, "M", after="r7") == []
        assert [r.id for r in driver.select(domain, "M", limit=100)] == ids
        pages, after = [], None
        while True:
            page = driver.select(domain, "M", after=after, limit=4)
            if not page:
                break
            pages.append([r.id for r in page])
            after = page[-1].id
        assert pages == [ids[:4], ids[4:]]
        # With a filter: the page starts after a record that need not match it.
        assert [r.id for r in driver.select(domain, "M", {"odd": True}, after="r4")] == ["r9", "r1", "r7"]
        assert [r.id for r in driver.select(domain, "M", {"odd": True}, after="r4", limit=2)] == ["r9", "r1"]
        assert [r.id for r in driver.select(domain, "M", {"odd": True}, limit=1)] == ["r5"]
        assert driver.select(domain, "M", {"odd": True}, after="r7") == []

    @requires("paged_select")
    def test_a_page_follows_what_was_committed_since_the_last_one(self, driver, domain):
        def page(after, limit=None):
            return [r.id for r in driver.select(domain, "M", after=after, limit=limit)]

        driver.commit(domain, [Change("insert", "M", i, 0, {}, {}) for i in ("a", "b", "c")])
        assert page("a") == ["b", "c"]
        driver.commit(domain, [Change("insert", "M", "d", 0, {}, {})])
        assert page("a") == ["b", "c", "d"]
        driver.commit(domain, [Change("delete", "M", "b", 1)])
        assert page("a") == ["c", "d"] and page("c", 1) == ["d"]
        driver.commit(domain, [Change("insert", "M", "b", 0, {}, {})])  # a new record again: it comes last
        assert page("a") == ["c", "d", "b"]
        driver.commit(domain, [Change("update", "M", "c", 1, {"x": 1}, {})])  # an update keeps its place
        assert page("a", 2) == ["c", "d"] and driver.select(domain, "M", after="a", limit=1)[0].data == {"x": 1}

    @requires("paged_select")
    def test_select_after_a_record_the_domain_does_not_hold_is_record_not_found(self, driver, domain, other_domain):
        driver.commit(domain, [Change("insert", "M", "a", 0, {}, {"k": 1}), Change("insert", "M", "b", 0, {}, {"k": 1})])
        driver.commit(other_domain, [Change("insert", "M", "elsewhere", 0, {}, {"k": 1})])
        driver.commit(domain, [Change("delete", "M", "a", 1)])
        for after in ("a", "ghost", "elsewhere"):
            with pytest.raises(RecordNotFound):
                driver.select(domain, "M", after=after)
            with pytest.raises(RecordNotFound):
                driver.select(domain, "M", {"k": 1}, after=after, limit=5)
        with pytest.raises(RecordNotFound):
            driver.select(domain, "Other", after="b")  # another model's record is not a place in this one
        assert [r.id for r in driver.select(other_domain, "M", limit=5)] == ["elsewhere"]

    def test_index_values_keep_their_json_type(self, driver, domain):
        driver.commit(domain, [
            Change("insert", "M", "t", 0, {}, {"v": True}),
            Change("insert", "M", "one", 0, {}, {"v": 1}),
            Change("insert", "M", "s", 0, {}, {"v": "1"}),
            Change("insert", "M", "n", 0, {}, {"v": None}),
        ])
        assert [r.id for r in driver.select(domain, "M", {"v": True})] == ["t"]
        assert [r.id for r in driver.select(domain, "M", {"v": 1})] == ["one"]
        assert [r.id for r in driver.select(domain, "M", {"v": "1"})] == ["s"]
        assert [r.id for r in driver.select(domain, "M", {"v": None})] == ["n"]

    def test_models_are_separate(self, driver, domain):
        driver.commit(domain, [Change("insert", "A", "x", 0, {"m": "A"}, {}), Change("insert", "B", "x", 0, {"m": "B"}, {})])
        assert driver.fetch(domain, "A", "x").data == {"m": "A"}
        assert [r.data for r in driver.select(domain, "B")] == [{"m": "B"}]

    def test_domains_are_isolated(self, driver, domain, other_domain):
        driver.commit(domain, [Change("insert", "M", "same", 0, {"owner": 1}, {"k": 1})])
        assert driver.fetch(other_domain, "M", "same") is None
        assert driver.select(other_domain, "M") == []
        assert driver.select(other_domain, "M", {"k": 1}) == []
        with pytest.raises(VersionConflict):
            driver.commit(other_domain, [Change("update", "M", "same", 1, {"owner": 2}, {})])
        with pytest.raises(VersionConflict):
            driver.commit(other_domain, [Change("delete", "M", "same", 1)])
        driver.commit(other_domain, [Change("insert", "M", "same", 0, {"owner": 2}, {})])
        assert driver.fetch(domain, "M", "same").data == {"owner": 1}
        assert driver.fetch(other_domain, "M", "same").data == {"owner": 2}

    def test_domains_lists_only_holders(self, driver, domain, other_domain):
        driver.commit(domain, [Change("insert", "DomainProbe", "x", 0, {}, {})])
        names = driver.domains("DomainProbe")
        assert domain in names and other_domain not in names

    def test_json_values_round_trip(self, driver, domain):
        data = {
            "text": "café ☕ — ü \u0000 \"quoted\" \\ 𝄞",
            "int": 2**53 + 1, "neg": -7, "float": 0.1, "big": 1e300, "zero": 0.0,
            "true": True, "false": False, "none": None, "one": 1,
            "list": [1, "two", [3, {"four": 4}], None, True],
            "nested": {"a": {"b": {"c": []}}, "": "empty key"},
        }
        driver.commit(domain, [Change("insert", "M", "j", 0, data, {})])
        stored = driver.fetch(domain, "M", "j").data
        assert stored == data
        assert type(stored["one"]) is int and type(stored["true"]) is bool and type(stored["float"]) is float
        assert type(stored["int"]) is int

    def test_returned_data_is_a_copy(self, driver, domain):
        driver.commit(domain, [Change("insert", "M", "c", 0, {"list": [1]}, {})])
        driver.fetch(domain, "M", "c").data["list"].append(2)
        assert driver.fetch(domain, "M", "c").data == {"list": [1]}

    def test_unencodable_strings_in_records_are_refused(self, driver, domain):
        driver.commit(domain, [Change("insert", "M", "kept", 0, {"text": "before"}, {"tag": "t"})])
        bad_data: list[dict[str, Any]] = [{"text": text} for text in UNENCODABLE] + [
            {"nested": {"list": ["fine", {"deep": [UNENCODABLE[0]]}]}},
            {UNENCODABLE[1]: "a key"},
            {"deep": [{"k": {UNENCODABLE[2]: 1}}]},
        ]
        for data in bad_data:
            for change in (Change("insert", "M", "new", 0, data, {}), Change("update", "M", "kept", 1, data, {})):
                with pytest.raises(TypeError):
                    # A valid change beside it is not written either.
                    driver.commit(domain, [Change("insert", "M", "beside", 0, {"ok": 1}, {}), change])
        for text in UNENCODABLE:
            with pytest.raises(TypeError):
                driver.commit(domain, [Change("insert", "M", "ix", 0, {}, {"tag": text})])
            with pytest.raises(TypeError):
                driver.commit(domain, [Change("update", "M", "kept", 1, {"text": "after"}, {"tag": text})])
        # Nothing was stored, and every read still works.
        assert driver.fetch(domain, "M", "kept") == StoredRecord("M", "kept", 1, {"text": "before"})
        assert [r.id for r in driver.select(domain, "M")] == ["kept"]
        assert [r.id for r in driver.select(domain, "M", {"tag": "t"})] == ["kept"]
        for id in ("new", "beside", "ix"):
            assert driver.fetch(domain, "M", id) is None
        driver.commit(domain, [Change("update", "M", "kept", 1, {"text": "after \U0001f600"}, {"tag": "t"})])
        assert driver.fetch(domain, "M", "kept").data == {"text": "after \U0001f600"}

    def test_record_ids_follow_one_rule(self, driver, domain):
        longest = "x" * MAX_ID_LENGTH
        driver.commit(domain, [Change("insert", "M", longest, 0, {"n": 1}, {}), Change("insert", "M", "é🙂", 0, {}, {})])
        assert driver.fetch(domain, "M", longest) == StoredRecord("M", longest, 1, {"n": 1})
        assert driver.fetch(domain, "M", "é🙂").vsn == 1
        for bad in BAD_IDS:
            assert driver.fetch(domain, "M", bad) is None
            for change in (Change("insert", "M", bad, 0, {}, {}), Change("update", "M", bad, 1, {}, {}),
                           Change("delete", "M", bad, 1)):
                with pytest.raises(TypeError):
                    driver.commit(domain, [Change("insert", "M", "beside", 0, {}, {}), change])
        assert driver.fetch(domain, "M", "beside") is None
        assert sorted(r.id for r in driver.select(domain, "M")) == sorted([longest, "é🙂"])

    def test_concurrent_writers_never_both_win(self, driver, domain):
        driver.commit(domain, [Change("insert", "M", "hot", 0, {"n": 0}, {})])
        results = run_together(THREADS, lambda i: driver.commit(domain, [Change("update", "M", "hot", 1, {"n": i}, {})]))
        wins = [r for r in results if r is None]
        assert len(wins) == 1, results
        assert all(isinstance(r, VersionConflict) for r in results if r is not None), results
        assert driver.fetch(domain, "M", "hot").vsn == 2

    def test_concurrent_inserts_of_one_id_never_both_win(self, driver, domain):
        results = run_together(THREADS, lambda i: driver.commit(domain, [Change("insert", "M", "natural", 0, {"n": i}, {})]))
        assert sum(r is None for r in results) == 1, results
        assert all(isinstance(r, VersionConflict) for r in results if r is not None), results


    @requires("persistent")
    def test_persistent_records_survive_reopen(self, driver, domain, reopen):
        driver.commit(domain, [Change("insert", "M", "p", 0, {"x": 1}, {"k": 1})])
        reopened = reopen()
        try:
            assert reopened.fetch(domain, "M", "p") == StoredRecord("M", "p", 1, {"x": 1})
            assert [r.id for r in reopened.select(domain, "M", {"k": 1})] == ["p"]
        finally:
            reopened.close()
