"""bastion-storage-mem is a compatibility package: the kernel's own driver under the old import path, and no plugin."""

import importlib.metadata

import bastion_storage_mem
from bastion_storage_mem import MemoryDriver

from kernel import StorageURL
from kernel.drivers import MemoryDriver as KernelMemoryDriver
from kernel.testing import FakeClock, get_plugin_manager


def test_it_re_exports_the_kernels_driver():
    assert MemoryDriver is KernelMemoryDriver
    driver = MemoryDriver(clock=FakeClock())
    driver.set("compat.test", "k", 1, 60)
    assert driver.get("compat.test", "k") == 1


def test_it_registers_nothing():
    assert [name for name in vars(bastion_storage_mem) if name.startswith("bastion_")] == []
    assert [ep for ep in importlib.metadata.entry_points(group="bastion") if ep.value == "bastion_storage_mem"] == []


def test_one_plugin_answers_mem():
    """Every installed plugin loaded: only the kernel's built-in ``storage_mem`` opens ``mem://``."""
    pm = get_plugin_manager(only=None, trace=False)
    given = {"url": StorageURL("mem://"), "settings": None, "config": None, "clock": FakeClock()}
    answering = [impl.plugin_name for impl in pm.hook.bastion_storage_driver.get_hookimpls()
                 if impl.function(**{arg: given[arg] for arg in impl.argnames}) is not None]
    assert answering == ["storage_mem"]
