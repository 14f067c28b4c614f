"""The ``bastion`` command line.

The kernel brings ``serve``, ``plugins`` and ``check``; plugins add their own commands
through the ``bastion_cli`` hook (the auth plugin adds ``adduser``,
``passwd``, ``deluser``, ``users`` and ``hash-password``; the SQL plugin
``initdb``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import kernel.serve as serve
from kernel.config import load_config
from kernel.errors import BastionError, ConfigError
from kernel.plugins import describe, get_plugin_manager
from kernel.urls import StorageURL


def _cmd_plugins(args, pm, runtime_factory) -> int:
    for row in describe(pm):
        print(f"{row['name']}  {row['distribution']} {row['version']}")
        for hook in row["hooks"]:
            print(f"    {hook}")
    return 0


def _cmd_check(args, pm, runtime_factory) -> int:
    from kernel.app import HttpSettings

    runtime = runtime_factory()
    try:
        HttpSettings.from_config(runtime.config)  # hosts, proxies, the static folder
        runtime.ping()
    finally:
        runtime.close()
    settings = runtime.config.bastion
    storage = StorageURL(settings.storage)
    state = StorageURL(settings.state or settings.storage)
    print(f"ok: {runtime.config.label}: storage {storage.redacted} and state {state.redacted} answer; "
          f"{len(runtime.services.names())} services, {len(list(runtime.models))} models")
    return 0


def build_parser(pm, runtime_factory) -> argparse.ArgumentParser:
    """Build the argument parser, with the plugins' sub-commands."""
    parser = argparse.ArgumentParser(prog="bastion", description="Manage a Bastion server.")
    parser.add_argument("--config", help="INI file (default: $BASTION_CONFIG, else ./bastion.ini)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("plugins", help="list installed plugins and the hooks they implement")
    p.set_defaults(func=lambda a: _cmd_plugins(a, pm, runtime_factory))
    p = sub.add_parser("check", help="load configuration and plugins, open the storage")
    p.set_defaults(func=lambda a: _cmd_check(a, pm, runtime_factory))
    # Listed for --help; main() runs it before any plugin loads (see kernel.serve).
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
    try:
        pm = get_plugin_manager()

        def runtime_factory():
            from kernel.runtime import Runtime

            # A plugin manager of its own: a runtime registers its plugin objects in it.
            return Runtime(load_config(config_path), get_plugin_manager())

        parser = build_parser(pm, runtime_factory)
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except (ConfigError, BastionError, RuntimeError, ValueError) as exc:
        print(f"bastion: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
