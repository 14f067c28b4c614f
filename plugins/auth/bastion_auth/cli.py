"""``bastion adduser | passwd | deluser | users | roles | sessions | end-sessions | unlock | unban | hash-password``.

Every command that changes something acts on the configured storage (any
driver: the state of sessions, locks and bans lives in the state store the
servers share) and writes its security event on ``bastion.security``, with
``origin`` ``cli`` and the operating-system user who ran it as ``admin``.
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import sys
import time

from bastion_auth import events, users
from bastion_auth.passwords import Passwords
from bastion_auth.sessions import SHOWN_SID
from bastion_auth.settings import AUTH_SCHEMA
from kernel import load_config

#: The origin of the security events of these commands.
ORIGIN = "cli"


def read_password(args: argparse.Namespace, prompt: str = "Password: ") -> str:
    """Read a password from stdin (``--password-stdin``) or prompt twice on the terminal."""
    if getattr(args, "password_stdin", False):
        line = sys.stdin.readline()
        if not line:
            raise SystemExit("bastion: no password on standard input (it ended before a line)")
        password = line.rstrip("\r\n")
    else:
        try:
            password = getpass.getpass(prompt)
            again = getpass.getpass("Again: ")
        except EOFError:
            raise SystemExit("bastion: no password given: the input ended (no terminal? use --password-stdin "
                             "and pipe it one line)") from None
        if again != password:
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


def admin() -> str:
    """Who runs the command: the operating-system user."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in this environment
        return "?"


