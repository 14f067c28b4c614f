"""The unit-of-work part of the conformance suite: models, versions, validation and model evolution.

Everything here goes through :class:`kernel.core.store.UnitOfWork` on the driver
under test, as a plugin's ``with storage() as db`` does.
"""

from __future__ import annotations

from typing import Any

import pytest

from kernel.core.driver import MAX_ID_LENGTH, StoredRecord
from kernel.core.errors import RecordNotFound, ValidationError, VersionConflict
from kernel.core.paging import paged
from kernel.core.store import Errors, Models, UnitOfWork
from kernel.testing.suite.base import BAD_IDS, UNENCODABLE, SuiteBase


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


class _Unpaged:
    """Passes every call to a driver, but declares no capability: the kernel pages its whole answers itself."""

    capabilities: frozenset[str] = frozenset()

    def __init__(self, driver):
        self._driver = driver

    def select(self, domain, model, where=None):
        return self._driver.select(domain, model, where)

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


class CardV1:
    """Version 1 of an evolving model: a title and a priority."""

    __model__ = "SuiteCard"

    @classmethod
    def initialize(cls, record):
        record.merge(title="", priority=0)


class CardV2:
    """Version 2 of the same model (same ``__model__``): ``priority`` dropped, ``tags`` added with a default."""

    __model__ = "SuiteCard"

    @classmethod
    def initialize(cls, record):
        record.merge(title="", tags=["new"])


class Loose:
    """A model without ``initialize``: it declares no fields and keeps whatever it stores."""

    __model__ = "SuiteLoose"


