"""The auth plugin's object for one runtime: what it keeps, and its hooks, each handed to the module of its concern.

* :mod:`bastion_auth.login`: ``/auth/login`` and ``/auth/logout``, and the password check against the limits;
* :mod:`bastion_auth.calls`: signed calls (``bastion_admit``, ``bastion_authenticate``): the ban with the
  session, the MAC, the skew, the nonce, and the caller's roles;
* :mod:`bastion_auth.services`: the account services, ``change_password``, ``sessions``, ``end_sessions``;
* :mod:`bastion_auth.totp`: two-step sign-in, the code check of logins and the ``totp_*`` services;
* :mod:`bastion_auth.bootstrap`: the ``[users]`` and ``[roles]`` accounts, the demo user and its banner.

:class:`Auth` holds what they share: the settings, every tenant's (:mod:`bastion_auth.tenants`), the password
policy, the stores (sessions, abuse, accounts, over the runtime's state driver; each reads its limits from the
tenant of the domain it acts in), the clock, the login counter and the security events.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from bastion_auth import bootstrap, users
from bastion_auth.abuse import Abuse, Accounts
from bastion_auth.calls import SessionRead, SignedCalls
from bastion_auth.login import Login
from bastion_auth.passkeys import Passkeys
from bastion_auth.passwords import Passwords
from bastion_auth.roles import RolesEpoch
from bastion_auth.services import AccountServices
from bastion_auth.sessions import Sessions
from bastion_auth.tenants import Tenant, Tenants
from bastion_auth.totp import SecondFactor
from kernel import (
    Authentication,
    BastionError,
    Capability,
    Credentials,
    LiveCounts,
    Request,
    Routes,
    Runtime,
    Settings,
    StateStore,
    capabilities_of,
    hookimpl,
)


class Auth:
    """Everything the plugin keeps for one runtime: registered with it in ``bastion_configure``.

    Its stores are built on first use from the runtime's state driver (open
    once the runtime is built), so that commands use them without starting
    the runtime. ``login``, ``calls`` and ``account`` are the rooms its hooks
    hand over to; each reaches the stores through this object.
    """

    def __init__(self, runtime: Runtime, settings: Settings, bootstrap: dict[str, str],
                 bootstrap_roles: dict[str, list[str]] | None = None, tenants: Tenants | None = None):
        self.runtime = runtime
        #: ``[auth]``: the settings of every domain no ``[auth:...]`` section matches.
        self.settings = settings
        self.bootstrap = bootstrap
        #: ``[roles]``: ``username@domain`` (normalized) -> the roles it is given at every start.
        self.bootstrap_roles = bootstrap_roles or {}
        self.clock = runtime.clock
        #: Every tenant's settings, built at start-up: ``tenant(domain)`` resolves one (a bounded cache).
        self.tenants = tenants if tenants is not None else Tenants.single(settings, Passwords(settings))
        #: ``[auth]``'s password policy; the hash context every tenant shares is its ``context``.
        self.passwords = self.tenants.base.passwords
        self.login = Login(self)
        self.calls = SignedCalls(self)
        self.account = AccountServices(self)
        self.second = SecondFactor(self)
        self.passkeys = Passkeys(self)

    def tenant(self, domain: str) -> Tenant:
        """The settings of ``domain``'s tenant: its ``[auth:...]`` section's, else ``[auth]``'s."""
        return self.tenants.of(domain)

    @property
    def login_max_body(self) -> int:
        """The largest login body (see :func:`bastion_auth.login.login_max_body`)."""
        return self.login.max_body

    # -- what the rooms share -----------------------------------------------

    @functools.cached_property
    def state(self) -> StateStore:
        """The runtime's state driver."""
        return self.runtime.state

    @functools.cached_property
    def sessions(self) -> Sessions:
        """Sessions in the state store."""
        return Sessions(self.state, self.tenants.settings_of)

    def set_roles(self, domain: str, username: str, roles: list[str]) -> bool | None:
        """Give a user of ``domain`` exactly these roles (see :func:`bastion_auth.users.set_roles`): True if they
        changed, False if they were those already, None if there is no such user."""
        with self.runtime.bind(domain):
            return users.set_roles(username, roles, self.roles_epoch)

    @functools.cached_property
    def roles_epoch(self) -> RolesEpoch:
        """The domains' roles epochs: set when a user's roles change (see :mod:`bastion_auth.roles`)."""
        return RolesEpoch(self.state, self.tenants.settings_of)

    @functools.cached_property
    def abuse(self) -> Abuse:
        """Abuse weights and bans per origin."""
        return Abuse(self.state, self.tenants.settings_of)

    @functools.cached_property
    def accounts(self) -> Accounts:
        """Failed logins and locks per account."""
        return Accounts(self.state, self.tenants.settings_of)

    @functools.cached_property
    def logins(self):
        """``bastion_logins_total{outcome}``."""
        return self.runtime.metrics.counter("bastion_logins_total", "Login attempts, by outcome.", ("outcome",))

    def register_metrics(self) -> None:
        """The login counter, and the sessions gauge where the state driver counts keys cheaply."""
        self.logins  # noqa: B018 - registered now, so that a scrape shows it before the first login
        state = self.runtime.state
        # The capability is what a driver declares; LiveCounts is the method it then offers.
        if Capability.COUNT_LIVE in capabilities_of(state) and isinstance(state, LiveCounts):
            self.runtime.metrics.scrape_gauge(
                "bastion_sessions", "Sessions the state store holds: live ones, and those past their end for less "
                "than idle_timeout (remembered to answer ExpiredSession).",
                lambda: state.count_live(self.sessions.key("")))

    def event(self, name: str, user: str | None, level: int = logging.INFO, **fields: Any) -> None:
        """One security event (``bastion.security``) for the current request or command."""
        self.runtime.security_event(name, user=user, level=level, **fields)

    def banned(self, until: float) -> None:
        """The current request's origin reached the limit: one ``banned`` event."""
        self.event("banned", None, logging.WARNING, retry_after=max(1, round(until - self.clock())))

    # -- hooks ----------------------------------------------------------------

    @hookimpl
    def bastion_startup(self, runtime: Runtime) -> None:
        """Warm the dummy hash, create the ``[users]`` accounts, give the ``[roles]`` users their roles, and
        create the demo user in development."""
        self.passwords.warm()
        now = runtime.clock()
        bootstrap.create_users(self, runtime, now)
        bootstrap.give_roles(self, runtime)
        self.register_metrics()
        if runtime.development and self.settings.demo_user:
            bootstrap.demo_user(self, runtime, now)

    @hookimpl
    def bastion_tenant_settings(self, domain: str) -> list[tuple[str, str, str]]:
        """``bastion check --tenant``: every ``[auth]`` key of the domain's tenant, and the section it comes from."""
        from bastion_auth.settings import AUTH_SCHEMA

        return self.tenant(domain).describe({key: option.default for key, option in AUTH_SCHEMA.items()})

    @hookimpl
    def bastion_routes(self, routes: Routes) -> None:
        """``/auth/login`` and ``/auth/logout`` (:meth:`Login.routes`); the passkey login's two routes
        (:meth:`Passkeys.routes`)."""
        self.login.routes(routes)
        self.passkeys.routes(routes)

    @hookimpl
    def bastion_services(self) -> list:
        """The account services (docs/protocol.md section 5): ``change_password``, ``sessions``, ``end_sessions``,
        the two-step sign-in's ``totp_*`` and the passkeys' services."""
        return [*self.account.all(), *self.second.all(), *self.passkeys.services()]

    @hookimpl
    def bastion_has_permission(self, session: Any, service: str, request: Request) -> bool | None:
        """Step 12 under ``[auth] second_factor = required``: a user without a second factor may only enrol."""
        return self.second.allows(request, service)

    @hookimpl
    def bastion_admit(self, request: Request, credentials: Credentials | None) -> SessionRead | None:
        """Step 3: the origin's ban, in one read with the session of a signed call (:meth:`SignedCalls.admit`)."""
        return self.calls.admit(request, credentials)

    @hookimpl
    def bastion_authenticate(self, request: Request, credentials: Credentials | None,
                             admissions: list) -> Authentication:
        """Steps 7 to 10 for ``/api/*`` and ``/auth/logout``, and the caller's roles (:meth:`SignedCalls.authenticate`)."""
        return self.calls.authenticate(request, credentials, admissions)

    @hookimpl
    def bastion_refused(self, request: Request, error: BastionError) -> None:
        """Count a refused login; weigh the refusal against the origin (a ban is a security event)."""
        self.login.refused(request, error)
        self.passkeys.refused(request, error)
        if request.domain:
            banned = self.abuse.weigh(request.domain, request.origin, error, self.clock())
            if banned is not None:
                self.banned(banned)
