"""``bastion adduser | passwd | deluser | users | roles | sessions | end-sessions | passkeys | locks | unlock | unban |
reset-2fa |
hash-password``.

Every command that changes something acts on the configured storage (any
driver: the state of sessions, locks and bans lives in the state store the
servers share) and writes its security event on ``bastion.security``, with
``origin`` ``cli`` and the operating-system user who ran it as ``admin``.

Each command answers in sentences: what it did, or what it found, including
that there is nothing to list ("No users in 127.0.0.1.").

Each command is a function of its parsed arguments and a :class:`Console`
(the runtime it acts on, that runtime's Auth, the output streams), given
rather than fetched, so that each reads on its own; :data:`COMMANDS` names
them with their help and arguments, and :func:`register` (the plugin's
``bastion_cli``) adds that table to the ``bastion`` parser.
"""

from __future__ import annotations

import argparse
import functools
import getpass
import ipaddress
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from bastion_auth import events, passkey_store, users
from bastion_auth.passwords import Passwords
from bastion_auth.sessions import SHOWN_SID
from bastion_auth.settings import AUTH_SCHEMA
from kernel import load_config

if TYPE_CHECKING:
    from bastion_auth.core import Auth
    from kernel import Runtime

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


def admin() -> str:
    """Who runs the command: the operating-system user."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in this environment
        return "?"


def iso(when: float) -> str:
    """A Unix time as UTC ISO 8601, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def count(n: int, thing: str) -> str:
    """``1 live session``, ``2 live sessions``, ``no live session``."""
    return f"no {thing}" if n == 0 else f"{n} {thing}{'s' * (n != 1)}"


def ended_sessions(n: int) -> str:
    """What ending a user's sessions did, as the end of a sentence about the user."""
    return "it had no live session" if n == 0 else f"ended its {count(n, 'live session')}"


def lock_end(until: float, now: float) -> str:
    """``locked until 2026-01-01T00:00:00Z (in 300 s)``."""
    return f"locked until {iso(until)} (in {max(1, round(until - now))} s)"


def roles_sentence(who: str, roles: tuple[str, ...] | list[str], verb: str = "has") -> str:
    """``bob@d has the roles admin, editor.``, ``... has the role admin.``, ``... has no roles.``"""
    if not roles:
        return f"{who} {verb} no roles."
    return f"{who} {verb} the role{'s' * (len(roles) != 1)} {', '.join(roles)}."


def nothing_in(what: str, args: argparse.Namespace) -> str:
    """``No users in 127.0.0.1.``, or ``No users.`` without ``--domain``."""
    return f"No {what} in {_domain(args.domain)}." if args.domain else f"No {what}."


@dataclass(frozen=True)
class Console:
    """What a command that acts on the storage is given: the runtime it opened, its Auth, where to write."""

    runtime: Runtime
    auth: Auth
    out: TextIO
    err: TextIO

    def say(self, text: str) -> None:
        print(text, file=self.out)

    def warn(self, text: str) -> None:
        print(text, file=self.err)

    def event(self, name: str, user: str | None, domain: str, **fields) -> None:
        """Write a security event of this command: ``origin=cli`` and the ``admin`` who ran it."""
        self.runtime.security_event(name, user=user, domain=domain, origin=ORIGIN, admin=admin(), **fields)


# -- accounts -----------------------------------------------------------------------------------------------------------


def adduser(args: argparse.Namespace, console: Console) -> int:
    """``bastion adduser USER --domain D``: create a user; never overwrite one."""
    runtime, domain = console.runtime, _domain(args.domain)
    _check_username(args.username)
    if not runtime.config.allows_host(domain):
        hosts = ", ".join(runtime.config.allowed_hosts) or "none"
        console.warn(f"bastion: warning: {domain} is not in [bastion] allowed_hosts ({hosts}): the server refuses its "
                     f"requests (400 InvalidHost), so {args.username} cannot log in until it is added")
    hashed = _hash(console.auth.tenant(domain).passwords, read_password(args))  # the tenant's length rule
    with runtime.bind(domain):
        if not users.create(args.username, hashed, runtime.clock()):
            raise SystemExit(f"bastion: user {args.username}@{domain} already exists")
    console.event("user_created", args.username, domain)
    console.say(f"Created the user {args.username}@{domain}.")
    return 0


