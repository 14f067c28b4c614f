"""``bastion adduser | passwd | deluser | users | roles | hash-password``."""

from __future__ import annotations

import argparse
import getpass
import sys

from bastion_auth import events, users
from bastion_auth.passwords import Passwords
from bastion_auth.settings import AUTH_SCHEMA
from kernel import load_config


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


def hash_password(args: argparse.Namespace) -> int:
    """Print an argon2id hash for ``[users]``, under the ``[auth]`` policy of the configuration.

    Only ``[auth]`` is read (no storage is opened): the hash is made with the
    parameters and the length rule the server will apply.
    """
    config = load_config(getattr(args, "config", None))
    passwords = Passwords(config.section("auth", AUTH_SCHEMA))
    try:
        print(passwords.hash(read_password(args)))
    except ValueError as exc:
        raise SystemExit(f"bastion: {exc}") from None
    return 0


def register(subparsers, runtime_factory, get_auth) -> None:
    """Add the user-management commands."""

    def with_runtime(fn):
        def run(args):
            runtime = runtime_factory()
            try:
                return fn(args, runtime, get_auth(runtime))
            finally:
                runtime.close()
        return run

    def adduser(args, runtime, auth):
        domain = _domain(args.domain)
        _check_username(args.username)
        password = read_password(args)
        try:
            hashed = auth.passwords.hash(password)
        except ValueError as exc:
            raise SystemExit(f"bastion: {exc}") from None
        with runtime.bind(domain):
            if not users.create(args.username, hashed, runtime.clock()):
                raise SystemExit(f"bastion: user {args.username}@{domain} already exists")
        print(f"created {args.username}@{domain}")
        return 0

    def passwd(args, runtime, auth):
        domain = _domain(args.domain)
        with runtime.bind(domain):
            if users.find(args.username) is None:
                raise SystemExit(f"bastion: no user {args.username}@{domain}")
            password = read_password(args, "New password: ")
            try:
                hashed = auth.passwords.hash(password)
            except ValueError as exc:
                raise SystemExit(f"bastion: {exc}") from None
            users.set_password(args.username, hashed)
        # A password is changed because the old one may be known: its sessions go with it.
        ended = auth.sessions.end_all(domain, args.username)
        print(f"password of {args.username}@{domain} changed; ended {ended} session(s)")
        return 0

    def deluser(args, runtime, auth):
        domain = _domain(args.domain)
        with runtime.bind(domain):
            if not users.delete(args.username):
                raise SystemExit(f"bastion: no user {args.username}@{domain}")
        ended = auth.sessions.end_all(domain, args.username)
        print(f"deleted {args.username}@{domain}; ended {ended} session(s)")
        return 0

    def list_users(args, runtime, auth):
        domains = [_domain(args.domain)] if args.domain else runtime.records.domains(users.User.__model__)
        for domain in domains:
            with runtime.bind(domain):
                for username in users.list_usernames():
                    print(f"{username}@{domain}")
        return 0

    def roles(args, runtime, auth):
        domain = _domain(args.domain)
        _check_username(args.username)
        who = f"{args.username}@{domain}"
        with runtime.bind(domain):
            if args.set is None:
                record = users.find(args.username)
                if record is None:
                    raise SystemExit(f"bastion: no user {who}")
                print(f"{who}: {', '.join(users.roles_of(args.username)) or '(no roles)'}")
                return 0
            try:
                wanted = users.parse_roles(args.set)
            except ValueError as exc:
                raise SystemExit(f"bastion: --set: {exc}") from None
            changed = users.set_roles(args.username, wanted)
        if changed is None:
            raise SystemExit(f"bastion: no user {who}")
        if changed:
            events.roles_assigned(domain, args.username, wanted, "bastion roles")
        print(f"{who}: {', '.join(wanted) or '(no roles)'}" + ("" if changed else " (unchanged)"))
        if who in auth.bootstrap_roles:
            print(f"bastion: note: [roles] names {who} ({', '.join(auth.bootstrap_roles[who]) or 'no roles'}): "
                  "the server gives it those again at its next start", file=sys.stderr)
        return 0

    for name, fn, help_text, prompt in (
        ("adduser", adduser, "create a user", True),
        ("passwd", passwd, "change a user's password", True),
        ("deluser", deluser, "delete a user and end its sessions", False),
    ):
        p = subparsers.add_parser(name, help=help_text)
        p.add_argument("username")
        p.add_argument("--domain", required=True, help="the tenant, e.g. localhost or alpha.example.com")
        if prompt:
            p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
        p.set_defaults(func=with_runtime(fn))
    p = subparsers.add_parser("hash-password", help="print an argon2id hash for the [users] section")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    p.set_defaults(func=hash_password)
    p = subparsers.add_parser("users", help="list users")
    p.add_argument("--domain", help="only this domain")
    p.set_defaults(func=with_runtime(list_users))
    p = subparsers.add_parser("roles", help="show a user's roles, or set them with --set")
    p.add_argument("username")
    p.add_argument("--domain", required=True, help="the tenant, e.g. localhost or alpha.example.com")
    p.add_argument("--set", metavar="ROLES", help="the user's roles from now on, comma-separated (\"\" for none)")
    p.set_defaults(func=with_runtime(roles))


def _domain(text: str) -> str:
    try:
        return users.normalize_domain(text)
    except ValueError as exc:
        raise SystemExit(f"bastion: --domain: {exc}") from None


def _check_username(username: str) -> None:
    try:
        users.check_username(username)
    except ValueError as exc:
        raise SystemExit(f"bastion: {exc}") from None
