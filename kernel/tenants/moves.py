"""What the tenant commands do, on drivers that declare the ``tenants`` capability.

Each function takes the drivers and the runtime's models it works with, so
that tests call it directly; :mod:`kernel.tenants.commands` opens them.
Records stream from one side to the other (a page at a time in the drivers,
a line at a time in a file): memory stays bounded whatever a tenant holds.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO

from kernel.core.driver import TENANTS, TenantCounts, TenantRecord, TenantStore, capabilities_of
from kernel.core.store import ModelInfo
from kernel.tenants.format import ExportWriter, check_export, model_description, tenant_records

#: Most differences ``verify`` reports per tenant and model.
MAX_DIFFERENCES = 20

#: Called with the tenant and how many records have gone so far (a progress line on a terminal).
Progress = Callable[[str, int], None]


def _quiet(tenant: str, count: int) -> None:
    return None


def tenant_store(driver: object, label: str) -> TenantStore:
    """The driver as a :class:`TenantStore`; ValueError naming ``label`` when it does not declare ``tenants``."""
    if TENANTS not in capabilities_of(driver) or not isinstance(driver, TenantStore):
        raise ValueError(f"{label} cannot list or move tenants: its driver does not declare the 'tenants' "
                         "capability")
    return driver


def merged(counts: Iterable[TenantCounts]) -> TenantCounts:
    """What several backends hold for one tenant (records and state may live apart), summed."""
    total = TenantCounts()
    for part in counts:
        for mine, theirs in ((total.records, part.records), (total.history, part.history), (total.state, part.state)):
            for name, n in theirs.items():
                mine[name] = mine.get(name, 0) + n
    return total


def census(stores: Iterable[TenantStore]) -> dict[str, TenantCounts]:
    """Every tenant of every store with what it holds, in name order (one pass per store)."""
    found: dict[str, list[TenantCounts]] = {}
    for store in stores:
        for tenant, counts in store.tenants().items():
            found.setdefault(tenant, []).append(counts)
    return {tenant: merged(parts) for tenant, parts in sorted(found.items())}


def models_of(counts: TenantCounts) -> list[str]:
    """The models a tenant holds records or history of, by name."""
    return sorted(set(counts.records) | set(counts.history))


def records_of(store: TenantStore, tenant: str, models: Iterable[str]) -> Iterator[TenantRecord]:
    """Every record of a tenant, model after model."""
    for model in models:
        yield from store.tenant_records(tenant, model)


def indexed(records: Iterable[TenantRecord], models: Mapping[str, ModelInfo]) -> Iterator[TenantRecord]:
    """The records with the index entries their model gives them (on a copy of their data, defaults filled in)."""
    for record in records:
        info = models.get(record.model)
        if record.data is None or info is None:
            yield record
            continue
        data = info.complete(copy.deepcopy(record.data))
        index = info.index(info.record(record.id, record.vsn, data))
        yield TenantRecord(record.model, record.id, record.vsn, record.data, record.history, record.removal, index)


def counted(records: Iterable[TenantRecord], tenant: str, progress: Progress, every: int = 1000,
            ) -> Iterator[TenantRecord]:
    """The records, calling ``progress`` every ``every`` of them."""
    n = 0
    for n, record in enumerate(records, 1):
        if n % every == 0:
            progress(tenant, n)
        yield record
    progress(tenant, n)


# -- export -------------------------------------------------------------------------------------------------------


def export(store: TenantStore, tenants: Mapping[str, TenantCounts], models: Mapping[str, ModelInfo], out: IO[bytes],
           version: str, progress: Progress = _quiet) -> ExportWriter:
    """Write the tenants (with what each holds, as :func:`census` says) to ``out``; return the writer's counts."""
    names = sorted({model for counts in tenants.values() for model in models_of(counts)})
    writer = ExportWriter(out, {name: model_description(models.get(name)) for name in names}, list(tenants), version)
    for tenant, counts in tenants.items():
        writer.tenant(tenant)
        for record in counted(records_of(store, tenant, models_of(counts)), tenant, progress):
            writer.record(record)
    writer.finish()
    return writer


# -- import -------------------------------------------------------------------------------------------------------


