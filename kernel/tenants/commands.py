"""``bastion tenants | export | import | copy | delete-tenant``: whole tenants, on any driver that moves them.

Each command is a function of its parsed arguments and the kernel's
``kernel.cli.CommandEnv``, as the kernel's other commands are;
:data:`COMMANDS` lists them as ``(name, run, help, arguments)`` rows, which
:mod:`kernel.cli` adds to its table. Every command that reads or writes a
tenant's data writes a security event (``origin`` ``cli``, ``admin`` the
operating-system user), one per tenant.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, Protocol, TextIO

from kernel.core.driver import TenantCounts, TenantStore
from kernel.core.errors import BastionError, ConfigError, InvalidHost
from kernel.core.hosts import parse_domain
from kernel.core.urls import StorageURL
from kernel.tenants import moves
from kernel.tenants.format import ExportError
from kernel.version import __version__

if TYPE_CHECKING:
    from kernel.core.runtime import Runtime


class CommandEnv(Protocol):
    """What a command is given besides its arguments: :class:`kernel.cli.CommandEnv` (named here by its parts,
    so that this module does not import the one that imports it)."""

    @property
    def runtime_factory(self) -> Callable[[], Runtime]: ...

    @property
    def out(self) -> TextIO: ...

    @property
    def err(self) -> TextIO: ...

#: The origin of these commands' security events.
ORIGIN = "cli"


def admin() -> str:
    """Who runs the command: the operating-system user."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in this environment
        return "?"




def _tenant(text: str) -> str:
    """A tenant's name as the server writes it (the request's host), or one line saying why it cannot be one."""
    try:
        return parse_domain(text)
    except InvalidHost:
        raise SystemExit(f"bastion: {text!r} is not a tenant's name (a host name such as alpha.example.com)") from None


def _stores(runtime: Runtime) -> list[TenantStore]:
    """The runtime's distinct drivers (records, then state when apart), each as a TenantStore."""
    return [moves.tenant_store(driver, f"[bastion] {'storage' if driver is runtime.records else 'state'}")
            for driver in runtime.drivers]


def _total(counts: dict[str, int]) -> int:
    return sum(counts.values())


def describe(counts: TenantCounts) -> str:
    """``records 1203 (Todo 1200, User 3)  history 3400  state 42 (nonce 40, session 2)``."""
    def part(name: str, values: dict[str, int]) -> str:
        detail = ", ".join(f"{key} {n}" for key, n in sorted(values.items()))
        return f"{name} {_total(values)}" + (f" ({detail})" if detail else "")

    return f"{part('records', counts.records)}  history {_total(counts.history)}  {part('state', counts.state)}"


class _Progress:
    """A progress line on a terminal (standard error), nothing elsewhere."""

    def __init__(self, err: TextIO, verb: str):
        self._err = err
        self._verb = verb
        self._on = bool(getattr(err, "isatty", lambda: False)())

    def __call__(self, tenant: str, count: int) -> None:
        if self._on:
            print(f"\r{self._verb} {tenant}: {count} records", end="", file=self._err, flush=True)

    def done(self) -> None:
        if self._on:
            print(file=self._err)


def _run_on_runtime(env: CommandEnv, work: Callable[[Runtime], int]) -> int:
    runtime = env.runtime_factory()
    try:
        return work(runtime)
    finally:
        runtime.close()


# -- tenants -------------------------------------------------------------------------------------------------------


def tenants(args: argparse.Namespace, env: CommandEnv) -> int:
    """``bastion tenants``: every tenant holding data, with its records per model, history and live state."""
    def work(runtime: Runtime) -> int:
        found = moves.census(_stores(runtime))
        for tenant, counts in found.items():
            print(f"{tenant}  {describe(counts)}", file=env.out)
        print(f"{len(found)} tenant{'s' * (len(found) != 1)}", file=env.out)
        return 0

    return _run_on_runtime(env, work)


# -- export --------------------------------------------------------------------------------------------------------


def export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tenant", action="append", default=[], metavar="D",
                        help="only this tenant (again for more); default: every tenant holding records")
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE (default: standard output)")


def _chosen(store: TenantStore, names: list[str], verb: str) -> dict[str, TenantCounts]:
    """The named tenants with what they hold (each must hold records), else every one holding records."""
    if not names:
        return {tenant: counts for tenant, counts in store.tenants().items() if counts.holds_data}
    chosen = {}
    for tenant in dict.fromkeys(_tenant(name) for name in names):
        counts = store.tenant_counts(tenant)
        if not counts.holds_data:
            raise SystemExit(f"bastion: {verb}: tenant {tenant} holds no records: nothing to {verb}")
        chosen[tenant] = counts
    return chosen


