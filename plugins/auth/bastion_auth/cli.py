"""``bastion adduser | passwd | deluser | users``."""

from __future__ import annotations

from kernel.cli import read_password

from bastion_auth import users


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
        password = read_password(args)
        try:
            hashed = auth.passwords.hash(password)
        except ValueError as exc:
            raise SystemExit(f"bastion: {exc}") from None
        with runtime.bind(args.domain.lower()):
            if not users.create(args.username, hashed, runtime.clock()):
                raise SystemExit(f"bastion: user {args.username}@{args.domain} already exists")
        print(f"created {args.username}@{args.domain}")
        return 0

    def passwd(args, runtime, auth):
        with runtime.bind(args.domain.lower()):
            if users.find(args.username) is None:
                raise SystemExit(f"bastion: no user {args.username}@{args.domain}")
            password = read_password(args, "New password: ")
            try:
                hashed = auth.passwords.hash(password)
            except ValueError as exc:
                raise SystemExit(f"bastion: {exc}") from None
            users.set_password(args.username, hashed)
        print(f"password of {args.username}@{args.domain} changed")
        return 0

    def deluser(args, runtime, auth):
        domain = args.domain.lower()
        with runtime.bind(domain):
            if not users.delete(args.username):
                raise SystemExit(f"bastion: no user {args.username}@{args.domain}")
        ended = auth.sessions.end_all(domain, args.username)
        print(f"deleted {args.username}@{args.domain}; ended {ended} session(s)")
        return 0

    def list_users(args, runtime, auth):
        domains = [args.domain.lower()] if args.domain else runtime.records.domains(users.User.__model__)
        for domain in domains:
            with runtime.bind(domain):
                for username in users.list_usernames():
                    print(f"{username}@{domain}")
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
    p = subparsers.add_parser("users", help="list users")
    p.add_argument("--domain", help="only this domain")
    p.set_defaults(func=with_runtime(list_users))