def passwd(args: argparse.Namespace, console: Console) -> int:
    """``bastion passwd USER --domain D``: change a password and end the user's sessions."""
    domain = _domain(args.domain)
    with console.runtime.bind(domain):
        if users.find(args.username) is None:
            raise SystemExit(f"bastion: no user {args.username}@{domain}")
        hashed = _hash(console.auth.tenant(domain).passwords, read_password(args, "New password: "))
        users.set_password(args.username, hashed)
    # A password is changed because the old one may be known: its sessions go with it.
    ended = console.auth.sessions.end_all(domain, args.username)
    console.event("password_changed", args.username, domain, sessions_ended=ended)
    console.say(f"Changed the password of {args.username}@{domain}; {ended_sessions(ended)}.")
    return 0


def deluser(args: argparse.Namespace, console: Console) -> int:
    """``bastion deluser USER --domain D``: delete a user and end its sessions."""
    domain = _domain(args.domain)
    with console.runtime.bind(domain):
        if not users.delete(args.username):
            raise SystemExit(f"bastion: no user {args.username}@{domain}")
    ended = console.auth.sessions.end_all(domain, args.username)
    console.event("user_deleted", args.username, domain, sessions_ended=ended)
    console.say(f"Deleted the user {args.username}@{domain}; {ended_sessions(ended)}.")
    return 0


def list_users(args: argparse.Namespace, console: Console) -> int:
    """``bastion users [--domain D]``: each user, its live sessions, and the end of its lock if locked; then the
    locked usernames no user has (someone guessing them); "No users ..." when a domain, or every one, has none."""
    runtime, auth = console.runtime, console.auth
    now, said = runtime.clock(), False
    for domain in _domains(args, runtime, locks_of=auth):
        with runtime.bind(domain):
            names = users.list_usernames()
        if not names and args.domain:
            console.say(f"No users in {domain}.")
        with runtime.bind(domain):
            second = {username for username in names if auth.second.active(users.find(username))}
        for username in names:
            line = f"{username}@{domain}: {count(len(auth.sessions.live(domain, username, now)), 'live session')}"
            line += "; two-step sign-in on" if username in second else ""
            with runtime.bind(domain):
                keys = passkey_store.count_of(username)
            line += f"; {count(keys, 'passkey')}" if keys else ""
            until = auth.accounts.locked_until(domain, username)
            console.say(line + (f"; {lock_end(until, now)} after failed logins." if until is not None else "."))
        for username, until in auth.accounts.locked(domain):
            if username not in names:
                console.say(f"{username}@{domain} is no user, but is {lock_end(until, now)} after failed logins.")
                said = True
        said = said or bool(names) or bool(args.domain)
    if not said:
        console.say("No users.")
    return 0


def locks(args: argparse.Namespace, console: Console) -> int:
    """``bastion locks [--domain D]``: every locked username, whether a user has it or not, and when its lock ends."""
    runtime, auth = console.runtime, console.auth
    now, said = runtime.clock(), False
    for domain in _domains(args, runtime, locks_of=auth):
        locked = auth.accounts.locked(domain)
        with runtime.bind(domain):
            known = set(users.list_usernames()) if locked else set()
        for username, until in locked:
            unknown = "" if username in known else "; no user has that name"
            console.say(f"{username}@{domain} is {lock_end(until, now)}{unknown}.")
            said = True
    if not said:
        console.say(f"No account is locked in {_domain(args.domain)}." if args.domain else "No account is locked.")
    return 0


# -- passkeys -----------------------------------------------------------------------------------------------------------


