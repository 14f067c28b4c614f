"""A driver that cannot page is wrapped once, when the runtime opens it; the unit of work then always asks for a page."""

from __future__ import annotations

import types

import pytest

from kernel import Config, RecordNotFound, Runtime, hookimpl, storage
from kernel.core.driver import PAGED_SELECT, capabilities_of
from kernel.core.paging import Paged, paged
from kernel.core.plugins import get_plugin_manager
from kernel.core.runtime import PROCESS_LOCAL
from kernel.storage_mem import MemoryDriver
from kernel.testing import FakeClock


class UnpagedDriver(MemoryDriver):
    """A driver whose ``select`` knows no ``after`` or ``limit`` (they would be a TypeError), as an older one."""

    capabilities = frozenset({PROCESS_LOCAL})

    def __init__(self, clock):
        super().__init__(clock=clock)
        self.selects = 0

    def select(self, domain, model, where=None):  # type: ignore[override]  # on purpose: no paging keywords
        self.selects += 1
        return super().select(domain, model, where)


def _note_model() -> type:
    return type("Note", (), {
        "initialize": classmethod(lambda cls, record: record.merge(text="", tag="")),
        "index": classmethod(lambda cls, record: {"tag": record.tag}),
    })


@pytest.fixture
def runtime():
    opened = []

    @hookimpl
    def bastion_storage_driver(url, clock):
        if url.scheme != "unpaged":
            return None
        opened.append(UnpagedDriver(clock))
        return opened[-1]

    note = _note_model()
    plugin = types.ModuleType("unpaged_plugin")
    plugin.bastion_storage_driver = bastion_storage_driver
    plugin.bastion_models = hookimpl(lambda: [note])
    pm = get_plugin_manager(load_entry_points=False)
    pm.register(plugin, name="unpaged")
    with Runtime(Config.from_dict({"bastion": {"storage": "unpaged://"}}), pm, FakeClock()) as runtime:
        runtime.note = note
        runtime.opened = opened
        yield runtime


def test_the_driver_is_wrapped_once_when_it_opens(runtime):
    assert len(runtime.opened) == 1
    assert isinstance(runtime.records, Paged) and runtime.records.driver is runtime.opened[0]
    assert runtime.state is runtime.records  # one URL, one driver, one wrapper
    assert capabilities_of(runtime.records) == {PROCESS_LOCAL, PAGED_SELECT} and runtime.process_local
    assert paged(runtime.opened[0]) is not runtime.records  # paged() wraps; the runtime did it once, at open
    memory = MemoryDriver(clock=FakeClock())
    assert paged(memory) is memory  # a driver that pages is left as it is


def test_the_unit_of_work_pages_through_the_wrapper(runtime):
    note = runtime.note
    with runtime.bind("d.test"):
        with storage() as db:
            for n in range(6):
                db.insert(note, id=f"n{n}", text=f"note {n}", tag="odd" if n % 2 else "even")
        with storage() as db:
            assert [r._id for r in db.select(note, limit=2)] == ["n0", "n1"]
            assert [r._id for r in db.select(note, after="n1", limit=3)] == ["n2", "n3", "n4"]
            assert [r._id for r in db.select(note, {"tag": "odd"}, after="n2")] == ["n3", "n5"]  # n2 is even
            with pytest.raises(RecordNotFound):
                db.select(note, after="nobody")
    assert runtime.opened[0].selects > 0
