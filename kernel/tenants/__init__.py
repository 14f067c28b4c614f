"""Whole tenants: list them, export and import them, copy them between storage engines, delete them.

* :mod:`kernel.tenants.format`: the export format (docs/export.md), written
  and checked line by line;
* :mod:`kernel.tenants.moves`: what the commands do, on drivers that declare
  the ``tenants`` capability (:class:`kernel.core.driver.TenantStore`);
* :mod:`kernel.tenants.commands`: ``bastion tenants``, ``export``,
  ``import``, ``copy`` and ``delete-tenant``.

None of them knows a model: the records of every plugin's models come and go
through the drivers' protocol, and the models the runtime registers give
each record its index entries on the way in.
"""
