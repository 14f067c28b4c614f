"""Paging for drivers that cannot page: wrapped once, when the runtime opens them.

A driver that declares :data:`kernel.core.driver.PAGED_SELECT` reads one page
of ``select`` itself. One that does not is wrapped by :func:`paged` when the
runtime opens it: the wrapper's ``select`` takes ``after`` and ``limit`` and
cuts the driver's whole answer (the same page, at full cost), and everything
else is the driver's own. So the unit of work always asks for a page the same
way, and never checks per call what a driver can do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kernel.core.driver import PAGED_SELECT, Driver, Scalar, StoredRecord, capabilities_of
from kernel.core.errors import RecordNotFound


def paged(driver: Any) -> Driver:
    """``driver`` itself when it declares ``PAGED_SELECT``, else a :class:`Paged` around it.

    Typed ``Any``: a driver without paging has a ``select`` without ``after`` and ``limit``, which the
    :class:`kernel.core.driver.Driver` protocol names.
    """
    if PAGED_SELECT in capabilities_of(driver):
        return driver  # it declares paging: a Driver
    return Paged(driver)  # a Driver by delegation: every other attribute is the driver's


class Paged:
    """A driver without paging, seen through a ``select`` that takes ``after`` and ``limit``."""

    def __init__(self, driver: Any):
        self.driver = driver
        self.capabilities = capabilities_of(driver) | {PAGED_SELECT}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.driver, name)

    def __repr__(self) -> str:
        return f"Paged({self.driver!r})"

    def select(self, domain: str, model: str, where: Mapping[str, Scalar] | None = None, *,
               after: str | None = None, limit: int | None = None) -> list[StoredRecord]:
        """The driver's whole answer, cut after ``after`` (a record id, matching ``where`` or not) to ``limit``."""
        rows = self.driver.select(domain, model, where)
        if after is not None:
            ids = [row.id for row in rows]
            if after in ids:
                rows = rows[ids.index(after) + 1:]
            else:  # ``after`` may not match ``where``: its place is found among every record
                order = {row.id: n for n, row in enumerate(self.driver.select(domain, model, {}) if where else ())}
                if after not in order:
                    raise RecordNotFound(f"no {model} with id {after!r}")
                rows = [row for row in rows if order.get(row.id, -1) > order[after]]
        return rows if limit is None else rows[:limit]
