"""How a model declares its history bounds, and the changes the unit of work makes of them."""

from __future__ import annotations

import pytest

from kernel import DEFAULT_HISTORY_KEEP_REMOVED, Change
from kernel.core.store import Models, UnitOfWork
from kernel.storage_mem import MemoryDriver
from kernel.testing import FakeClock


def _model(**attributes) -> type:
    return type("Note", (), {"initialize": classmethod(lambda cls, record: record.merge(text="")), **attributes})


def test_a_model_that_keeps_history_keeps_that_of_the_default_number_of_removed_records():
    assert Models([_model(history=True)]).named("Note").keep_removed == DEFAULT_HISTORY_KEEP_REMOVED == 100
    assert Models([_model(history=True, history_keep_removed=0)]).named("Note").keep_removed == 0
    assert Models([_model(history=True, history_keep_removed=5000)]).named("Note").keep_removed == 5000


@pytest.mark.parametrize("attributes, message", [
    ({"history_keep_removed": 3}, "without history = True"),
    ({"history": False, "history_keep_removed": 3}, "without history = True"),
    ({"history": True, "history_keep_removed": -1}, "number of removed records"),
    ({"history": True, "history_keep_removed": True}, "number of removed records"),
    ({"history": True, "history_keep_removed": 2.0}, "number of removed records"),
])
def test_a_bound_on_removed_records_is_a_number_of_them_on_a_model_that_keeps_history(attributes, message):
    with pytest.raises(TypeError, match=message):
        Models([_model(**attributes)])


def test_the_unit_of_work_names_the_models_bound_on_each_delete():
    driver = MemoryDriver(clock=FakeClock())
    models = Models([_model(history=True, history_limit=7, history_keep_removed=2)])
    note = models.named("Note").cls
    with UnitOfWork(driver, "d.test", models, author="ann") as db:
        db.insert(note, id="a", text="x")
    db = UnitOfWork(driver, "d.test", models, author="ann")
    db.delete(note, "a", 1)
    assert db.changes() == [Change("delete", "Note", "a", 1, history=7, by="ann", keep_removed=2)]


@pytest.mark.parametrize("keep_removed", [-1, True, 1.5, None])
def test_a_driver_refuses_a_bound_that_is_not_a_number_of_removals(keep_removed):
    driver = MemoryDriver(clock=FakeClock())
    driver.commit("d.test", [Change("insert", "Note", "a", 0, {}, {}, 5, "ann")])
    with pytest.raises(TypeError, match="keep_removed"):
        driver.commit("d.test", [Change("delete", "Note", "a", 1, history=5, by="ann", keep_removed=keep_removed)])
    assert driver.fetch("d.test", "Note", "a") is not None