def export(args: argparse.Namespace, env: CommandEnv) -> int:
    """``bastion export [--tenant D]... [-o FILE]``: tenants as a file of docs/export.md's format."""
    def work(runtime: Runtime) -> int:
        store = moves.tenant_store(runtime.records, "[bastion] storage")
        chosen = _chosen(store, args.tenant, "export")
        models = moves.declared_models(runtime.models)
        for name in sorted({m for counts in chosen.values() for m in moves.models_of(counts)} - set(models)):
            print(f"bastion: note: model {name} is declared by no installed plugin: exported all the same; an "
                  "import needs the plugin that declares it", file=env.err)
        progress = _Progress(env.err, "export")
        with _output(args.output, env.out) as out:
            writer = moves.export(store, chosen, models, out, __version__, progress)
        progress.done()
        for tenant in chosen:
            runtime.security_event("tenant_exported", domain=tenant, records=writer.per_tenant[tenant],
                                   file=args.output or "-", origin=ORIGIN, admin=admin())
        print(f"exported {writer.tenants} tenant{'s' * (writer.tenants != 1)}: {writer.records} records, "
              f"{writer.history} history entries" + (f" to {args.output}" if args.output else ""), file=env.err)
        return 0

    return _run_on_runtime(env, work)


class _output:
    """Where an export goes: ``FILE.partial`` renamed to FILE once complete (removed on failure), or stdout."""

    def __init__(self, path: str | None, out: TextIO):
        self._path, self._out = path, out
        self._file: IO[bytes] | None = None

    def __enter__(self) -> IO[bytes]:
        if self._path is None:
            buffer = getattr(self._out, "buffer", None)
            return buffer if buffer is not None else _TextSink(self._out)  # type: ignore[return-value]
        try:
            self._file = open(self._path + ".partial", "wb")  # noqa: SIM115 - closed in __exit__
        except OSError as exc:
            raise SystemExit(f"bastion: export: cannot write {self._path}: {exc.strerror}") from None
        return self._file

    def __exit__(self, kind: Any, *_: Any) -> None:
        if self._file is None or self._path is None:
            getattr(self._out, "buffer", self._out).flush()
            return
        self._file.close()
        if kind is None:
            os.replace(self._path + ".partial", self._path)
        else:
            os.unlink(self._path + ".partial")


class _TextSink:
    """A text stream written as bytes (a test's StringIO standing for standard output)."""

    def __init__(self, out: TextIO):
        self._out = out

    def write(self, data: bytes) -> int:
        return self._out.write(data.decode("utf-8"))


# -- import --------------------------------------------------------------------------------------------------------


def import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="an export (read twice: checked whole before anything is written)")
    parser.add_argument("--replace", action="store_true",
                        help="replace what a tenant of the file holds (its records, users, history and sessions)")


