"""``kernel.drivers``, the driver author's facade: what it exports, that it is the kernel's own objects, that
importing it loads no pytest, and that docs/storage.md names all of it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import kernel
import kernel.drivers
import kernel.testing
from kernel.storage_mem import MemoryDriver

ROOT = Path(__file__).resolve().parents[1]

#: What a driver author finds there (the names that were in `kernel` stay there too).
PROMISED = {
    "Driver", "RecordStore", "StateStore", "Change", "StoredRecord", "RecordVersion", "WindowEntry", "Scalar",
    "PROCESS_LOCAL", "PAGED_SELECT", "TENANTS", "Capability", "capabilities_of", "LiveCounts",
    "TenantStore", "TenantRecord", "TenantCounts", "check_tenant_record", "state_kind",
    "check_change", "check_json", "check_record_id", "check_scalar", "check_text", "index_token", "is_record_id",
    "is_text", "MAX_ID_LENGTH", "PROBE_DOMAIN", "REMOVED_HISTORY_STEP", "DEFAULT_HISTORY_KEEP_REMOVED",
    "StorageURL", "redact", "PluginSettings",
    "VersionConflict", "RecordNotFound", "ServiceUnavailable", "ConfigError", "dumps_text", "loads_stored",
    "loads_stored_all",
    "MemoryDriver",
    "DriverSuite", "RecordsSuite", "UnitOfWorkSuite", "HistorySuite", "StateSuite", "HealthSuite", "SuiteBase",
    "TenantsSuite", "requires",
}


def test_it_exports_what_it_promises_and_lists():
    assert set(kernel.drivers.__all__) == PROMISED
    assert len(set(kernel.drivers.__all__)) == len(kernel.drivers.__all__)
    assert [name for name in kernel.drivers.__all__ if not hasattr(kernel.drivers, name)] == []
    assert set(kernel.drivers.__all__) <= set(dir(kernel.drivers))


@pytest.mark.parametrize("name", sorted(PROMISED - {"MemoryDriver"}))
def test_each_name_is_the_kernels_own_object(name):
    """Re-exported, not copied: the facade's name is the one of ``kernel`` (the suite's, of ``kernel.testing``)."""
    home = kernel.testing if name in kernel.testing.__all__ else kernel
    assert name in home.__all__
    assert getattr(kernel.drivers, name) is getattr(home, name)


def test_the_reference_driver_is_the_built_in_one():
    assert kernel.drivers.MemoryDriver is MemoryDriver
    assert "MemoryDriver" not in kernel.__all__  # the plugin author's API is unchanged


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="NoSuchThing"):
        kernel.drivers.NoSuchThing  # noqa: B018


def test_importing_it_loads_neither_pytest_nor_the_test_side_nor_falcon():
    code = ("import sys, kernel.drivers; "
            "print(sorted(m for m in ('pytest', 'kernel.testing', 'falcon', 'gunicorn') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert done.stdout.strip() == "[]"


def test_the_suite_comes_when_asked_for():
    code = ("import sys, kernel.drivers; suite = kernel.drivers.DriverSuite; "
            "import kernel.testing; print(suite is kernel.testing.DriverSuite, 'pytest' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert done.stdout.split() == ["True", "True"]


def test_the_guide_names_every_export():
    """docs/storage.md's "Writing a driver" names each name of the facade."""
    text = (ROOT / "docs" / "storage.md").read_text(encoding="utf-8")
    section = text[text.index("## Writing a driver"):]
    section = section[:section.index("\n## ", 1)]
    assert "from kernel.drivers import" in section
    assert [name for name in kernel.drivers.__all__ if f"`{name}" not in section] == []