def iso(when: float) -> str:
    """A Unix time as UTC ISO 8601, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def register(subparsers, runtime_factory, get_auth) -> None:
    """Add the user-management and administration commands."""

    def with_runtime(fn):
        def run(args):
            runtime = runtime_factory()
            try:
                return fn(args, runtime, get_auth(runtime))
            finally:
                runtime.close()
        return run

    def event(auth, name, user, domain, **fields):
        auth.runtime.security_event(name, user=user, domain=domain, origin=ORIGIN, admin=admin(), **fields)

    def adduser(args, runtime, auth):
        domain = _domain(args.domain)
        _check_username(args.username)
        if not runtime.config.allows_host(domain):
            hosts = ", ".join(runtime.config.allowed_hosts) or "none"
            print(f"bastion: warning: {domain} is not in [bastion] allowed_hosts ({hosts}): the server refuses its "
                  f"requests (400 InvalidHost), so {args.username} cannot log in until it is added", file=sys.stderr)
        password = read_password(args)
        try:
            hashed = auth.passwords.hash(password)
        except ValueError as exc:
            raise SystemExit(f"bastion: {exc}") from None
        with runtime.bind(domain):
            if not users.create(args.username, hashed, runtime.clock()):
                raise SystemExit(f"bastion: user {args.username}@{domain} already exists")
        event(auth, "user_created", args.username, domain)
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
        event(auth, "password_changed", args.username, domain, sessions_ended=ended)
        print(f"password of {args.username}@{domain} changed; ended {ended} session(s)")
        return 0

    def deluser(args, runtime, auth):
        domain = _domain(args.domain)
        with runtime.bind(domain):
            if not users.delete(args.username):
                raise SystemExit(f"bastion: no user {args.username}@{domain}")
        ended = auth.sessions.end_all(domain, args.username)
        event(auth, "user_deleted", args.username, domain, sessions_ended=ended)
        print(f"deleted {args.username}@{domain}; ended {ended} session(s)")
        return 0

    def domains_of(args, runtime) -> list[str]:
        return [_domain(args.domain)] if args.domain else runtime.records.domains(users.User.__model__)

    def list_users(args, runtime, auth):
        now = runtime.clock()
        for domain in domains_of(args, runtime):
            with runtime.bind(domain):
                names = users.list_usernames()
            for username in names:
                live = len(auth.sessions.live(domain, username, now))
                line = f"{username}@{domain}  sessions {live}"
                until = auth.accounts.locked_until(domain, username)
                if until is not None:
                    line += f"  locked until {iso(until)} ({max(1, round(until - now))} s)"
                print(line)
        return 0

    def sessions(args, runtime, auth):
        now = runtime.clock()
        if args.username and not args.domain:
            raise SystemExit("bastion: sessions USER needs --domain")
        found = []
        for domain in domains_of(args, runtime):
            if args.username:
                names = [args.username]
            else:
                with runtime.bind(domain):
                    names = users.list_usernames()
            for username in names:
                found.extend(auth.sessions.live(domain, username, now))
        for s in found:
            print(f"{s.username}@{s.domain}  session {s.sid[:SHOWN_SID]}...  created {iso(s.created)}  "
                  f"last seen {iso(s.last_seen)}  from {s.origin or '?'}  expires {iso(s.expires)}")
        print(f"{len(found)} live session(s)")
        return 0

    def end_sessions(args, runtime, auth):
        domain = _domain(args.domain)
        live = auth.sessions.live(domain, args.username, runtime.clock())
        ended = auth.sessions.end_all(domain, args.username)
        event(auth, "sessions_ended", args.username, domain, sessions_ended=ended,
              sessions=",".join(s.sid[:SHOWN_SID] for s in live) or None)
        print(f"ended {ended} session(s) of {args.username}@{domain}")
        return 0

    def unlock(args, runtime, auth):
        domain = _domain(args.domain)
        _check_username(args.username)
        was_locked = auth.accounts.unlock(domain, args.username)
        event(auth, "account_unlocked", args.username, domain, was_locked=was_locked)
        print(f"unlocked {args.username}@{domain}" if was_locked else
              f"{args.username}@{domain} was not locked; its failed logins are forgotten")
        return 0

    def unban(args, runtime, auth):
        domain = _domain(args.domain)
        origin = _origin(args.origin)
        was_banned = auth.abuse.banned_until(domain, origin, runtime.clock()) is not None
        auth.abuse.unban(domain, origin)
        event(auth, "unbanned", None, domain, banned_origin=origin, was_banned=was_banned)
        print(f"unbanned {origin} in {domain}" if was_banned else
              f"{origin} was not banned in {domain}; its abuse weight is forgotten")
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
            events.roles_assigned(runtime, domain, args.username, wanted, "bastion roles", origin=ORIGIN, admin=admin())
        print(f"{who}: {', '.join(wanted) or '(no roles)'}" + ("" if changed else " (unchanged)"))
        if who in auth.bootstrap_roles:
            print(f"bastion: note: [roles] names {who} ({', '.join(auth.bootstrap_roles[who]) or 'no roles'}): "
                  "the server gives it those again at its next start", file=sys.stderr)
        return 0

    for name, fn, help_text, prompt in (
        ("adduser", adduser, "create a user", True),
        ("passwd", passwd, "change a user's password (and end its sessions)", True),
        ("deluser", deluser, "delete a user and end its sessions", False),
        ("end-sessions", end_sessions, "end every session of a user (log out everywhere)", False),
        ("unlock", unlock, "end the lock of an account locked after failed logins", False),
    ):
        p = subparsers.add_parser(name, help=help_text)
        p.add_argument("username")
        p.add_argument("--domain", required=True, help="the tenant, e.g. localhost or alpha.example.com")
        if prompt:
            p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
        p.set_defaults(func=with_runtime(fn))
    p = subparsers.add_parser("unban", help="end the ban of an origin (a client address) in a domain")
    p.add_argument("origin", help="the client address, as the security log shows it (e.g. 203.0.113.7)")
    p.add_argument("--domain", required=True, help="the tenant the origin is banned in")
    p.set_defaults(func=with_runtime(unban))
    p = subparsers.add_parser("hash-password", help="print an argon2id hash for the [users] section")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    p.set_defaults(func=hash_password)
    p = subparsers.add_parser("users", help="list users, with their live sessions and whether they are locked")
    p.add_argument("--domain", help="only this domain")
    p.set_defaults(func=with_runtime(list_users))
    p = subparsers.add_parser("sessions", help="list live sessions (created, last seen, origin; never a key)")
    p.add_argument("username", nargs="?", help="only this user's (with --domain)")
    p.add_argument("--domain", help="only this domain")
    p.set_defaults(func=with_runtime(sessions))
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


def _origin(text: str) -> str:
    """An origin as the server writes it: an IP address in its canonical form."""
    try:
        return str(ipaddress.ip_address(text.strip().strip("[]")))
    except ValueError:
        raise SystemExit(f"bastion: {text!r} is not an IP address (the origin the security log shows)") from None


def _check_username(username: str) -> None:
    try:
        users.check_username(username)
    except ValueError as exc:
        raise SystemExit(f"bastion: {exc}") from None


__all__ = ["register", "read_password", "hash_password"]
