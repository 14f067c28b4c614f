"""The auth plugin's entry point: its module-level hooks, and the per-runtime :class:`Auth` it registers."""

from __future__ import annotations

from bastion_auth import passkey_store, users
from bastion_auth.core import Auth
from bastion_auth.settings import deploy_problems, read, read_tenants
from kernel import PluginSettings, Problem, Runtime, hookimpl

#: The name the runtime's Auth is registered under.
NAME = "bastion_auth.runtime"


def get_auth(runtime: Runtime) -> Auth:
    """Return the :class:`Auth` registered for ``runtime`` (commands and tests use it)."""
    auth = runtime.get_plugin(NAME)
    if not isinstance(auth, Auth):
        raise LookupError("the auth plugin is not loaded in this runtime")
    return auth


@hookimpl
def bastion_configure(settings: PluginSettings, runtime: Runtime) -> None:
    """Claim ``[auth]``, its tenants' ``[auth:...]`` sections, ``[users]`` and ``[roles]``, and register this
    runtime's :class:`Auth`."""
    auth, bootstrap, roles = read(settings)
    runtime.register(Auth(runtime, auth, bootstrap, roles, read_tenants(settings, auth)), name=NAME)


@hookimpl
def bastion_models():
    """The User model, and the Passkey model of its passkeys."""
    return [users.User, passkey_store.Passkey]


@hookimpl
def bastion_deploy_checks(settings: PluginSettings, runtime: Runtime | None) -> list[Problem]:
    """argon2 below OWASP's floor, bans or locks turned off, a short password rule, a demo user left behind."""
    return deploy_problems(settings, runtime)


@hookimpl
def bastion_cli(subparsers, runtime_factory):
    """Add ``adduser``, ``passwd``, ``deluser``, ``users``, ``roles``, ``sessions``, ``end-sessions``, ``locks``, ``unlock``,
    ``unban`` and ``hash-password``."""
    from bastion_auth.cli import register

    register(subparsers, runtime_factory, get_auth)
