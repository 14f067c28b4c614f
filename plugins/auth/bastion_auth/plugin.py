"""The hook implementations of the auth plugin."""

from __future__ import annotations

import logging
import secrets
import sys
import threading

from bastion_auth import users
from bastion_auth.core import Auth
from bastion_auth.passwords import Passwords
from bastion_auth.resources import LoginResource, LogoutResource
from bastion_auth.settings import AUTH_SCHEMA
from kernel import hookimpl
from kernel.errors import ConfigError

log = logging.getLogger("bastion.auth")
_lock = threading.Lock()

# One Auth per runtime, kept on the runtime itself so that nothing global survives it.
_EXTRA = "bastion_auth"


def get_auth(runtime) -> Auth:
    """Return the runtime's :class:`Auth`, building it on first use."""
    auth = runtime.extras.get(_EXTRA)
    if auth is None:
        with _lock:
            auth = runtime.extras.get(_EXTRA)
            if auth is None:
                auth = runtime.extras[_EXTRA] = Auth(runtime, runtime.config.section("auth", AUTH_SCHEMA))
    return auth


@hookimpl
def bastion_configure(config):
    """Claim ``[auth]`` and check that every ``[users]`` value is a password hash."""
    settings = config.section("auth", AUTH_SCHEMA)
    if settings.absolute_timeout < settings.idle_timeout:
        raise ConfigError(f"{config.label}: [auth] absolute_timeout: must be at least idle_timeout "
                          f"({settings.idle_timeout})")
    passwords = Passwords(settings)
    for key, value in config.raw_section("users").items():
        try:
            users.split_key(key)
        except ValueError as exc:
            raise ConfigError(f"{config.label}: [users] {key}: {exc}") from None
        if not passwords.identify(value):
            raise ConfigError(f"{config.label}: [users] {key}: not a password hash; "
                              "accepted: the output of `bastion hash-password`")


@hookimpl
def bastion_models():
    """The User model."""
    return [users.User]


@hookimpl
def bastion_routes(app, runtime):
    """Add ``/auth/login`` and ``/auth/logout``."""
    app.add_route("/auth/login", LoginResource(lambda: get_auth(runtime)))
    app.add_route("/auth/logout", LogoutResource(lambda: get_auth(runtime)))


@hookimpl
def bastion_startup(runtime, config):
    """Warm the dummy hash, create the ``[users]`` accounts, and the demo user in development."""
    auth = get_auth(runtime)
    auth.passwords.warm()
    now = runtime.clock()
    for key, hashed in config.raw_section("users").items():
        username, domain = users.split_key(key)
        with runtime.bind(domain):
            if users.create(username, hashed, now):
                log.info("created user %s@%s from [users]", username, domain)
    if runtime.development and auth.settings.demo_user and not runtime.records.domains(users.User.__model__):
        password = secrets.token_urlsafe(12)
        with runtime.bind("localhost"):
            if users.create("demo", auth.passwords.hash(password), now):
                # Shown once, on the terminal of a development server only; never logged.
                print(f"\n  Development mode: log in at http://localhost:9000/ as demo / {password}\n",
                      file=sys.stderr, flush=True)


@hookimpl
def bastion_admit(request):
    """Step 3: refuse a banned origin (a login, or a call refused at step 4 or 5)."""
    get_auth(request.runtime).admit(request)


@hookimpl
def bastion_authenticate(request, service):
    """Steps 3 and 6 to 10 for ``/api/*`` and ``/auth/logout``."""
    return get_auth(request.runtime).authenticate(request)


@hookimpl
def bastion_refused(request, error):
    """Weigh the refusal against the origin."""
    if request.domain:
        auth = get_auth(request.runtime)
        auth.abuse.weigh(request.domain, request.origin, error, auth.clock())


@hookimpl
def bastion_cli(subparsers, runtime_factory):
    """Add ``adduser``, ``passwd``, ``deluser`` and ``users``."""
    from bastion_auth.cli import register

    register(subparsers, runtime_factory, get_auth)
