"""The tenants part of the conformance suite: whole tenants listed, counted, streamed, loaded and deleted.

A driver that declares ``tenants`` (:class:`kernel.core.driver.TenantStore`)
lists every domain holding records, history or live state; counts what one
holds; streams a domain's records with their ids, versions, history and
removal numbers; loads such a stream into a domain keeping all of them, all or
nothing (refusing a domain that holds data unless told to replace it); and
deletes a domain, leaving every other one untouched. Every test is skipped for
a driver without the capability.
"""

from __future__ import annotations

import pytest

from kernel.core.driver import PROBE_DOMAIN, Change, RecordVersion, TenantRecord
from kernel.core.errors import VersionConflict
from kernel.testing.suite.base import SuiteBase, requires

#: A model name, and a second one, as the drivers see them.
M, N = "SuiteTenantTodo", "SuiteTenantNote"

#: Text no single-byte encoding holds: every backend gives it back as it was given.
UNICODE = "caf\u00e9 \u2603 \U0001F600 \u05e9\u05dc\u05d5\u05dd \u4e2d\u6587"


def _insert(id: str, data: dict, history: int = 0, model: str = M, by: str | None = "alice") -> Change:
    return Change("insert", model, id, 0, data, {"done": data.get("done", False)}, history, by if history else None)


def _update(id: str, vsn: int, data: dict, history: int = 0, model: str = M) -> Change:
    return Change("update", model, id, vsn, data, {"done": data.get("done", False)}, history,
                  "bob" if history else None)


def _delete(id: str, vsn: int, history: int = 0, keep_removed: int = 100, model: str = M) -> Change:
    return Change("delete", model, id, vsn, history=history, by="carol" if history else None,
                  keep_removed=keep_removed)


def _fill(driver, domain: str) -> None:
    """A tenant with live records (one updated twice), a removed record whose history is kept, a second model,
    unicode text and a live session."""
    driver.commit(domain, [_insert("a", {"text": "first", "done": False}, 5),
                           _insert("b", {"text": UNICODE, "done": True}, 5),
                           _insert("gone", {"text": "bye", "done": False}, 5)])
    driver.commit(domain, [_update("a", 1, {"text": "second", "done": False}, 5)])
    driver.commit(domain, [_update("a", 2, {"text": "third", "done": True}, 5)])
    driver.commit(domain, [_delete("gone", 1, 5)])
    driver.commit(domain, [_insert("c", {"text": "no history", "done": False})])
    driver.commit(domain, [_insert("n1", {"text": "a note"}, model=N)])
    driver.set(domain, "session:s1", {"user": "alice"}, 60)


def _stream(driver, domain: str, models=(M, N)) -> list[TenantRecord]:
    return [record for model in models for record in driver.tenant_records(domain, model)]


def _indexed(records, index=lambda record: {"done": record.data.get("done", False)}):
    """The records as import gives them to a driver: with their index entries."""
    for record in records:
        yield TenantRecord(record.model, record.id, record.vsn, record.data, record.history, record.removal,
                           None if record.data is None else index(record))


