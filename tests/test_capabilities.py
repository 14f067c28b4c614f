"""Driver capabilities are one enumeration the kernel names, and the optional protocols go with them."""

from __future__ import annotations

import pytest

from kernel.core.driver import Capability, Driver, LiveCounts, capabilities_of
from kernel.storage_mem import MemoryDriver


def shipped_drivers(tmp_path, redis_server):
    from bastion_storage_redis import RedisDriver
    from bastion_storage_sql import SqlDriver

    return [MemoryDriver(), SqlDriver(f"sqlite:///{tmp_path / 'c.sqlite3'}"), RedisDriver(redis_server.url)]


def test_every_shipped_driver_declares_capabilities_the_kernel_names(tmp_path, redis_server):
    for driver in shipped_drivers(tmp_path, redis_server):
        try:
            assert isinstance(driver, Driver)
            declared = capabilities_of(driver)
            assert {Capability(name) for name in declared} == declared  # each is a member (a StrEnum equals its text)
            assert Capability.PAGED_SELECT in declared
            assert (Capability.COUNT_LIVE in declared) == isinstance(driver, LiveCounts), type(driver).__name__
        finally:
            driver.close()


def test_an_unknown_capability_is_no_member():
    with pytest.raises(ValueError):
        Capability("teleport")
    assert capabilities_of(object()) == frozenset()
