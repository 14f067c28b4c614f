"""The accounts a start gives: the ``[users]`` and their ``[roles]``, and in development the demo user and its
banner (``bastion_startup``)."""

from __future__ import annotations

import logging
import secrets
import sys
from typing import TYPE_CHECKING

from bastion_auth import events, users
from kernel import Runtime

if TYPE_CHECKING:
    from bastion_auth.core import Auth

log = logging.getLogger("bastion.auth")

#: Seconds during which one worker's start-up message about the demo user stands for every worker's.
DEMO_BANNER_TTL = 30


def demo_url(bind: str) -> str | None:
    """The address of the demo user's tenant for a ``[server] bind``: ``http://localhost:<port>/``."""
    if bind.startswith("unix:"):
        return None
    return f"http://localhost:{bind.rsplit(':', 1)[-1]}/"


def create_users(auth: Auth, runtime: Runtime, now: float) -> None:
    """Create the ``[users]`` accounts that do not exist yet (an existing one keeps its password)."""
    for key, hashed in auth.bootstrap.items():
        username, domain = users.split_key(key)
        with runtime.bind(domain):
            if users.create(username, hashed, now):
                auth.event("user_created", username, domain=domain, origin="[users]")


def give_roles(auth: Auth, runtime: Runtime) -> None:
    """Give the ``[roles]`` users exactly the roles the file names (a change is a ``roles_assigned`` event)."""
    for key, roles in auth.bootstrap_roles.items():
        username, domain = users.split_key(key)
        with runtime.bind(domain):
            changed = users.set_roles(username, roles, auth.roles_epoch)
        if changed is None:
            log.warning("[roles] %s@%s: no such user; its roles are given once it exists and the server "
                        "starts again", username, domain)
        elif changed:
            events.roles_assigned(runtime, domain, username, roles, "[roles]")


def demo_user(auth: Auth, runtime: Runtime, now: float) -> None:
    """In development mode: create ``demo@localhost`` when no user exists, and say how to log in (once per start).

    The password is printed once, on the terminal of a development server,
    and never logged. At a later start (the data kept) the banner says how
    to reset it; of several workers starting together, one says so (the
    one that made the user, when one did).
    """
    url = demo_url(runtime.config.server.bind)
    where = f"at {url} " if url else ""
    tenant = ("  The tenant is the host name in the address bar: localhost. "
              f"{url.replace('localhost', '127.0.0.1') if url else '127.0.0.1'} is another tenant, with no user.")
    if not runtime.records.domains(users.User.__model__):
        password = secrets.token_urlsafe(12)
        with runtime.bind("localhost", origin="[demo]"):
            if users.create("demo", auth.passwords.hash(password), now):
                auth.event("user_created", "demo")
                auth.state.add("localhost", "demo:banner", 1, DEMO_BANNER_TTL)  # the others of this start: silent
                print(f"\n  Development mode: log in {where}as demo / {password}\n{tenant}\n",
                      file=sys.stderr, flush=True)
        return
    with runtime.bind("localhost"):
        exists = users.find("demo") is not None
    if exists and auth.state.add("localhost", "demo:banner", 1, DEMO_BANNER_TTL):
        print(f"\n  Development mode: log in {where}as demo (its password was printed when it was made).\n"
              f"  Forgot it? bastion passwd demo --domain localhost\n{tenant}\n", file=sys.stderr, flush=True)
