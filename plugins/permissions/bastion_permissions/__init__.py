"""Bastion's default authorization: who may call which service, by role (docs/protocol.md section 4, step 12).

The ``[permissions]`` section names services and the roles that may call them::

    [permissions]
    clear_completed = admin
    history = editor, admin

A service it lists is open only to a caller holding one of those roles; any
other authenticated caller gets 403 Forbidden. A service it does not list is
open to every authenticated user. A name that is no service stops the start
(checked in ``bastion_check``, once every plugin's services are known).

The caller's roles are ``request.roles`` (``kernel.Request``): with the auth
plugin, the roles stored with the user (``[roles]``, ``bastion roles``), read
at the call. This plugin needs nothing else, so another authorization can
replace it (leave ``permissions`` out of ``BASTION_LOAD_PLUGINS``) or stand
beside it (any plugin's False denies).
"""

from __future__ import annotations

import re

from kernel import Config, ConfigError, PluginSettings, Request, Runtime, hookimpl

#: A role's name: 1 to 64 letters, digits or ``_.-`` (the auth plugin stores the same).
ROLE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: A service's name, as ``kernel.service`` accepts it.
SERVICE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")

#: The name this runtime's :class:`Permissions` is registered under.
NAME = "bastion_permissions.runtime"


def read(config: PluginSettings | Config) -> dict[str, frozenset[str]]:
    """Claim ``[permissions]``: service -> the roles that may call it. ConfigError names a bad key or value."""
    rules: dict[str, frozenset[str]] = {}
    for service, value in config.raw_section("permissions").items():
        where = f"{config.label}: [permissions] {service}"
        if not SERVICE.fullmatch(service):
            raise ConfigError(f"{where}: not a service name; accepted: service = role, role")
        roles = [part.strip() for part in re.split(r"[,\n]", value) if part.strip()]
        if not roles:
            raise ConfigError(f"{where}: names no role; accepted: service = role, role (a service not listed is "
                              "open to every authenticated user)")
        for role in roles:
            if not ROLE.fullmatch(role):
                raise ConfigError(f"{where} = {value!r}: {role!r} is not a role name; accepted: 1 to 64 letters, "
                                  "digits or _.-")
        rules[service] = frozenset(roles)
    return rules


class Permissions:
    """The ``[permissions]`` rules of one runtime, and the hooks that apply them."""

    def __init__(self, label: str, rules: dict[str, frozenset[str]]):
        self.label = label
        self.rules = rules

    @hookimpl
    def bastion_check(self, runtime: Runtime) -> None:
        """Every service ``[permissions]`` names must exist: a typo would leave the real one open to everyone."""
        known = set(runtime.services.names())
        for service in self.rules:
            if service not in known:
                raise ConfigError(f"{self.label}: [permissions] {service}: no such service; accepted: one of "
                                  f"{', '.join(sorted(known)) or 'none'}")

    @hookimpl
    def bastion_has_permission(self, service: str, request: Request) -> bool | None:
        """Allow a listed service only to a caller with one of its roles; leave unlisted ones open (None)."""
        allowed = self.rules.get(service)
        if allowed is None:
            return None
        return not allowed.isdisjoint(request.roles)

    def allowed(self, service: str) -> frozenset[str] | None:
        """The roles that may call ``service``, or None when it is open to every authenticated user."""
        return self.rules.get(service)


@hookimpl
def bastion_configure(settings: PluginSettings, runtime: Runtime) -> None:
    """Claim ``[permissions]`` and register this runtime's :class:`Permissions`."""
    runtime.register(Permissions(settings.label, read(settings)), name=NAME)
