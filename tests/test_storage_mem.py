"""The kernel's mem:// driver (kernel/storage_mem.py): the default storage, built in and registered as ``storage_mem``.

It reclaims expired state a few keys per write: bounded memory, and no call ever scans everything. (The
conformance suite runs on it in tests/test_conformance.py.)
"""

import importlib.metadata
import sys
import types

import kernel.drivers
import kernel.storage_mem as storage_mem
from kernel import StorageURL, hookimpl
from kernel.core import plugins
from kernel.core.plugins import describe, get_plugin_manager
from kernel.storage_mem import RECLAIM_STEP, MemoryDriver
from kernel.testing import FakeClock

DOMAIN = "reclaim.test"


def test_nonces_under_sustained_load_stay_bounded():
    clock = FakeClock()
    driver = MemoryDriver(clock=clock)
    driver.set(DOMAIN, "session", {"user": "ann"}, 1e6)
    for second in range(200):  # 100 signed calls a second, each with a nonce living 3 s
        for call in range(100):
            driver.add(DOMAIN, f"nonce:{second}:{call}", 1, 3, if_live="session")
            driver.window_add(DOMAIN, f"calls:{call % 10}", f"{second}:{call}", 1, 3)
        clock.advance(1)
    live = 2 * 3 * 100 + 1
    assert driver.state_count() <= live + 2 * 100
    # The heap of expiries holds one entry per key at most.
    assert len(driver._expiries) == len(driver._queued) <= driver.state_count() + 100


def test_one_write_reclaims_a_few_keys_not_all():
    clock = FakeClock()
    driver = MemoryDriver(clock=clock)
    for i in range(10_000):
        driver.set(DOMAIN, f"k{i}", i, 1)
    clock.advance(2)
    driver.set(DOMAIN, "one", 1, 60)
    assert driver.state_count() == 10_001 - RECLAIM_STEP
    for _ in range(10_000 // RECLAIM_STEP + 1):
        driver.incr(DOMAIN, "writes", 1, 60)
    assert driver.state_count() == 2


def test_a_key_whose_expiry_moved_later_is_kept_and_reclaimed_later():
    clock = FakeClock()
    driver = MemoryDriver(clock=clock)
    driver.set(DOMAIN, "session", 1, 10)
    for _ in range(5):  # touched: its expiry moves later each time
        clock.advance(8)
        assert driver.replace(DOMAIN, "session", 1, 10) is True
        driver.set(DOMAIN, "other", 1, 1)
    assert driver.get(DOMAIN, "session") == 1
    assert len(driver._expiries) <= 2  # one entry per key, pushed again lazily
    clock.advance(11)
    driver.set(DOMAIN, "w", 1, 60)
    assert driver.state_count() == 1


# -- the built-in plugin ------------------------------------------------------------------------------------------

def test_the_kernel_alone_opens_mem():
    """No entry point loaded: the built-in plugin ``storage_mem`` is there and opens the default storage."""
    pm = get_plugin_manager(only=[], trace=False)
    assert pm.get_plugin("storage_mem") is storage_mem
    assert isinstance(pm.hook.bastion_storage_driver(url=StorageURL("mem://"), settings=None, config=None, clock=FakeClock()),
                      MemoryDriver)
    assert pm.hook.bastion_storage_driver(url=StorageURL("redis://127.0.0.1/0"), settings=None, config=None,
                                          clock=FakeClock()) is None


def test_naming_storage_mem_loads_nothing_more():
    assert get_plugin_manager(only=["storage_mem"], trace=False).get_plugin("storage_mem") is storage_mem


def test_an_older_entry_point_of_the_same_name_is_not_loaded(monkeypatch):
    """bastion-storage-mem 0.1.0 registered a driver of its own as the entry point ``storage_mem``: with such a
    package still installed, the built-in plugin keeps the name, the old one is not loaded, one plugin answers
    ``mem://``, and ``bastion plugins`` says the kernel provides it."""
    old = types.ModuleType("old_bastion_storage_mem")

    @hookimpl
    def bastion_storage_driver(url, clock):
        raise AssertionError("the older package's driver was asked")

    old.bastion_storage_driver = bastion_storage_driver
    monkeypatch.setitem(sys.modules, old.__name__, old)
    entry_point = importlib.metadata.EntryPoint("storage_mem", old.__name__, plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [entry_point] if kw.get("group") == "bastion" else [])

    pm = get_plugin_manager(only=None, trace=False)
    assert pm.get_plugin("storage_mem") is storage_mem
    assert [impl.plugin for impl in pm.hook.bastion_storage_driver.get_hookimpls()] == [storage_mem]
    assert isinstance(pm.hook.bastion_storage_driver(url=StorageURL("mem://"), settings=None, config=None, clock=FakeClock()),
                      MemoryDriver)
    row = {row["name"]: row for row in describe(pm)}["storage_mem"]
    assert row["distribution"] == "bastion (built in)" and row["hooks"] == ["bastion_storage_driver"]


def test_driver_authors_get_the_same_class():
    assert kernel.drivers.MemoryDriver is MemoryDriver
