"""The storage-driver conformance suite (DESIGN.md, "Storage semantics").

Capabilities decide what runs; optional ones default to off:

``persistent``  data survives closing and reopening the driver; the subclass
                provides a ``reopen`` fixture: a callable returning a new
                driver on the same backend.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from kernel.driver import MAX_ID_LENGTH, Change, Driver, StoredRecord, WindowEntry
from kernel.errors import RecordNotFound, ValidationError, VersionConflict
from kernel.store import Errors, Models, UnitOfWork
from kernel.testing.clock import FakeClock

THREADS = 16

#: Strings no driver may store: lone surrogates, which UTF-8 cannot encode.
UNENCODABLE = ["\ud800", "caf\u00e9 \udfff", "\udc80 at the start", "a pair \ud83d\ude00 is two lone surrogates in Python"]

#: Strings that break the record-id rule (kernel.driver.is_record_id).
BAD_IDS = ["", "a\u0000b", "x" * (MAX_ID_LENGTH + 1), "a\ud800"]


class _CountingDriver:
    """Passes every call to a driver and counts the ``fetch`` calls that reached it."""

    def __init__(self, driver):
        self._driver = driver
        self.fetched: list[tuple] = []

    def fetch(self, *args):
        self.fetched.append(args)
        return self._driver.fetch(*args)

    def __getattr__(self, name):
        return getattr(self._driver, name)


class Note:
    """A model for the suite: text, a done flag, and an index on both."""

    __model__ = "SuiteNote"

    @classmethod
    def initialize(cls, record):
        record.merge(text="", done=False, tag=None, extra=None)

    @classmethod
    def validate(cls, record):
        errors = Errors()
        if not isinstance(record.text, str):
            errors.text.bad_type = type(record.text).__name__
        elif not record.text.strip():
            errors.text.invalid = record.text
        return errors

    @classmethod
    def index(cls, record):
        return {"done": record.done, "tag": record.tag}

    @classmethod
    def to_dict(cls, record):
        return {"id": record._id, "vsn": record._vsn, "text": record.text, "done": record.done}


def _run_together(n: int, fn: Callable[[int], object]) -> list:
    """Run ``fn(i)`` in ``n`` threads released at once; return results or raised exceptions."""
    barrier = threading.Barrier(n)

    def call(i: int):
        barrier.wait()
        try:
            return fn(i)
        except Exception as exc:  # collected, asserted by the caller
            return exc

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(call, range(n)))


def _race_delete_against_guarded_adds(driver, domain: str, guard: str, adders: int, delay: float) -> list:
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

    return _run_together(adders + 1, act)


class DriverSuite:
    """Every behaviour a storage driver must have. Subclass and provide ``driver``."""

    # -- fixtures ---------------------------------------------------------

    @pytest.fixture
    def clock(self) -> FakeClock:
        """The clock the driver must be opened with."""
        return FakeClock()

    @pytest.fixture
    def capabilities(self) -> set[str]:
        """Optional capabilities of the driver under test (none by default)."""
        return set()

    @pytest.fixture
    def driver(self, clock) -> Driver:  # pragma: no cover - always overridden
        """A ready driver opened with ``clock``: override in the subclass."""
        raise NotImplementedError("a DriverSuite subclass provides the `driver` fixture")

    @pytest.fixture
    def domain(self) -> str:
        """A fresh domain, so that suites can share one backend."""
        return f"d{uuid.uuid4().hex[:12]}.test"

    @pytest.fixture
    def other_domain(self) -> str:
        """A second fresh domain."""
        return f"e{uuid.uuid4().hex[:12]}.test"

    @pytest.fixture
    def models(self) -> Models:
        """The suite's models."""
        return Models([Note])

    def uow(self, driver, domain, models) -> UnitOfWork:
        """A unit of work on ``driver`` in ``domain``."""
        return UnitOfWork(driver, domain, models)

    # -- records: the driver API -------------------------------------------

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
        bad_data = [{"text": text} for text in UNENCODABLE] + [
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
        results = _run_together(THREADS, lambda i: driver.commit(domain, [Change("update", "M", "hot", 1, {"n": i}, {})]))
        wins = [r for r in results if r is None]
        assert len(wins) == 1, results
        assert all(isinstance(r, VersionConflict) for r in results if r is not None), results
        assert driver.fetch(domain, "M", "hot").vsn == 2

    def test_concurrent_inserts_of_one_id_never_both_win(self, driver, domain):
        results = _run_together(THREADS, lambda i: driver.commit(domain, [Change("insert", "M", "natural", 0, {"n": i}, {})]))
        assert sum(r is None for r in results) == 1, results
        assert all(isinstance(r, VersionConflict) for r in results if r is not None), results

    def test_persistent_records_survive_reopen(self, driver, domain, capabilities, request):
        if "persistent" not in capabilities:
            pytest.skip("driver is not persistent")
        driver.commit(domain, [Change("insert", "M", "p", 0, {"x": 1}, {"k": 1})])
        reopened = request.getfixturevalue("reopen")()
        try:
            assert reopened.fetch(domain, "M", "p") == StoredRecord("M", "p", 1, {"x": 1})
            assert [r.id for r in reopened.select(domain, "M", {"k": 1})] == ["p"]
        finally:
            reopened.close()

    # -- records: through the unit of work --------------------------------

    def test_unit_of_work_round_trip(self, driver, domain, models):
        with self.uow(driver, domain, models) as db:
            record = db.insert(Note, text="Play with Fanery")
            assert record._vsn == 1
        with self.uow(driver, domain, models) as db:
            again = db.fetch(Note, record._id, 1)
            again.done = True
        assert again._vsn == 2
        with self.uow(driver, domain, models) as db:
            assert [Note.to_dict(r) for r in db.select(Note, where={"done": True})] == [
                {"id": record._id, "vsn": 2, "text": "Play with Fanery", "done": True}]

    def test_unit_of_work_is_atomic_on_exception(self, driver, domain, models):
        with pytest.raises(RuntimeError):
            with self.uow(driver, domain, models) as db:
                db.insert(Note, id="kept-out", text="x")
                raise RuntimeError("boom")
        assert driver.fetch(domain, "SuiteNote", "kept-out") is None

    def test_unit_of_work_validation_blocks_everything(self, driver, domain, models):
        with pytest.raises(ValidationError) as info:
            with self.uow(driver, domain, models) as db:
                db.insert(Note, id="good", text="fine")
                db.insert(Note, id="bad", text="   ")
        assert info.value.fields == {"text": {"invalid": "   "}}
        assert driver.fetch(domain, "SuiteNote", "good") is None

    def test_unit_of_work_errors(self, driver, domain, models):
        with self.uow(driver, domain, models) as db:
            record = db.insert(Note, text="v1")
        with pytest.raises(RecordNotFound):
            with self.uow(driver, domain, models) as db:
                db.fetch(Note, "missing")
        with pytest.raises(VersionConflict):
            with self.uow(driver, domain, models) as db:
                db.fetch(Note, record._id, 2)

    def test_unit_of_work_conflict_between_readers(self, driver, domain, models):
        with self.uow(driver, domain, models) as db:
            record = db.insert(Note, text="v1")
        first, second = self.uow(driver, domain, models), self.uow(driver, domain, models)
        a = first.fetch(Note, record._id)
        b = second.fetch(Note, record._id)
        a.text = "from a"
        b.text = "from b"
        first.commit()
        with pytest.raises(VersionConflict):
            second.commit()
        assert driver.fetch(domain, "SuiteNote", record._id).data["text"] == "from a"

    def test_unit_of_work_rejects_non_json(self, driver, domain, models):
        with pytest.raises(TypeError):
            with self.uow(driver, domain, models) as db:
                db.insert(Note, id="nj", text="x", extra={1, 2})
        assert driver.fetch(domain, "SuiteNote", "nj") is None

    def test_unit_of_work_refuses_unencodable_strings(self, driver, domain, models):
        with self.uow(driver, domain, models) as db:
            kept = db.insert(Note, id="kept", text="fine")
        for text in UNENCODABLE:
            with pytest.raises(TypeError):
                with self.uow(driver, domain, models) as db:
                    db.insert(Note, id="new", text=text)
            with pytest.raises(TypeError):
                with self.uow(driver, domain, models) as db:
                    db.update(Note, kept._id, 1, text="ok", tag=text)  # an index value
            with pytest.raises(TypeError):
                with self.uow(driver, domain, models) as db:
                    db.insert(Note, id=f"n{len(text)}", text="x", extra={"k": [text]})
        assert driver.fetch(domain, "SuiteNote", "new") is None
        with self.uow(driver, domain, models) as db:
            assert [Note.to_dict(r) for r in db.select(Note)] == [{"id": "kept", "vsn": 1, "text": "fine", "done": False}]

    def test_unit_of_work_record_id_rule(self, driver, domain, models):
        counting = _CountingDriver(driver)
        with self.uow(counting, domain, models) as db:
            for bad in BAD_IDS:
                assert db.get(Note, bad) is None
                with pytest.raises(RecordNotFound):
                    db.fetch(Note, bad)
                with pytest.raises(RecordNotFound):
                    db.update(Note, bad, 1, text="x")
                with pytest.raises(RecordNotFound):
                    db.delete(Note, bad, 1)
                with pytest.raises(TypeError):
                    db.insert(Note, id=bad, text="x")
        assert counting.fetched == []  # found nothing without asking the driver
        assert driver.select(domain, "SuiteNote") == []
        with self.uow(driver, domain, models) as db:
            db.insert(Note, id="x" * MAX_ID_LENGTH, text="the longest id")
        with self.uow(driver, domain, models) as db:
            assert db.fetch(Note, "x" * MAX_ID_LENGTH).text == "the longest id"

    # -- short-lived state ------------------------------------------------

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

            _run_together(4, act)
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
            results = _race_delete_against_guarded_adds(driver, domain, f"session:{round_}", adders, 0.002 * (round_ % 4))
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
        results = _run_together(THREADS, lambda i: driver.add(domain, "nonce", i, 60))
        assert results.count(True) == 1, results
        assert results.count(False) == THREADS - 1, results

    def test_state_incr_under_threads(self, driver, domain):
        def bump(i):
            return [driver.incr(domain, "hits", 1, 60) for _ in range(10)]

        results = _run_together(THREADS, bump)
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
        results = _run_together(THREADS, lambda i: driver.window_add(domain, "w", f"m{i}", 1, 60))
        assert all(isinstance(r, list) for r in results), results
        assert len(driver.window_entries(domain, "w")) == THREADS
        assert max(len(r) for r in results) == THREADS
        assert all(isinstance(e, WindowEntry) for e in results[0])

    def test_unencodable_strings_in_state_are_refused(self, driver, domain):
        driver.set(domain, "k", "kept", 60)
        driver.window_add(domain, "w", "m", 1, 60)
        for text in UNENCODABLE:
            writes = [
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
        """Sustained load of short-lived keys and window members: what the backend holds stays near what is live."""
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
        assert 5 <= held <= 3 * per_round + 5, f"{held} state entries held after {rounds * per_round} writes"
        assert driver.get_many(domain, [f"live:{i}" for i in range(5)]) == list(range(5))

    def test_ping(self, driver):
        assert driver.ping() is None

    def test_ping_writes_nothing_a_tenant_sees(self, driver, domain):
        driver.set(domain, "k", 1, 60)
        before = driver.state_count()
        for _ in range(3):
            assert driver.ping() is None
        assert driver.state_count() == before
        assert driver.get(domain, "ping") is None
