"""The ``bastion`` command line.

The kernel brings ``plugins``, ``check`` and ``hash-password``; plugins add
their own commands through the ``bastion_cli`` hook (the auth plugin adds
``adduser``, ``passwd``, ``deluser`` and ``users``; the SQL plugin ``initdb``).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence

from kernel.config import load_config
from kernel.errors import BastionError, ConfigError
from kernel.passwords import (
    ARGON2_MEMORY_COST,
    ARGON2_PARALLELISM,
    ARGON2_TIME_COST,
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
    argon2_context,
)
from kernel.plugins import describe, get_plugin_manager


def read_password(args: argparse.Namespace, prompt: str = "Password: ") -> str:
    """Read a password from stdin (``--password-stdin``) or prompt twice on the terminal."""
    if getattr(args, "password_stdin", False):
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(prompt)
        if getpass.getpass("Again: ") != password:
            raise SystemExit("bastion: the passwords do not match")
    if not password:
        raise SystemExit("bastion: empty password")
    return password


#: The ``[auth]`` keys of the argon2id parameters, and their defaults.
ARGON2_KEYS = {"argon2_memory_cost": ARGON2_MEMORY_COST, "argon2_time_cost": ARGON2_TIME_COST,
               "argon2_parallelism": ARGON2_PARALLELISM}


def password_context(config=None):
    """Return the argon2id context of the ``[auth]`` parameters of ``config``, else the defaults.

    The kernel does not own ``[auth]``; it only reads these three numbers so
    that hashes made here need no upgrade at the first login.
    """
    params = dict(ARGON2_KEYS)
    if config is not None and config.has_section("auth"):
        for key in params:
            raw = config.parser.get("auth", key, fallback=None)
            if raw is not None:
                try:
                    params[key] = int(raw)
                except ValueError:
                    raise ConfigError(f"{config.label}: [auth] {key} = {raw!r}: invalid value; accepted: an integer") from None
    return argon2_context(params["argon2_memory_cost"], params["argon2_time_cost"], params["argon2_parallelism"])


def _cmd_plugins(args, pm, runtime_factory) -> int:
    for row in describe(pm):
        print(f"{row['name']}  {row['distribution']} {row['version']}")
        for hook in row["hooks"]:
            print(f"    {hook}")
    return 0


def _cmd_check(args, pm, runtime_factory) -> int:
    runtime = runtime_factory()
    try:
        runtime.ping()
    finally:
        runtime.close()
    print(f"ok: {runtime.config.label}: storage {runtime.config.bastion.storage} answers; "
          f"{len(runtime.services.names())} services, {len(list(runtime.models))} models")
    return 0


def _cmd_hash_password(args, pm, runtime_factory) -> int:
    password = read_password(args)
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise SystemExit(f"bastion: a password has {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters")
    print(password_context(load_config(args.config)).hash(password))
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
    p = sub.add_parser("hash-password", help="print an argon2id hash for the [users] section")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    p.set_defaults(func=lambda a: _cmd_hash_password(a, pm, runtime_factory))
    pm.hook.bastion_cli(subparsers=sub, runtime_factory=runtime_factory)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``bastion`` command; return its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = None
    if "--config" in argv:
        i = argv.index("--config")
        config_path = argv[i + 1] if i + 1 < len(argv) else None
    try:
        pm = get_plugin_manager()

        def runtime_factory():
            from kernel.runtime import Runtime

            return Runtime(load_config(config_path), pm)

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