def passkeys(args: argparse.Namespace, console: Console) -> int:
    """``bastion passkeys USER --domain D [--remove=ID]``: a user's passkeys (id, name, created, last used), or
    remove one, and end the sessions it opened. (An id may begin with ``-``, which argparse takes for an option
    unless it is written ``--remove=ID``: the listing says so.)"""
    domain = _domain(args.domain)
    _check_username(args.username)
    with console.runtime.bind(domain):
        if users.find(args.username) is None:
            raise SystemExit(f"bastion: no user {args.username}@{domain}")
        if args.remove is None:
            records = passkey_store.of_user(args.username)
        elif not passkey_store.remove(args.username, args.remove):
            raise SystemExit(f"bastion: {args.username}@{domain} has no passkey {args.remove}")
    if args.remove is not None:
        ended = console.auth.sessions.end_opened_with(domain, args.username, args.remove, console.runtime.clock())
        console.event("passkey_removed", args.username, domain, passkey=args.remove[:8], sessions_ended=ended)
        console.say(f"Removed the passkey {args.remove} of {args.username}@{domain}; {ended_sessions(ended)}.")
        return 0
    for record in records:
        used = iso(record.last_used) if record.last_used else "never"
        console.say(f"{record._id}  {record.name}  created {iso(record.created)}, last used {used}")
    console.say(f"{args.username}@{domain} has {count(len(records), 'passkey')}.")
    if records:
        console.say(f"Remove one with: bastion passkeys {args.username} --domain {domain} --remove=ID")
    return 0


def passkeys_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("username")
    parser.add_argument("--domain", required=True, help="the tenant")
    parser.add_argument("--remove", metavar="ID", help="remove this passkey and end the sessions it opened (its id "
                        "as listed; write --remove=ID: an id may begin with -)")


# -- roles --------------------------------------------------------------------------------------------------------------


def roles(args: argparse.Namespace, console: Console) -> int:
    """``bastion roles [USER] [--domain D] [--set ROLES]``: every user's roles (of a domain, or of all), a user's,
    or set a user's."""
    if args.username is None:
        if args.set is not None:
            raise SystemExit("bastion: roles --set needs a USER and --domain")
        return _list_roles(args, console)
    if not args.domain:
        raise SystemExit("bastion: roles USER needs --domain")
    domain = _domain(args.domain)
    _check_username(args.username)
    if args.set is None:
        return _show_roles(console, args.username, domain)
    return _set_roles(console, args.username, domain, args.set)


def _list_roles(args: argparse.Namespace, console: Console) -> int:
    said = False
    for domain in _domains(args, console.runtime):
        with console.runtime.bind(domain):
            for username in users.list_usernames():
                console.say(roles_sentence(f"{username}@{domain}", users.roles_of(username)))
                said = True
    if not said:
        console.say(nothing_in("users", args))
    return 0


def _show_roles(console: Console, username: str, domain: str) -> int:
    with console.runtime.bind(domain):
        if users.find(username) is None:
            raise SystemExit(f"bastion: no user {username}@{domain}")
        console.say(roles_sentence(f"{username}@{domain}", users.roles_of(username)))
    return 0


def _set_roles(console: Console, username: str, domain: str, text: str) -> int:
    """Set the roles; the event only when they changed; a note when ``[roles]`` gives others at the next start."""
    who = f"{username}@{domain}"
    with console.runtime.bind(domain):
        try:
            wanted = users.parse_roles(text)
        except ValueError as exc:
            raise SystemExit(f"bastion: --set: {exc}") from None
        changed = users.set_roles(username, wanted, console.auth.roles_epoch)
    if changed is None:
        raise SystemExit(f"bastion: no user {who}")
    if changed:
        events.roles_assigned(console.runtime, domain, username, wanted, "bastion roles", origin=ORIGIN, admin=admin())
    console.say(roles_sentence(who, wanted, "now has") if changed else
                roles_sentence(who, wanted, "already has")[:-1] + ": nothing changed.")
    bootstrap = console.auth.bootstrap_roles
    if who in bootstrap:
        console.warn(f"bastion: note: [roles] names {who} ({', '.join(bootstrap[who]) or 'no roles'}): "
                     "the server gives it those again at its next start")
    return 0


# -- sessions, locks, bans ----------------------------------------------------------------------------------------------