def import_(args: argparse.Namespace, env: CommandEnv) -> int:
    """``bastion import FILE [--replace]``: load an export, tenant by tenant, all or nothing per tenant."""
    def work(runtime: Runtime) -> int:
        store = moves.tenant_store(runtime.records, "[bastion] storage")
        state = [s for s in _stores(runtime) if s is not store]
        progress = _Progress(env.err, "import")
        try:
            stream = open(args.file, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise SystemExit(f"bastion: import: cannot read {args.file}: {exc.strerror}") from None
        with stream:
            try:
                done = moves.import_file(stream, store, moves.declared_models(runtime.models), args.replace, progress)
            except ExportError as exc:
                raise SystemExit(f"bastion: import: {args.file}: {exc}; nothing was imported") from None
            except ValueError as exc:
                raise SystemExit(f"bastion: import: {args.file}: {exc}") from None
        progress.done()
        for tenant, records, history in done:
            for other in state:  # replaced: its sessions, nonces, bans and locks go too
                if args.replace:
                    other.delete_tenant(tenant)
            runtime.security_event("tenant_imported", domain=tenant, records=records, replaced=args.replace,
                                   file=args.file, origin=ORIGIN, admin=admin())
            print(f"imported {tenant}: {records} records, {history} history entries", file=env.out)
        return 0

    return _run_on_runtime(env, work)


# -- copy ----------------------------------------------------------------------------------------------------------


def copy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", required=True, metavar="URL", help="the storage URL to copy from")
    parser.add_argument("--to", dest="target", required=True, metavar="URL", help="the storage URL to copy to")
    parser.add_argument("--tenant", action="append", default=[], metavar="D",
                        help="only this tenant (again for more); default: every tenant holding records")
    parser.add_argument("--verify", action="store_true",
                        help="then compare every record and history entry on both sides, and say what differs")
    parser.add_argument("--replace", action="store_true", help="replace what a tenant holds in the target")


def copy(args: argparse.Namespace, env: CommandEnv) -> int:
    """``bastion copy --from URL --to URL [--tenant D]... [--verify]``: export piped into import."""
    if StorageURL(args.source) == StorageURL(args.target):
        raise SystemExit("bastion: copy: --from and --to name the same storage")

    def work(runtime: Runtime) -> int:
        source = _open(runtime, args.source, "--from")
        try:
            target = _open(runtime, args.target, "--to")
        except BaseException:
            source.close()
            raise
        try:
            return _copy(args, env, runtime, moves.tenant_store(source, "--from"), moves.tenant_store(target, "--to"))
        finally:
            source.close()
            target.close()

    return _run_on_runtime(env, work)


def _open(runtime: Runtime, url: str, option: str) -> Any:
    """The driver of ``url``, or one line naming the option whose storage cannot be opened, and why."""
    try:
        return runtime.open_driver(url)
    except (ConfigError, BastionError) as exc:
        raise SystemExit(f"bastion: copy: {option} {StorageURL(url).redacted}: {exc}") from None


def _copy(args: argparse.Namespace, env: CommandEnv, runtime: Runtime, source: TenantStore,
          target: TenantStore) -> int:
    chosen = _chosen(source, args.tenant, "copy")
    models = moves.declared_models(runtime.models)
    progress = _Progress(env.err, "copy")
    try:
        copied = moves.copy_tenants(source, target, chosen, models, args.replace, progress)
    except ValueError as exc:
        raise SystemExit(f"bastion: copy: {exc}") from None
    progress.done()
    to = StorageURL(args.target).redacted
    for (tenant, counts), records in zip(chosen.items(), copied, strict=True):
        runtime.security_event("tenant_copied", domain=tenant, records=records, target=to, replaced=args.replace,
                               origin=ORIGIN, admin=admin())
        print(f"copied {tenant}: {records} records ({_total(counts.history)} history entries) to {to}", file=env.out)
    if not args.verify:
        return 0
    return _verify(env, source, target, list(chosen))


def _verify(env: CommandEnv, source: TenantStore, target: TenantStore, tenants: list[str]) -> int:
    records = history = 0
    differences: list[str] = []
    for tenant in tenants:
        n, h, found = moves.verify(source, target, tenant)
        records, history = records + n, history + h
        differences += found
    for line in differences:
        print(f"differs: {line}", file=env.out)
    if differences:
        print(f"verify: {len(differences)} difference{'s' * (len(differences) != 1)} in {len(tenants)} tenants",
              file=env.out)
        return 1
    print(f"verified {len(tenants)} tenant{'s' * (len(tenants) != 1)}: {records} records and {history} history "
          "entries identical on both sides", file=env.out)
    return 0


# -- delete-tenant -------------------------------------------------------------------------------------------------


def delete_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tenant", metavar="D", help="the tenant (its host name, e.g. alpha.example.com)")
    parser.add_argument("--yes", action="store_true", help="do not ask for the tenant's name again")


def delete_tenant(args: argparse.Namespace, env: CommandEnv) -> int:
    """``bastion delete-tenant D [--yes]``: every record, user, history entry, session, nonce, ban and lock of D."""
    tenant = _tenant(args.tenant)

    def work(runtime: Runtime) -> int:
        stores = _stores(runtime)
        counts = moves.merged(store.tenant_counts(tenant) for store in stores)
        if counts.empty:
            raise SystemExit(f"bastion: delete-tenant: {tenant} holds nothing (no record, history or live state)")
        if not args.yes:
            _confirm(tenant, counts, env)
        for store in stores:
            store.delete_tenant(tenant)
        runtime.security_event("tenant_deleted", domain=tenant, level=logging.WARNING, records=_total(counts.records),
                               history=_total(counts.history), state=_total(counts.state), origin=ORIGIN, admin=admin())
        print(f"deleted {tenant}: {describe(counts)}", file=env.out)
        return 0

    return _run_on_runtime(env, work)


def _confirm(tenant: str, counts: TenantCounts, env: CommandEnv) -> None:
    """Ask for the tenant's name again; stop, deleting nothing, unless it is typed as shown."""
    print(f"This deletes everything {tenant} holds, for good: {describe(counts)}.", file=env.err)
    print("Type the tenant's name to confirm: ", end="", file=env.err, flush=True)
    answer = sys.stdin.readline()
    if answer.strip() != tenant:
        raise SystemExit(f"bastion: delete-tenant: {'no answer' if not answer else 'the name typed is not ' + tenant}"
                         ": nothing was deleted")


#: The commands, as ``(name, run, help, arguments)`` rows of :data:`kernel.cli.COMMANDS`.
COMMANDS: tuple[tuple[str, Callable[..., int], str, Callable[[argparse.ArgumentParser], None] | None], ...] = (
    ("tenants", tenants, "list every tenant holding data: records per model, history entries, live state", None),
    ("export", export, "export tenants (records, users, history; never sessions) to a file", export_arguments),
    ("import", import_, "import an export, all or nothing per tenant (--replace: replace what a tenant holds)",
     import_arguments),
    ("copy", copy, "copy tenants from one storage URL to another (--verify: and compare both sides)",
     copy_arguments),
    ("delete-tenant", delete_tenant, "delete everything a tenant holds (asks for its name again unless --yes)",
     delete_arguments),
)