class TenantsSuite(SuiteBase):
    """Whole tenants (``tenants`` capability): list, count, stream, load (all or nothing), delete."""

    @requires("tenants")
    def test_tenants_lists_domains_with_records_history_or_state_never_the_probe(self, driver, domain,
                                                                                 other_domain):
        third = "f" + domain
        driver.commit(domain, [_insert("a", {"text": "x"})])
        driver.set(other_domain, "ban:203.0.113.7", 1, 60)
        driver.commit(third, [_insert("h", {"text": "x"}, 3)])
        driver.commit(third, [_delete("h", 1, 3)])
        driver.ping()
        found = driver.tenants()
        assert {domain, other_domain, third} <= set(found)
        assert PROBE_DOMAIN not in found
        assert list(found) == sorted(found)
        assert found[domain].records == {M: 1} and found[domain].history == {}
        assert found[other_domain].state == {"ban": 1} and not found[other_domain].holds_data
        assert found[third].history == {M: 2} and found[third].records == {}
        assert found[domain] == driver.tenant_counts(domain)

    @requires("tenants")
    def test_tenant_counts_records_and_history_per_model_and_live_state_per_kind(self, driver, domain, other_domain,
                                                                                 clock):
        _fill(driver, domain)
        driver.set(domain, "session:s2", 1, 10)
        driver.window_add(domain, "logins:alice", "x", 1, 60)
        driver.commit(other_domain, [_insert("z", {"text": "other"}, 5)])
        counts = driver.tenant_counts(domain)
        assert counts.records == {M: 3, N: 1}
        assert counts.history == {M: 6}  # a: 3 versions, b: 1, gone: insert and deletion
        assert counts.state == {"session": 2, "logins": 1}
        assert counts.holds_data and not counts.empty
        clock.advance(11)
        assert driver.tenant_counts(domain).state == {"session": 1, "logins": 1}
        assert driver.tenant_counts("nothing." + domain).empty

    @requires("tenants")
    def test_tenant_records_stream_ids_versions_data_history_and_removed_histories(self, driver, domain):
        _fill(driver, domain)
        records = {r.id: r for r in _stream(driver, domain)}
        assert [r.id for r in driver.tenant_records(domain, M)] == ["a", "b", "c", "gone"]
        a, b, c, gone = records["a"], records["b"], records["c"], records["gone"]
        assert (a.vsn, a.data, a.removal) == (3, {"text": "third", "done": True}, None)
        assert [(v.vsn, v.by, (v.data or {}).get("text")) for v in a.history] == [
            (1, "alice", "first"), (2, "bob", "second"), (3, "bob", "third")]
        assert b.data == {"text": UNICODE, "done": True} and b.history[0].data == b.data
        assert c.history == () and c.vsn == 1
        assert (gone.vsn, gone.data, gone.removal) == (0, None, 1)
        assert [(v.vsn, v.by, v.data) for v in gone.history][-1] == (2, "carol", None)
        assert [r.id for r in driver.tenant_records(domain, N)] == ["n1"]
        assert list(driver.tenant_records(domain, "NoSuchModel")) == []

    @requires("tenants")
    def test_ids_holding_only_history_come_after_the_live_records_in_id_order(self, driver, domain):
        ids = ["zz", "ab", "\u00e9t\u00e9", "Ab", "m"]
        driver.commit(domain, [_insert(id, {"text": id}, 3) for id in ids])
        driver.commit(domain, [_delete(id, 1, 3) for id in ids if id != "m"])
        streamed = list(driver.tenant_records(domain, M))
        assert [(r.id, r.vsn) for r in streamed] == [("m", 1), ("Ab", 0), ("ab", 0), ("zz", 0), ("\u00e9t\u00e9", 0)]
        assert [r.removal for r in streamed] == [None, 4, 2, 1, 3]

    @requires("tenants")
    def test_load_keeps_ids_versions_history_order_and_index(self, driver, domain, other_domain):
        _fill(driver, domain)
        source = _stream(driver, domain)
        assert driver.load_tenant(other_domain, _indexed(source)) == len(source)
        assert _stream(driver, other_domain) == source
        assert [r.id for r in driver.select(other_domain, M)] == ["a", "b", "c"]
        assert [r.id for r in driver.select(other_domain, M, {"done": True})] == ["a", "b"]
        assert driver.history(other_domain, M, "gone") == driver.history(domain, M, "gone")
        # The loaded records go on as if they had been written there: versions, creation order, removals.
        driver.commit(other_domain, [_update("a", 3, {"text": "fourth", "done": False}, 5),
                                     _insert("d", {"text": "new"})])
        assert driver.fetch(other_domain, M, "a").vsn == 4
        assert [r.id for r in driver.select(other_domain, M)] == ["a", "b", "c", "d"]
        assert [v.vsn for v in driver.history(other_domain, M, "a")] == [1, 2, 3, 4]
        with pytest.raises(VersionConflict):
            driver.commit(other_domain, [_insert("b", {"text": "again"})])

    @requires("tenants")
    def test_loaded_removal_numbers_keep_counting(self, driver, domain, other_domain):
        driver.commit(domain, [_insert(id, {"text": id}, 3) for id in ("r1", "r2", "r3")])
        driver.commit(domain, [_delete("r1", 1, 3, keep_removed=2)])
        driver.commit(domain, [_delete("r2", 1, 3, keep_removed=2)])
        driver.load_tenant(other_domain, _indexed(_stream(driver, domain, (M,))))
        driver.commit(other_domain, [_delete("r3", 1, 3, keep_removed=2)])
        assert driver.history(other_domain, M, "r1") == []  # the oldest removal goes first
        assert [v.vsn for v in driver.history(other_domain, M, "r2")] == [1, 2]
        assert [v.vsn for v in driver.history(other_domain, M, "r3")] == [1, 2]

    @requires("tenants")
    def test_load_refuses_a_domain_with_data_unless_replacing_and_replace_drops_what_it_held(self, driver, domain,
                                                                                           other_domain):
        _fill(driver, domain)
        driver.commit(other_domain, [_insert("old", {"text": "old"}, 5), _insert("a", {"text": "mine"})])
        driver.set(other_domain, "session:old", 1, 60)
        with pytest.raises(VersionConflict):
            driver.load_tenant(other_domain, _indexed(_stream(driver, domain)))
        assert driver.fetch(other_domain, M, "a").data == {"text": "mine"}
        assert driver.load_tenant(other_domain, _indexed(_stream(driver, domain)), replace=True) == 5
        assert driver.fetch(other_domain, M, "old") is None and driver.history(other_domain, M, "old") == []
        assert driver.fetch(other_domain, M, "a").vsn == 3
        assert driver.get(other_domain, "session:old") is None
        assert _stream(driver, other_domain) == _stream(driver, domain)

    @requires("tenants")
    def test_a_state_only_domain_takes_a_load_and_keeps_its_state(self, driver, domain, other_domain):
        _fill(driver, domain)
        driver.set(other_domain, "ban:203.0.113.7", 1, 60)
        driver.load_tenant(other_domain, _indexed(_stream(driver, domain)))
        assert driver.get(other_domain, "ban:203.0.113.7") == 1

    @requires("tenants")
    @pytest.mark.parametrize("replace", [False, True])
    def test_a_load_that_fails_halfway_writes_nothing(self, driver, domain, other_domain, replace):
        _fill(driver, domain)
        source = _stream(driver, domain)
        if replace:
            driver.commit(other_domain, [_insert("kept", {"text": "before"}, 5)])
        before = _stream(driver, other_domain)

        def broken():
            yield from list(_indexed(source))[:3]
            raise ValueError("line 5: the file ends here")

        with pytest.raises(ValueError, match="line 5"):
            driver.load_tenant(other_domain, broken(), replace=replace)
        assert _stream(driver, other_domain) == before
        assert driver.tenant_counts(other_domain).holds_data is replace
        # Nothing was left behind to get in the way of the next load either.
        driver.load_tenant(other_domain, _indexed(source), replace=True)
        assert _stream(driver, other_domain) == source

    @requires("tenants")
    def test_load_refuses_bad_and_duplicate_records_before_writing(self, driver, domain):
        good = TenantRecord(M, "a", 1, {"text": "ok"}, (), None, {})
        for bad, error in [(TenantRecord(M, "", 1, {"text": "x"}), TypeError),
                           (TenantRecord(M, "b", 0, {"text": "x"}), TypeError),
                           (TenantRecord(M, "b", 2, None), TypeError),
                           (TenantRecord(M, "b", 1, {"text": "\ud800"}), TypeError),
                           (TenantRecord(M, "b", 1, {"x": 1}, (RecordVersion(1, float("nan"), None, {}),)), TypeError),
                           (TenantRecord(M, "a", 2, {"text": "twice"}), ValueError)]:
            with pytest.raises(error):
                driver.load_tenant(domain, [good, bad])
            assert driver.tenant_counts(domain).empty

    @requires("tenants")
    def test_many_records_stream_and_load_in_order(self, driver, domain, other_domain):
        ids = [f"t{n:05d}" for n in range(1234)]
        for start in range(0, len(ids), 300):
            driver.commit(domain, [_insert(id, {"text": id, "done": n % 2 == 0}, 2)
                                   for n, id in enumerate(ids[start:start + 300], start)])
        source = list(driver.tenant_records(domain, M))
        assert [r.id for r in source] == ids and all(len(r.history) == 1 for r in source)
        assert driver.load_tenant(other_domain, _indexed(source)) == len(ids)
        assert [r.id for r in driver.select(other_domain, M, after=ids[599], limit=2)] == ids[600:602]
        assert list(driver.tenant_records(other_domain, M)) == source

    @requires("tenants")
    def test_delete_tenant_removes_everything_of_the_domain_and_nothing_else(self, driver, domain, other_domain):
        _fill(driver, domain)
        _fill(driver, other_domain)
        driver.window_add(domain, "logins:alice", "x", 1, 60)
        other_before = _stream(driver, other_domain)
        assert driver.delete_tenant(domain) is True
        assert driver.tenant_counts(domain).empty
        assert domain not in driver.tenants()
        assert _stream(driver, domain) == []
        assert driver.fetch(domain, M, "a") is None and driver.history(domain, M, "gone") == []
        assert driver.get(domain, "session:s1") is None and driver.window_entries(domain, "logins:alice") == []
        assert driver.delete_tenant(domain) is False
        assert _stream(driver, other_domain) == other_before
        assert driver.get(other_domain, "session:s1") == {"user": "alice"}
        # The domain starts afresh: a removal there counts from one again, nothing of its past comes back.
        driver.commit(domain, [_insert("a", {"text": "new"}, 5)])
        assert [v.vsn for v in driver.history(domain, M, "a")] == [1]