def sessions(args: argparse.Namespace, console: Console) -> int:
    """``bastion sessions [USER --domain D]``: the live sessions (a sid's first characters, never a key)."""
    if args.username and not args.domain:
        raise SystemExit("bastion: sessions USER needs --domain")
    runtime, now = console.runtime, console.runtime.clock()
    found = []
    for domain in _domains(args, runtime):
        if args.username:
            names = [args.username]
        else:
            with runtime.bind(domain):
                names = users.list_usernames()
        for username in names:
            found.extend(console.auth.sessions.live(domain, username, now))
    for s in found:
        console.say(f"{s.username}@{s.domain}: session {s.sid[:SHOWN_SID]}..., created {iso(s.created)}, "
                    f"last seen {iso(s.last_seen)} from {s.origin or 'an unknown address'}, expires {iso(s.expires)}.")
    total = count(len(found), "live session")
    console.say(total[0].upper() + total[1:] + ".")
    return 0


def end_sessions(args: argparse.Namespace, console: Console) -> int:
    """``bastion end-sessions USER --domain D``: log a user out everywhere."""
    domain, auth = _domain(args.domain), console.auth
    live = auth.sessions.live(domain, args.username, console.runtime.clock())
    ended = auth.sessions.end_all(domain, args.username)
    console.event("sessions_ended", args.username, domain, sessions_ended=ended,
                  sessions=",".join(s.sid[:SHOWN_SID] for s in live) or None)
    console.say(f"Ended {count(ended, 'live session')} of {args.username}@{domain}." if ended else
                f"{args.username}@{domain} had no live session.")
    return 0


def unlock(args: argparse.Namespace, console: Console) -> int:
    """``bastion unlock USER --domain D``: end an account's lock and forget its failed logins."""
    domain = _domain(args.domain)
    _check_username(args.username)
    was_locked = console.auth.accounts.unlock(domain, args.username)
    console.event("account_unlocked", args.username, domain, was_locked=was_locked)
    console.say(f"Unlocked {args.username}@{domain}." if was_locked else
                f"{args.username}@{domain} was not locked; its failed logins are forgotten.")
    return 0


def reset_2fa(args: argparse.Namespace, console: Console) -> int:
    """``bastion reset-2fa USER --domain D``: remove a user's second factor (TOTP secret, pending enrolment and
    recovery codes), for a user who lost it; the password alone logs in again (or, where it is required, lets
    the user enrol anew). The user's sessions stay."""
    domain = _domain(args.domain)
    with console.runtime.bind(domain):
        record = users.find(args.username)
        if record is None:
            raise SystemExit(f"bastion: no user {args.username}@{domain}")
        had = console.auth.second.active(record)
        users.set_second_factor(args.username, totp="", totp_pending="", recovery=[])
    console.event("second_factor_reset", args.username, domain, had_second_factor=had)
    console.say(f"Removed the two-step sign-in of {args.username}@{domain}." if had else
                f"{args.username}@{domain} had no two-step sign-in; any enrolment in progress is dropped.")
    return 0


def unban(args: argparse.Namespace, console: Console) -> int:
    """``bastion unban ORIGIN --domain D``: end an origin's ban and forget its abuse weight."""
    domain, origin, abuse = _domain(args.domain), _origin(args.origin), console.auth.abuse
    was_banned = abuse.banned_until(domain, origin, console.runtime.clock()) is not None
    abuse.unban(domain, origin)
    console.event("unbanned", None, domain, banned_origin=origin, was_banned=was_banned)
    console.say(f"Unbanned {origin} in {domain}." if was_banned else
                f"{origin} was not banned in {domain}; its abuse weight is forgotten.")
    return 0


# -- hash-password (no storage) -----------------------------------------------------------------------------------------


