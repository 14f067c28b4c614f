"""The ``bastion`` command line.

The kernel brings ``serve``, ``plugins``, ``check`` (with ``--deploy``) and
``--version``; plugins add their own commands through the ``bastion_cli``
hook (the auth plugin adds ``adduser``, ``passwd``, ``deluser``, ``users``,
``roles``, ``sessions``, ``end-sessions``, ``unlock``, ``unban`` and
``hash-password``; the SQL plugin ``initdb``).

Commands log through the INI file's logging (``kernel.ops.logs``), as the server
does: the security events of an administrative command land where the
server's do.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import kernel.server.serve as serve
from kernel.core.config import load_config
from kernel.core.errors import BastionError, ConfigError
from kernel.core.plugins import describe, get_plugin_manager
from kernel.core.urls import StorageURL
from kernel.ops.logs import LoggingState, configure_logging
from kernel.version import __version__


def _cmd_plugins(args, pm, runtime_factory) -> int:
    for row in describe(pm):
        print(f"{row['name']}  {row['distribution']} {row['version']}")
        for hook in row["hooks"]:
            print(f"    {hook}")
    return 0


def _cmd_check(args, pm, runtime_factory) -> int:
    from kernel.http.app import HttpSettings

    if args.deploy:
        return _check_deploy(args, pm, runtime_factory)
    try:
        runtime = runtime_factory()
    except BastionError as exc:
        return _unavailable(exc, load_config(args.config))
    try:
        config = runtime.config
        HttpSettings.from_config(config)  # hosts, proxies, the static folder
        try:
            runtime.ping()
        except BastionError as exc:
            return _unavailable(exc, config)
        print(f"ok: {config.label}: {_urls(config)} answer; "
              f"{len(runtime.services.names())} services, {len(list(runtime.models))} models")
        if config.bastion.development:
            print("note: development = true: never for production; `bastion check --deploy` names every problem")
    finally:
        runtime.close()
    return 0


def _unavailable(exc: BastionError, config) -> int:
    print(f"bastion: {exc}: {config.label}: {_urls(config)}", file=sys.stderr)
    return 1


def _urls(config) -> str:
    """``storage <url> and state <url>``, every password hidden."""
    settings = config.bastion
    return (f"storage {StorageURL(settings.storage).redacted} and state "
            f"{StorageURL(settings.state or settings.storage).redacted}")


def _check_deploy(args, pm, runtime_factory) -> int:
    """``check --deploy``: every plugin's problems, also when the storage cannot be opened."""
    from kernel.http.app import HttpSettings
    from kernel.ops.deploy import ERROR, Problem, collect

    problems: list[Problem] = []
    try:
        runtime = runtime_factory()
    except BastionError as exc:  # the storage cannot be opened: name the other problems all the same
        config = load_config(args.config)
        problems.append(Problem.error("bastion.E000", f"the storage does not answer: {exc}",
                                      f"check {_urls(config)}"))
        problems += collect(config, None, pm.hook)
    else:
        try:
            config = runtime.config
            try:
                HttpSettings.from_config(config)
            except ConfigError as exc:
                if "allowed_hosts" not in str(exc):  # bastion.E003 names that one
                    problems.append(Problem.error("bastion.E013", str(exc)))
            answers = True
            try:
                runtime.ping()
                print(f"ok: {config.label}: {_urls(config)} answer")
            except BastionError as exc:
                answers = False
                problems.append(Problem.error("bastion.E000", f"the storage does not answer: {exc}",
                                              f"check {_urls(config)}"))
            # The checks that read the storage (runtime given) are skipped when it does not answer.
            problems += collect(config, runtime if answers else None, runtime.hook)
        finally:
            runtime.close()
    problems.sort(key=lambda p: p.level != ERROR)
    errors = [p for p in problems if p.level == ERROR]
    warnings = [p for p in problems if p.level != ERROR]
    for problem in problems:
        print(f"{problem.level:<7} {problem.id}: {problem.message}")
        if problem.hint:
            print(f"        hint: {problem.hint}")
    failing = errors + (warnings if args.fail_level == "warning" else [])
    summary = f"{len(errors)} error{'s' * (len(errors) != 1)}, {len(warnings)} warning{'s' * (len(warnings) != 1)}"
    if failing:
        print(f"check --deploy: {summary}: not ready for production")
        return 1
    print(f"check --deploy: {summary}: ready for production")
    return 0


def build_parser(pm, runtime_factory) -> argparse.ArgumentParser:
    """Build the argument parser, with the plugins' sub-commands."""
    parser = argparse.ArgumentParser(prog="bastion", description="Manage a Bastion server.")
    parser.add_argument("--config", help="INI file (default: $BASTION_CONFIG, else ./bastion.ini)")
    parser.add_argument("--version", action="version", version=f"bastion {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("plugins", help="list installed plugins and the hooks they implement")
    p.set_defaults(func=lambda a: _cmd_plugins(a, pm, runtime_factory))
    p = sub.add_parser("check", help="load configuration and plugins, open the storage (--deploy: and judge it "
                                     "for production)")
    p.add_argument("--deploy", action="store_true",
                   help="name every problem of this configuration for production; exit 1 on an error")
    p.add_argument("--fail-level", choices=("error", "warning"), default="error",
                   help="with --deploy: the level that makes the command fail (default: error)")
    p.set_defaults(func=lambda a: _cmd_check(a, pm, runtime_factory))
    # Listed for --help; main() runs it before any plugin loads (see kernel.server.serve).
    serve.add_parser(sub).set_defaults(func=lambda a: serve.main([], a.config))
    pm.hook.bastion_cli(subparsers=sub, runtime_factory=runtime_factory)
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``bastion`` command; return its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command, config_path = _command(argv)
    if command is not None and argv[command] == "serve":
        # gunicorn's master must not import the plugins: its workers do (and see new code on a reload).
        return serve.main(argv[command + 1:], config_path)
    logging_state = LoggingState()  # put back on the way out: a test may run commands in its own process
    try:
        pm = get_plugin_manager()

        def runtime_factory():
            from kernel.core.runtime import Runtime

            config = load_config(config_path)
            configure_logging(config)
            # A plugin manager of its own: a runtime registers its plugin objects in it.
            return Runtime(config, get_plugin_manager())

        parser = build_parser(pm, runtime_factory)
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except (ConfigError, BastionError, RuntimeError, ValueError) as exc:
        print(f"bastion: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        logging_state.restore()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
