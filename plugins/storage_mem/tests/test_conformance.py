"""The in-memory driver passes the whole conformance suite."""

import pytest
from bastion_storage_mem import MemoryDriver

from kernel.testing import DriverSuite


class TestMemoryDriver(DriverSuite):
    @pytest.fixture
    def driver(self, clock):
        return MemoryDriver(clock=clock)
