"""The ``bastion`` command line.

The kernel brings ``serve``, ``plugins``, ``check`` (with ``--deploy``),
``--version``, and the tenant commands of :mod:`kernel.tenants.commands`
(``tenants``, ``export``, ``import``, ``copy``, ``delete-tenant``); plugins add their own commands through the ``bastion_cli``
hook (the auth plugin adds ``adduser``, ``passwd``, ``deluser``, ``users``,
``roles``, ``sessions``, ``end-sessions``, ``locks``, ``unlock``, ``unban`` and
``hash-password``; the SQL plugin ``initdb``).

Each of the kernel's commands is a function of its parsed arguments and a
:class:`CommandEnv` (what it is given rather than fetches: the plugin
manager, the runtime factory, the output streams); :data:`COMMANDS` names
them, and the parser is built from it, so that a command is read, and tested
through :func:`main` with the plugin manager of the test's choosing, on its own.

Commands log through the INI file's logging (``kernel.ops.logs``), as the server
does: the security events of an administrative command land where the
server's do.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TextIO

import pluggy

import kernel.server.serve as serve
from kernel.core.config import load_config
from kernel.core.errors import BastionError, ConfigError
from kernel.core.plugins import describe, get_plugin_manager
from kernel.core.urls import StorageURL
from kernel.ops.logs import LoggingState, configure_logging
from kernel.tenants.commands import COMMANDS as TENANT_COMMANDS
from kernel.version import __version__

if TYPE_CHECKING:
    from kernel.core.runtime import Runtime
    from kernel.ops.deploy import Problem


@dataclass(frozen=True)
class CommandEnv:
    """What a kernel command is given besides its arguments, so that a test can give its own."""

    pm: pluggy.PluginManager
    runtime_factory: Callable[[], Runtime]
    out: TextIO
    err: TextIO


class CommandFunction(Protocol):
    """A kernel command: a function of its parsed arguments and its :class:`CommandEnv`, returning the exit status."""

    def __call__(self, args: argparse.Namespace, env: CommandEnv) -> int: ...


@dataclass(frozen=True)
class Command:
    """A row of the kernel's command table: ``run(args, env)`` returns the exit status."""

    name: str
    run: CommandFunction
    help: str
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    description: str | None = None


# -- plugins ----------------------------------------------------------------------------------------------------------


def plugins(args: argparse.Namespace, env: CommandEnv) -> int:
    """``bastion plugins``: each plugin with its distribution and every hook it implements (also on the objects it
    registers when a runtime opens, with their class)."""
    for row in describe(env.pm):
        print(f"{row['name']}  {row['distribution']} {row['version']}", file=env.out)
        for hook in row["hooks"]:
            cls = row["registered"].get(hook)
            print(f"    {hook}" + (f"  (on {cls}, registered when a runtime opens)" if cls else ""), file=env.out)
    return 0


# -- check ------------------------------------------------------------------------------------------------------------


def check_arguments(parser: argparse.ArgumentParser) -> None:
    """``--deploy`` and ``--fail-level``."""
    parser.add_argument("--deploy", action="store_true",
                        help="name every problem of this configuration for production; exit 1 on an error")
    parser.add_argument("--fail-level", choices=("error", "warning"), default="error",
                        help="with --deploy: the level that makes the command fail (default: error)")
    parser.add_argument("--tenant", metavar="DOMAIN",
                        help="also print the settings that apply to this tenant (a host name), and the section "
                             "each value comes from")


def check(args: argparse.Namespace, env: CommandEnv) -> int:
    """``bastion check``: the configuration loads, the plugins accept it and the storage answers."""
    from kernel.http.app import HttpSettings

    if args.deploy:
        return check_deploy(args, env)
    try:
        runtime = env.runtime_factory()
    except BastionError as exc:
        return _unavailable(exc, load_config(args.config), env.err)
    try:
        config = runtime.config
        HttpSettings.from_config(config)  # hosts, proxies, the static folder
        try:
            runtime.ping()
        except BastionError as exc:
            return _unavailable(exc, config, env.err)
        print(f"ok: {config.label}: {_urls(config)} answer; {_count(len(runtime.services.names()), 'service')} "
              f"and {_count(len(list(runtime.models)), 'model')}.", file=env.out)
        if config.bastion.development:
            print("note: development = true is never for production; `bastion check --deploy` names every problem.",
                  file=env.out)
        if args.tenant is not None:
            return _tenant(args.tenant, runtime, env)
    finally:
        runtime.close()
    return 0