def import_file(stream: IO[bytes], target: TenantStore, models: Mapping[str, ModelInfo], replace: bool = False,
                progress: Progress = _quiet) -> list[tuple[str, int, int]]:
    """Check the whole file, then load it tenant by tenant; return ``(tenant, records, history)`` of each.

    Nothing is written unless the whole file passes :func:`check_export`
    and, without ``replace``, no tenant of it holds data in the target (its
    census, read once).
    Each tenant is loaded all or nothing (:meth:`TenantStore.load_tenant`).
    """
    checked = check_export(stream, models)
    if not replace:
        census = target.tenants()  # one pass, whatever the number of tenants of the file
        taken = [(section.tenant, census[section.tenant]) for section in checked.sections
                 if section.tenant in census and census[section.tenant].holds_data]
        if taken:
            tenant, counts = taken[0]
            more = f", and {len(taken) - 1} more tenants of the file too" if len(taken) > 1 else ""
            raise ValueError(f"tenant {tenant} already holds data ({sum(counts.records.values())} records, "
                             f"{sum(counts.history.values())} history entries){more}: nothing was imported; "
                             f"--replace replaces what {'they hold' if more else 'it holds'}")
    done = []
    for section in checked.sections:
        records = counted(indexed(tenant_records(stream, section), models), section.tenant, progress)
        target.load_tenant(section.tenant, records, replace=replace)
        done.append((section.tenant, section.records, section.history))
    return done


# -- copy and verify ----------------------------------------------------------------------------------------------


def copy_tenants(source: TenantStore, target: TenantStore, tenants: Mapping[str, TenantCounts],
                 models: Mapping[str, ModelInfo], replace: bool = False, progress: Progress = _quiet) -> list[int]:
    """Load each tenant of ``source`` into ``target`` (all or nothing per tenant); return the records of each."""
    if not replace:
        census = target.tenants()
        for tenant in tenants:
            counts = census.get(tenant, TenantCounts())
            if counts.holds_data:
                raise ValueError(f"tenant {tenant} already holds data in the target "
                                 f"({sum(counts.records.values())} records): nothing was copied; --replace replaces "
                                 "what it holds")
    return [target.load_tenant(tenant, counted(indexed(records_of(source, tenant, models_of(counts)), models),
                                               tenant, progress), replace=replace)
            for tenant, counts in tenants.items()]


def verify(source: TenantStore, target: TenantStore, tenant: str) -> tuple[int, int, list[str]]:
    """Compare every record and history entry of a tenant on both sides.

    Returns how many records and history entries were compared, and the
    differences found (at most :data:`MAX_DIFFERENCES` per model), each one line.
    """
    models = sorted(set(models_of(source.tenant_counts(tenant))) | set(models_of(target.tenant_counts(tenant))))
    records = history = 0
    differences: list[str] = []
    for model in models:
        found = 0
        pairs = itertools.zip_longest(source.tenant_records(tenant, model), target.tenant_records(tenant, model))
        for mine, theirs in pairs:
            records += 1
            history += len(mine.history) if mine is not None else 0
            difference = _difference(mine, theirs)
            if difference is not None and found < MAX_DIFFERENCES:
                found += 1
                differences.append(f"{tenant}: {model} {difference}")
    return records, history, differences


def _difference(mine: TenantRecord | None, theirs: TenantRecord | None) -> str | None:
    """What differs between a record on the source and the one in the same place on the target, or None."""
    if mine == theirs:
        return None
    if theirs is None:
        return f"{mine.id!r}: only in the source"  # type: ignore[union-attr]
    if mine is None:
        return f"{theirs.id!r}: only in the target"
    if mine.id != theirs.id:
        return f"{mine.id!r} in the source where the target has {theirs.id!r} (another order, or a record missing)"
    what = [name for name, a, b in (("version", mine.vsn, theirs.vsn), ("data", mine.data, theirs.data),
                                    ("history", mine.history, theirs.history),
                                    ("removal number", mine.removal, theirs.removal)) if a != b]
    return f"{mine.id!r}: {', '.join(what)} differ ({_versions(mine)} in the source, {_versions(theirs)} in the target)"


def _versions(record: TenantRecord) -> str:
    return f"version {record.vsn}, {len(record.history)} history entries"


def declared_models(models: Iterable[ModelInfo]) -> dict[str, ModelInfo]:
    """The runtime's models by name."""
    return {info.name: info for info in models}


__all__ = ["census", "copy_tenants", "declared_models", "export", "import_file", "indexed", "merged", "models_of",
           "records_of", "tenant_store", "verify"]
