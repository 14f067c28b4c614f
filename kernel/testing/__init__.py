"""Testing helpers for Bastion and its plugins.

* :class:`DriverSuite` — the storage-driver conformance suite. A driver adopts
  it with one subclass and two fixtures::

      from kernel.testing import DriverSuite

      class TestMyDriver(DriverSuite):
          @pytest.fixture
          def driver(self, clock):
              return MyDriver(url, clock=clock)

          @pytest.fixture
          def capabilities(self):
              return {"persistent"}

* :class:`FakeClock` — an injectable clock that only moves when told.
* The pytest plugin :mod:`kernel.testing.fixtures` (loaded automatically once
  Bastion is installed) offers ``bastion_config``, ``bastion_app`` and
  ``bastion_plugin`` fixtures.
"""

from kernel.testing.clock import FakeClock
from kernel.testing.suite import DriverSuite

__all__ = ["DriverSuite", "FakeClock"]