def _tenant(host: str, runtime: Runtime, env: CommandEnv) -> int:
    """``check --tenant``: every plugin's settings that apply to the tenant, each with the section it comes from."""
    from kernel.core.errors import InvalidHost
    from kernel.core.hosts import parse_domain

    try:
        domain = parse_domain(host)
    except InvalidHost as exc:
        print(f"bastion: --tenant {host!r}: {exc}; accepted: a host name such as alpha.example.com",
              file=env.err)
        return 2
    rows = [row for rows in runtime.pm.hook.bastion_tenant_settings(domain=domain, runtime=runtime) or ()
            for row in rows or ()]
    print(f"tenant {domain}:", file=env.out)
    width = max((len(f"{key} = {value}") for key, value, _ in rows), default=0)
    for key, value, source in rows:
        print(f"  {f'{key} = {value}':<{width}}  from {source}", file=env.out)
    if not runtime.config.allows_host(domain):
        print(f"note: {domain} is not in [bastion] allowed_hosts: its requests are refused", file=env.out)
    return 0


def _count(n: int, thing: str) -> str:
    """``1 service``, ``2 services``, ``no services``."""
    return f"{n or 'no'} {thing}{'s' * (n != 1)}"


def _unavailable(exc: BastionError, config, err: TextIO) -> int:
    print(f"bastion: {exc}: {config.label}: {_urls(config)}", file=err)
    return 1


def _urls(config) -> str:
    """``storage <url> and state <url>``, every password hidden."""
    settings = config.bastion
    return (f"storage {StorageURL(settings.storage).redacted} and state "
            f"{StorageURL(settings.state or settings.storage).redacted}")


def _no_answer(exc: BastionError, config) -> Problem:
    from kernel.ops.deploy import Problem

    return Problem.error("bastion.E000", f"the storage does not answer: {exc}", f"check {_urls(config)}")


# -- check --deploy ---------------------------------------------------------------------------------------------------


def check_deploy(args: argparse.Namespace, env: CommandEnv) -> int:
    """``check --deploy``: every plugin's problems, also when the storage cannot be opened."""
    from kernel.ops.deploy import collect

    try:
        runtime = env.runtime_factory()
    except BastionError as exc:  # the storage cannot be opened: name the other problems all the same
        config = load_config(args.config)
        problems = [_no_answer(exc, config), *collect(config, None, env.pm)]
    else:
        try:
            problems = _runtime_problems(runtime, env.out)
        finally:
            runtime.close()
    return _report(problems, args.fail_level, env.out)


def _runtime_problems(runtime: Runtime, out: TextIO) -> list[Problem]:
    """The problems of an opened runtime's configuration; those of the storage's contents when it answers."""
    from kernel.http.app import HttpSettings
    from kernel.ops.deploy import Problem, collect

    config = runtime.config
    problems: list[Problem] = []
    try:
        HttpSettings.from_config(config)
    except ConfigError as exc:
        if "allowed_hosts" not in str(exc):  # bastion.E003 names that one
            problems.append(Problem.error("bastion.E013", str(exc)))
    try:
        runtime.ping()
    except BastionError as exc:
        # The checks that read the storage (runtime given) are skipped when it does not answer.
        return [*problems, _no_answer(exc, config), *collect(config, None, runtime.pm)]
    print(f"ok: {config.label}: {_urls(config)} answer", file=out)
    return [*problems, *collect(config, runtime, runtime.pm)]


def _report(problems: list[Problem], fail_level: str, out: TextIO) -> int:
    """Print the problems, errors first, and the verdict; 1 when one of them is at ``fail_level`` or worse."""
    from kernel.ops.deploy import ERROR

    problems = sorted(problems, key=lambda p: p.level != ERROR)
    errors = [p for p in problems if p.level == ERROR]
    warnings = [p for p in problems if p.level != ERROR]
    for problem in problems:
        print(f"{problem.level:<7} {problem.id}: {problem.message}", file=out)
        if problem.hint:
            print(f"        hint: {problem.hint}", file=out)
    failing = errors + (warnings if fail_level == "warning" else [])
    summary = f"{len(errors)} error{'s' * (len(errors) != 1)}, {len(warnings)} warning{'s' * (len(warnings) != 1)}"
    if failing:
        print(f"check --deploy: {summary}: not ready for production", file=out)
        return 1
    print(f"check --deploy: {summary}: ready for production", file=out)
    return 0


