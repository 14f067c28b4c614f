"""pytest fixtures of the auth plugin: apps with users, and clients logged in as them.

Installing the plugin registers this module under the ``pytest11`` entry
point ``bastion_auth``, beside the kernel's ``bastion`` fixtures
(``make_app``, ``fake_clock``, ...) it builds on::

    def test_alice_adds_a_todo(users_app, login):
        users_app({"alice@localhost": "correct horse battery"}, only=["storage_mem", "todo"])
        alice = login("alice@localhost")
        assert alice.call("add", "Play")["text"] == "Play"

``users_app(users, sections=None, plugins=(), only=None, clock=None)``
    An in-process app (``make_app``: development mode, ``mem://``, the
    ``fake_clock``) whose ``[users]`` are ``users``: ``{"username@domain":
    "plain password"}``. The passwords are hashed with cheap argon2id
    parameters (:data:`CHEAP_AUTH`), and the app's ``[auth]`` is given the
    same ones, so that logins cost a millisecond and need no rehash;
    ``sections["auth"]`` is merged over them. ``only`` (the installed plugins
    to load) always gets ``auth``. The app is closed after the test.
``login(user, password=None, app=None, remote_addr="127.0.0.1")``
    A :class:`kernel.testing.Client` of ``app`` (by default the last
    ``users_app``), on the user's domain and the app's clock, logged in as
    ``user`` (``"username@domain"``, or ``"username"`` at ``localhost``) with
    the password ``users_app`` was given unless told another.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pytest

from bastion_auth.passwords import argon2_context
from bastion_auth.users import split_key
from kernel.testing import Client

#: Cheap argon2id parameters for tests (the defaults cost ~19 MiB and tens of milliseconds per hash).
CHEAP_AUTH = {"argon2_memory_cost": 64, "argon2_time_cost": 1}


def cheap_hash(password: str) -> str:
    """An argon2id hash of ``password`` at :data:`CHEAP_AUTH`."""
    return argon2_context(CHEAP_AUTH["argon2_memory_cost"], CHEAP_AUTH["argon2_time_cost"]).hash(password)


def user_key(user: str) -> tuple[str, str]:
    """``"alice@Alpha.localhost"`` -> ``("alice", "alpha.localhost")``; a bare username is at ``localhost``."""
    return split_key(user if "@" in user else f"{user}@localhost")


class UsersApps:
    """The ``users_app`` factory; it remembers each app's plain passwords for ``login``."""

    def __init__(self, make_app):
        self._make_app = make_app
        #: (app, {(username, domain): password}) in the order the apps were made.
        self.apps: list[tuple[object, dict[tuple[str, str], str]]] = []

    def __call__(self, users: Mapping[str, str] | None = None, sections: Mapping[str, Mapping] | None = None,
                 plugins: Iterable[object] = (), only: Iterable[str] | None = None, clock=None):
        passwords = {user_key(user): password for user, password in (users or {}).items()}
        merged = {name: dict(values) for name, values in (sections or {}).items()}
        merged["auth"] = {**CHEAP_AUTH, **merged.get("auth", {})}
        if passwords:
            merged["users"] = {**merged.get("users", {}),
                               **{f"{name}@{domain}": cheap_hash(pw) for (name, domain), pw in passwords.items()}}
        if only is not None:
            only = list(only)
            if "auth" not in only:
                only.append("auth")
        app = self._make_app(merged, plugins=plugins, only=only, clock=clock)
        self.apps.append((app, passwords))
        return app

    def password(self, app, username: str, domain: str) -> str:
        """The plain password ``users_app`` was given for a user of ``app``."""
        for made, passwords in self.apps:
            if made is app:
                try:
                    return passwords[(username, domain)]
                except KeyError:
                    known = ", ".join(f"{n}@{d}" for n, d in passwords) or "none"
                    raise LookupError(f"users_app was given no password for {username}@{domain} (its users: {known}); "
                                      "pass login(..., password=...)") from None
        raise LookupError("this app was not made by users_app: pass login(..., password=...)")


@pytest.fixture
def users_app(make_app) -> UsersApps:
    """Factory of in-process apps with users given as plain passwords (hashed cheaply), closed after the test."""
    return UsersApps(make_app)


@pytest.fixture
def login(users_app):
    """Factory of in-process clients logged in: ``login("alice@localhost")`` returns the :class:`Client`."""

    def log_in(user: str, password: str | None = None, app=None, remote_addr: str = "127.0.0.1") -> Client:
        if app is None:
            if not users_app.apps:
                raise LookupError("login() needs an app: call users_app(...) first, or pass app=")
            app = users_app.apps[-1][0]
        username, domain = user_key(user)
        if password is None:
            password = users_app.password(app, username, domain)
        client = Client(app=app, host=domain, remote_addr=remote_addr, clock=app.runtime.clock)
        client.login(username, password)
        return client

    return log_in