class UnitOfWorkSuite(SuiteBase):
    """Records through the unit of work: atomic commits, validation, conflicts, record ids, evolving models."""

    @pytest.fixture
    def models(self) -> Models:
        """The suite's models."""
        return Models([Note])

    def uow(self, driver, domain, models) -> UnitOfWork:
        """A unit of work on ``driver`` in ``domain``."""
        return UnitOfWork(driver, domain, models)

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

    # -- model evolution: one stored record, read by the next version of its model

    def _store_card_v1(self, driver, domain) -> None:
        with self.uow(driver, domain, Models([CardV1])) as db:
            db.insert(CardV1, id="card", title="first", priority=3)
        assert driver.fetch(domain, "SuiteCard", "card") == StoredRecord("SuiteCard", "card", 1,
                                                                         {"title": "first", "priority": 3})

    def test_model_evolution_reads_an_added_field_as_its_default(self, driver, domain):
        self._store_card_v1(driver, domain)
        with self.uow(driver, domain, Models([CardV2])) as db:
            card = db.fetch(CardV2, "card")
            assert (card._vsn, card.title, card.tags) == (1, "first", ["new"])
            assert card.priority == 3  # dropped by v2, still read until the record is written
        # Reading wrote nothing.
        assert driver.fetch(domain, "SuiteCard", "card") == StoredRecord("SuiteCard", "card", 1,
                                                                         {"title": "first", "priority": 3})

    def test_model_evolution_drops_a_removed_field_at_the_next_write(self, driver, domain):
        self._store_card_v1(driver, domain)
        with self.uow(driver, domain, Models([CardV2])) as db:
            card = db.fetch(CardV2, "card")
            card.title = "second"
        assert card._vsn == 2
        assert driver.fetch(domain, "SuiteCard", "card") == StoredRecord("SuiteCard", "card", 2,
                                                                         {"title": "second", "tags": ["new"]})
        with self.uow(driver, domain, Models([CardV2])) as db:
            card = db.fetch(CardV2, "card", 2)
            assert card.fields() == {"title": "second", "tags": ["new"]}
            with pytest.raises(AttributeError):
                card.priority  # noqa: B018 - reading is the point

    def test_model_evolution_an_update_without_changes_writes_the_new_shape(self, driver, domain):
        self._store_card_v1(driver, domain)
        with self.uow(driver, domain, Models([CardV2])) as db:
            assert db.update(CardV2, "card", 1)._vsn == 1
        assert driver.fetch(domain, "SuiteCard", "card") == StoredRecord("SuiteCard", "card", 2,
                                                                         {"title": "first", "tags": ["new"]})

    def test_model_evolution_refuses_a_field_the_model_does_not_declare(self, driver, domain):
        self._store_card_v1(driver, domain)
        with self.uow(driver, domain, Models([CardV2])) as db:
            card = db.fetch(CardV2, "card")
            with pytest.raises(AttributeError):
                card.colour = "red"
            with pytest.raises(AttributeError):
                db.insert(CardV2, id="other", title="x", colour="red")
            with pytest.raises(AttributeError):
                db.update(CardV2, "card", 1, colour="red")
        assert driver.fetch(domain, "SuiteCard", "card").vsn == 1
        assert driver.fetch(domain, "SuiteCard", "other") is None
        with self.uow(driver, domain, Models([CardV1])) as db:
            with pytest.raises(AttributeError):
                db.insert(CardV1, id="other", title="x", tags=[])  # v1 never declared tags

    def test_a_model_without_initialize_keeps_what_it_stores(self, driver, domain):
        with self.uow(driver, domain, Models([Loose])) as db:
            db.insert(Loose, id="loose", a=1, b={"x": [1]})
        with self.uow(driver, domain, Models([Loose])) as db:
            record = db.fetch(Loose, "loose")
            assert record.fields() == {"a": 1, "b": {"x": [1]}}
            record.c = "a field never seen before"
        assert record._vsn == 2
        assert driver.fetch(domain, "SuiteLoose", "loose") == StoredRecord(
            "SuiteLoose", "loose", 2, {"a": 1, "b": {"x": [1]}, "c": "a field never seen before"})

    # -- values: what select gives, as plain dictionaries

    def test_values_are_what_select_gives_as_plain_dictionaries(self, driver, domain, models):
        with self.uow(driver, domain, models) as db:
            for i, text in enumerate(("first", "second", "third")):
                db.insert(Note, id=f"n{i}", text=text, done=i == 1, tag="t")
        with self.uow(driver, domain, models) as db:
            values = db.values(Note)
            records = db.select(Note)
            assert values == [{"id": r._id, "vsn": r._vsn, **r.fields()} for r in records]
            assert [v["id"] for v in values] == ["n0", "n1", "n2"]  # creation order
            assert values[0] == {"id": "n0", "vsn": 1, "text": "first", "done": False, "tag": "t", "extra": None}
            assert [v["id"] for v in db.values(Note, {"done": True})] == ["n1"]
            assert db.values(Note, {"tag": "none of them"}) == []
            with pytest.raises(ValueError):
                db.values(Note, {"text": "first"})  # not an indexed field, as for select

    def test_values_give_an_added_field_its_default_and_leave_a_removed_one_out(self, driver, domain):
        self._store_card_v1(driver, domain)
        with self.uow(driver, domain, Models([CardV2])) as db:
            assert db.values(CardV2) == [{"id": "card", "vsn": 1, "title": "first", "tags": ["new"]}]
        with self.uow(driver, domain, Models([Loose])) as db:
            db.insert(Loose, id="loose", a=1, b={"x": [1]})
        with self.uow(driver, domain, Models([Loose])) as db:
            assert db.values(Loose) == [{"id": "loose", "vsn": 1, "a": 1, "b": {"x": [1]}}]

    def test_values_show_what_the_unit_of_work_holds_and_are_never_saved(self, driver, domain, models):
        with self.uow(driver, domain, models) as db:
            db.insert(Note, id="n", text="stored", tag="t")
        with self.uow(driver, domain, models) as db:
            record = db.fetch(Note, "n")
            record.text = "changed here"
            [value] = db.values(Note)
            assert (value["text"], value["vsn"]) == ("changed here", 1)  # as held, at the version read
            value["text"] = "changed in the snapshot"
            value["done"] = True
            assert record.text == "changed here" and record.done is False
        with self.uow(driver, domain, models) as db:
            [value] = db.values(Note)
            assert (value["text"], value["done"], value["vsn"]) == ("changed here", False, 2)
            value["text"] = "only a snapshot"
        assert driver.fetch(domain, "SuiteNote", "n").vsn == 2  # reading values wrote nothing

    # -- pages of a select: after and limit

    def _store_notes(self, driver, domain, models) -> list[str]:
        ids = [f"n{i}" for i in range(7)]
        with self.uow(driver, domain, models) as db:
            for n, id in enumerate(ids):
                db.insert(Note, id=id, text=f"note {n}", done=n % 3 == 0)
        return ids

    def test_select_and_values_read_pages_of_the_creation_order(self, driver, domain, models):
        ids = self._store_notes(driver, domain, models)
        # The driver's own pages, and the kernel's of its whole answer (a driver without paging, wrapped as it opens).
        for source in (driver, paged(_Unpaged(driver))):
            with self.uow(source, domain, models) as db:
                assert [v["id"] for v in db.values(Note, limit=3)] == ids[:3]
                assert [v["id"] for v in db.values(Note, after="n2", limit=3)] == ids[3:6]
                assert [v["id"] for v in db.values(Note, after="n5")] == ["n6"]
                assert db.values(Note, after="n6", limit=3) == []
                assert db.values(Note, after="n1") == db.values(Note)[2:]
                assert [r._id for r in db.select(Note, after="n3", limit=2)] == ["n4", "n5"]
                done = [v["id"] for v in db.values(Note, {"done": True})]
                assert done == ["n0", "n3", "n6"]
                assert [v["id"] for v in db.values(Note, {"done": True}, after="n1")] == ["n3", "n6"]  # n1 is not done
                assert [v["id"] for v in db.values(Note, {"done": True}, after="n3", limit=1)] == ["n6"]
                assert [r._id for r in db.select(Note, {"done": False}, limit=2)] == ["n1", "n2"]

    def test_records_inserted_by_one_unit_of_work_keep_the_order_of_the_inserts(self, driver, domain, models):
        with self.uow(driver, domain, models) as db:
            for id in ("z", "b", "m", "a"):
                db.insert(Note, id=id, text=id)
        with self.uow(driver, domain, models) as db:
            assert [v["id"] for v in db.values(Note)] == ["z", "b", "m", "a"]
            assert [v["id"] for v in db.values(Note, after="b", limit=2)] == ["m", "a"]

    def test_a_page_shows_what_the_unit_of_work_holds(self, driver, domain, models):
        self._store_notes(driver, domain, models)
        with self.uow(driver, domain, models) as db:
            record = db.fetch(Note, "n4")
            record.text = "held"
            assert [v["text"] for v in db.values(Note, after="n3", limit=2)] == ["held", "note 5"]
            assert db.select(Note, after="n3", limit=1) == [record]

    def test_a_page_after_a_record_the_domain_does_not_hold_is_record_not_found(self, driver, domain, other_domain,
                                                                                  models):
        self._store_notes(driver, domain, models)
        with self.uow(driver, other_domain, models) as db:
            db.insert(Note, id="elsewhere", text="another tenant's")
        with self.uow(driver, domain, models) as db:
            db.delete(db.fetch(Note, "n2"))
        for source in (driver, paged(_Unpaged(driver))):
            with self.uow(source, domain, models) as db:
                for after in ("n2", "ghost", "elsewhere", "", "x" * (MAX_ID_LENGTH + 1)):
                    with pytest.raises(RecordNotFound):
                        db.values(Note, after=after)
                    with pytest.raises(RecordNotFound):
                        db.select(Note, {"done": True}, after=after, limit=2)

    def test_a_page_refuses_a_limit_that_is_not_a_positive_int_and_an_after_that_is_not_a_string(self, driver, domain,
                                                                                                  models):
        self._store_notes(driver, domain, models)
        with self.uow(driver, domain, models) as db:
            bad_limits: tuple[Any, ...] = (0, -1, True, 2.0, "2")  # what the signature refuses, on purpose
            for limit in bad_limits:
                with pytest.raises(ValueError):
                    db.values(Note, limit=limit)
            bad_afters: tuple[Any, ...] = (1, ["n1"], b"n1")
            for after in bad_afters:
                with pytest.raises(TypeError):
                    db.select(Note, after=after)