def hash_password(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Print an argon2id hash for ``[users]``, under the ``[auth]`` policy of the configuration.

    Only ``[auth]`` is read (no storage is opened): the hash is made with the
    parameters and the length rule the server will apply.
    """
    config = load_config(getattr(args, "config", None))
    passwords = Passwords(config.section("auth", AUTH_SCHEMA))
    print(_hash(passwords, read_password(args)), file=out if out is not None else sys.stdout)
    return 0


# -- arguments ----------------------------------------------------------------------------------------------------------


def user_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("username")
    parser.add_argument("--domain", required=True, help="the tenant, e.g. localhost or alpha.example.com")


def password_stdin_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--password-stdin", action="store_true", help="read the password from standard input")


def user_password_arguments(parser: argparse.ArgumentParser) -> None:
    user_arguments(parser)
    password_stdin_argument(parser)


def unban_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("origin", help="the client address, as the security log shows it (e.g. 203.0.113.7)")
    parser.add_argument("--domain", required=True, help="the tenant the origin is banned in")


def users_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--domain", help="only this domain")


def sessions_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("username", nargs="?", help="only this user's (with --domain)")
    parser.add_argument("--domain", help="only this domain")


def roles_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("username", nargs="?", help="only this user's (with --domain); without: every user's")
    parser.add_argument("--domain", help="the tenant (with USER), or only this domain's users")
    parser.add_argument("--set", metavar="ROLES", help="the user's roles from now on, comma-separated (\"\" for none)")


def locks_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--domain", help="only this domain")


# -- the table ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """A row of the plugin's command table.

    ``run(args, console)`` returns the exit status, on a runtime opened for it
    and closed after; with ``opens_runtime`` false, ``run(args, out)`` opens none.
    """

    name: str
    run: Callable[..., int]
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    opens_runtime: bool = True


#: The plugin's commands, in the order ``bastion --help`` lists them.
COMMANDS: tuple[Command, ...] = (
    Command("adduser", adduser, "create a user", user_password_arguments),
    Command("passwd", passwd, "change a user's password (and end its sessions)", user_password_arguments),
    Command("deluser", deluser, "delete a user and end its sessions", user_arguments),
    Command("end-sessions", end_sessions, "end every session of a user (log out everywhere)", user_arguments),
    Command("unlock", unlock, "end the lock of an account locked after failed logins", user_arguments),
    Command("unban", unban, "end the ban of an origin (a client address) in a domain", unban_arguments),
    Command("reset-2fa", reset_2fa, "remove a user's two-step sign-in (TOTP and recovery codes)", user_arguments),
    Command("hash-password", hash_password, "print an argon2id hash for the [users] section", password_stdin_argument,
            opens_runtime=False),
    Command("users", list_users, "list users, with their live sessions and whether they are locked (and locked "
                                 "usernames that are no user)", users_arguments),
    Command("sessions", sessions, "list live sessions (created, last seen, origin; never a key)", sessions_arguments),
    Command("roles", roles, "show every user's roles, or a user's, or set them with --set", roles_arguments),
    Command("passkeys", passkeys, "list a user's passkeys, or remove one with --remove", passkeys_arguments),
    Command("locks", locks, "list the accounts locked after failed logins, usernames that are no user included",
            locks_arguments),
)


def register(subparsers, runtime_factory: Callable[[], Runtime], get_auth: Callable[[Runtime], Auth]) -> None:
    """Add :data:`COMMANDS` to the ``bastion`` parser (``get_auth``: the Auth of a runtime)."""
    for command in COMMANDS:
        parser = subparsers.add_parser(command.name, help=command.help)
        command.arguments(parser)
        parser.set_defaults(func=functools.partial(run_command, command, runtime_factory, get_auth))


def run_command(command: Command, runtime_factory: Callable[[], Runtime], get_auth: Callable[[Runtime], Auth],
                args: argparse.Namespace) -> int:
    """Run ``command`` on a runtime of its own (closed after, whatever happens) when it needs one."""
    if not command.opens_runtime:
        return command.run(args, sys.stdout)
    runtime = runtime_factory()
    try:
        return command.run(args, Console(runtime, get_auth(runtime), sys.stdout, sys.stderr))
    finally:
        runtime.close()


# -- input --------------------------------------------------------------------------------------------------------------


def _hash(passwords: Passwords, password: str) -> str:
    """The password's hash, or the one line saying which rule it breaks."""
    try:
        return passwords.hash(password)
    except ValueError as exc:
        raise SystemExit(f"bastion: {exc}") from None


def _domains(args: argparse.Namespace, runtime: Runtime, locks_of: Auth | None = None) -> list[str]:
    """``--domain``, else every domain that has users (and, with ``locks_of``, every one that had a lock lately)."""
    if args.domain:
        return [_domain(args.domain)]
    found = set(runtime.records.domains(users.User.__model__))
    if locks_of is not None:
        found |= set(locks_of.accounts.locked_domains())
    return sorted(found)


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


__all__ = ["COMMANDS", "Command", "Console", "register", "read_password", "hash_password"]