# -- serve ------------------------------------------------------------------------------------------------------------


def serve_command(args: argparse.Namespace, env: CommandEnv) -> int:
    """``bastion serve``: listed for ``--help``; :func:`main` runs it before any plugin loads (see
    :mod:`kernel.server.serve`), so the parser reaches it only when nothing else could."""
    return serve.main([], args.config)


# -- the table and the parser -----------------------------------------------------------------------------------------

#: The kernel's commands, in the order ``bastion --help`` lists them (the plugins' follow).
COMMANDS: tuple[Command, ...] = (
    Command("plugins", plugins, "list installed plugins and the hooks they implement"),
    Command("check", check, "load configuration and plugins, open the storage (--deploy: and judge it for "
                            "production)", check_arguments),
    Command("serve", serve_command, serve.HELP, description=serve.DESCRIPTION),
    # tenants, export, import, copy, delete-tenant (kernel/tenants/commands.py)
    *(Command(name, run, help, arguments) for name, run, help, arguments in TENANT_COMMANDS),
)


def global_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--version``, given before the command."""
    parser.add_argument("--config", help="INI file (default: $BASTION_CONFIG, else ./bastion.ini)")
    parser.add_argument("--version", action="version", version=f"bastion {__version__}")


def build_parser(env: CommandEnv) -> argparse.ArgumentParser:
    """Build the argument parser from :data:`COMMANDS`, then the plugins' sub-commands (``bastion_cli``)."""
    parser = argparse.ArgumentParser(prog="bastion", description="Manage a Bastion server.")
    global_arguments(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.description)
        if command.arguments is not None:
            command.arguments(p)
        p.set_defaults(func=functools.partial(command.run, env=env))
    env.pm.hook.bastion_cli(subparsers=sub, runtime_factory=env.runtime_factory)
    return parser


def open_runtime(config_path: str | None, pm: pluggy.PluginManager | None) -> Runtime:
    """The runtime a command acts on, logging configured from the same file, counting with the server's metrics
    (a command's security events are counted where the server's are).

    Without ``pm``, a plugin manager of its own: a runtime registers its plugin
    objects in it. A given one serves the runtime too (it unregisters them when
    closed, and a command opens one runtime at a time).
    """
    from kernel.core.runtime import Runtime
    from kernel.ops.metrics import Metrics

    config = load_config(config_path)
    configure_logging(config)
    return Runtime(config, pm if pm is not None else get_plugin_manager(), metrics=Metrics.from_config(config))


def _command(argv: Sequence[str]) -> tuple[int | None, str | None]:
    """Where the command is in ``argv`` (the first word that is neither an option nor ``--config``'s value),
    and the ``--config`` given before it (``--config FILE`` or ``--config=FILE``)."""
    i, config = 0, None
    while i < len(argv):
        if argv[i] == "--config":
            config = argv[i + 1] if i + 1 < len(argv) else None
            i += 2
        elif argv[i].startswith("--config="):
            config = argv[i].partition("=")[2]
            i += 1
        elif argv[i].startswith("-"):
            i += 1
        else:
            return i, config
    return None, config


def _run(argv: list[str], config_path: str | None, pm: pluggy.PluginManager | None) -> int:
    """Parse ``argv`` with every plugin's commands and run the one it names."""
    env = CommandEnv(pm if pm is not None else get_plugin_manager(),
                     functools.partial(open_runtime, config_path, pm), sys.stdout, sys.stderr)
    args = build_parser(env).parse_args(argv)
    return int(args.func(args) or 0)


def main(argv: Sequence[str] | None = None, pm: pluggy.PluginManager | None = None) -> int:
    """Run the ``bastion`` command; return its exit status.

    ``pm`` is the plugin manager the commands come from and their runtime is
    built with (a test gives its own); by default the installed plugins'.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    command, config_path = _command(argv)
    if command is not None and argv[command] == "serve":
        # gunicorn's master must not import the plugins: its workers do (and see new code on a reload).
        return serve.main(argv[command + 1:], config_path)
    logging_state = LoggingState()  # put back on the way out: a test may run commands in its own process
    try:
        return _run(argv, config_path, pm)
    except (ConfigError, BastionError, RuntimeError, ValueError) as exc:
        print(f"bastion: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        logging_state.restore()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
