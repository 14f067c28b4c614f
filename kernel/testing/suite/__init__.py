"""The storage-driver conformance suite, one module per concern (docs/storage.md, "Semantics every driver keeps").

* :class:`RecordsSuite` (``records``): the driver API — commit, fetch, select,
  domains, JSON values, record ids, races, persistence;
* :class:`UnitOfWorkSuite` (``unit_of_work``): through the unit of work —
  models, versions, validation, model evolution;
* :class:`HistorySuite` (``history``): record history — every committed
  version kept in the commit of the record, who and which version, bounded
  by the model's limit, never written by a failed commit;
* :class:`StateSuite` (``state``): short-lived state — keys, add/replace/incr,
  windows, expiry, reclamation;
* :class:`HealthSuite` (``health``): ``ping``;
* :class:`TenantsSuite` (``tenants``): whole tenants listed, counted,
  streamed, loaded all or nothing and deleted (skipped for a driver that does
  not declare the ``tenants`` capability);
* :class:`DriverSuite`: all six, what every driver adopts.

A driver adopts the whole suite with one subclass and a ``driver`` fixture::

    from kernel.testing import DriverSuite

    class TestMyDriver(DriverSuite):
        @pytest.fixture
        def driver(self, clock):
            driver = MyDriver(url, clock=clock)
            yield driver
            driver.close()

        @pytest.fixture
        def reopen(self, clock):             # only for a driver that declares "persistent"
            return lambda: MyDriver(url, clock=clock)

A driver that offers only some concerns (a state-only backend) subclasses
those parts instead. Optional capabilities are declared, default off: the
``capabilities`` fixture reads the driver's ``capabilities`` attribute (a
frozenset; missing means none), a subclass may override it, and a test marked
:func:`requires` is skipped when the driver lacks what it names (see
:mod:`kernel.testing.suite.base`).
"""

from kernel.testing.suite.base import SuiteBase, requires
from kernel.testing.suite.health import HealthSuite
from kernel.testing.suite.history import HistorySuite
from kernel.testing.suite.records import RecordsSuite
from kernel.testing.suite.state import StateSuite
from kernel.testing.suite.tenants import TenantsSuite
from kernel.testing.suite.unit_of_work import UnitOfWorkSuite


class DriverSuite(RecordsSuite, UnitOfWorkSuite, HistorySuite, StateSuite, HealthSuite, TenantsSuite):
    """Every behaviour a storage driver must have. Subclass and provide ``driver`` (and ``reopen`` if persistent)."""


__all__ = ["DriverSuite", "HealthSuite", "HistorySuite", "RecordsSuite", "StateSuite", "SuiteBase", "TenantsSuite",
           "UnitOfWorkSuite", "requires"]
