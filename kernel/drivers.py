"""The facade for storage-driver authors: everything a driver's code imports from Bastion, in one module.

``kernel`` stays the one import of app and plugin authors, the plugin side of
a driver included (``hookimpl``, configuration sections, ``Problem`` for
``bastion check --deploy``). The code that stores imports this module::

    from kernel import hookimpl
    from kernel.drivers import Change, StoredRecord, VersionConflict, check_change

* The driver protocol: :class:`Driver`, made of a :class:`RecordStore` and a
  :class:`StateStore`; what crosses it: :class:`Change`, :class:`StoredRecord`,
  :class:`RecordVersion`, :class:`WindowEntry`, ``Scalar``.
* Whole tenants, for a driver that declares ``TENANTS``: :class:`TenantStore`
  (list, count, stream, load and delete a tenant), :class:`TenantRecord`,
  :class:`TenantCounts`, :func:`check_tenant_record`, :func:`state_kind`.
* The capabilities a driver may declare in its ``capabilities`` frozenset that
  the kernel names: ``PROCESS_LOCAL``, ``PAGED_SELECT``, ``TENANTS`` (``"persistent"`` and
  ``"count_live"`` are the suite's and ``/metrics``' words, docs/testing.md).
* The checks every driver shares, before anything is written:
  :func:`check_change`, :func:`check_json`, :func:`check_record_id`,
  :func:`check_scalar`, :func:`check_text`; :func:`index_token`,
  :func:`is_record_id`, :func:`is_text`, ``MAX_ID_LENGTH``; ``PROBE_DOMAIN``
  (``ping``'s namespace); the history bounds ``REMOVED_HISTORY_STEP`` and
  ``DEFAULT_HISTORY_KEEP_REMOVED``.
* Storage URLs: :class:`StorageURL` (the one parser of a scheme) and
  :func:`redact` (a URL with its password hidden, for messages).
* What a driver raises: :class:`VersionConflict`, :class:`RecordNotFound`,
  :class:`ServiceUnavailable` (with ``backend=``), :class:`ConfigError`; and
  how it keeps JSON as text: :func:`dumps_text`, :func:`loads_stored` (:func:`loads_stored_all` for a select's rows).
* :class:`MemoryDriver`: the kernel's own ``mem://`` driver, the reference
  to read, wrap or subclass.
* The conformance suite, from :mod:`kernel.testing`: :class:`DriverSuite`
  (with its parts :class:`RecordsSuite`, :class:`UnitOfWorkSuite`,
  :class:`HistorySuite`, :class:`StateSuite`, :class:`HealthSuite`,
  :class:`SuiteBase`) and :func:`requires`. They are loaded on first use:
  importing this module imports neither pytest nor the test-side API
  (``from kernel.drivers import *`` does, since ``__all__`` lists them).

Every name but ``MemoryDriver`` is also importable from ``kernel`` (the
suite's from ``kernel.testing``), as the same object. docs/storage.md
("Writing a driver") is the guide.
"""

from __future__ import annotations

from typing import Any

from kernel.core.config import PluginSettings
from kernel.core.driver import (
    DEFAULT_HISTORY_KEEP_REMOVED,
    MAX_ID_LENGTH,
    PAGED_SELECT,
    PROBE_DOMAIN,
    REMOVED_HISTORY_STEP,
    TENANTS,
    Capability,
    Change,
    Driver,
    LiveCounts,
    RecordStore,
    RecordVersion,
    Scalar,
    StateStore,
    StoredRecord,
    TenantCounts,
    TenantRecord,
    TenantStore,
    WindowEntry,
    capabilities_of,
    check_change,
    check_json,
    check_record_id,
    check_scalar,
    check_tenant_record,
    check_text,
    index_token,
    is_record_id,
    is_text,
    state_kind,
)
from kernel.core.errors import ConfigError, RecordNotFound, ServiceUnavailable, VersionConflict
from kernel.core.jsonio import dumps_text, loads_stored, loads_stored_all
from kernel.core.runtime import PROCESS_LOCAL
from kernel.core.urls import StorageURL, redact
from kernel.storage_mem import MemoryDriver

#: The conformance suite's names, loaded from kernel.testing on first use (it imports pytest).
_SUITE = ("DriverSuite", "RecordsSuite", "UnitOfWorkSuite", "HistorySuite", "StateSuite", "HealthSuite", "TenantsSuite",
          "SuiteBase", "requires")

__all__ = [
    # the protocol, and what crosses it
    "Driver", "RecordStore", "StateStore", "Change", "StoredRecord", "RecordVersion", "WindowEntry", "Scalar",
    # whole tenants (the ``tenants`` capability): what a driver that moves them offers, and what crosses it
    "TenantStore", "TenantRecord", "TenantCounts", "check_tenant_record", "state_kind",
    # capabilities the kernel names, every capability, and the optional protocols of some
    "PROCESS_LOCAL", "PAGED_SELECT", "TENANTS", "Capability", "capabilities_of", "LiveCounts",
    # the shared checks, ids, the probe's namespace, the history bounds
    "check_change", "check_json", "check_record_id", "check_scalar", "check_text", "index_token", "is_record_id",
    "is_text", "MAX_ID_LENGTH", "PROBE_DOMAIN", "REMOVED_HISTORY_STEP", "DEFAULT_HISTORY_KEEP_REMOVED",
    # storage URLs, and the settings ``bastion_storage_driver`` is given
    "StorageURL", "redact", "PluginSettings",
    # what a driver raises, and JSON kept as text
    "VersionConflict", "RecordNotFound", "ServiceUnavailable", "ConfigError", "dumps_text", "loads_stored",
    "loads_stored_all",
    # the reference driver
    "MemoryDriver",
    # the conformance suite (lazily, from kernel.testing)
    *_SUITE,
]


def __getattr__(name: str) -> Any:
    """Load the conformance suite's names from :mod:`kernel.testing` when first asked for."""
    if name in _SUITE:
        from kernel.testing import suite

        value = getattr(suite, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUITE))
