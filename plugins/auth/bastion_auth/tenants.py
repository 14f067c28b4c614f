"""Settings per tenant: ``[auth:alpha.example.com]`` and ``[auth:*.example.com]`` override ``[auth]`` for a domain.

A tenant is a domain (docs/protocol.md section 1). Its settings are ``[auth]``'s, overridden key by key by the
sections of the ``[auth:...]`` family that match it, the most specific last:

* ``[auth]`` (and the built-in defaults for the keys it does not set);
* ``[auth:*.example.com]``: every subdomain of ``example.com``, at any depth (not ``example.com`` itself, as in
  ``allowed_hosts``); of several wildcards that match, the longer suffix is the more specific
  (``[auth:*.eu.example.com]`` over ``[auth:*.example.com]``);
* ``[auth:alpha.example.com]``: that one host.

So each key of a domain's settings comes from the most specific matching section that sets it. Every section of
the family is read at start-up with ``[auth]``'s schema (one error line naming file, section and key for an
unknown key or a bad value), and every tenant's settings are checked as ``[auth]``'s are (``absolute_timeout`` at
least ``idle_timeout``). The keys of :data:`PROCESS_WIDE` hold one value for the whole server and are refused in a
tenant's section, each with the reason.

The tenants are built once, at start-up (:class:`Tenants`): one :class:`Tenant` for ``[auth]`` and one per
section. A request's domain is resolved to its tenant through a bounded cache (:meth:`Tenants.of`); nothing is
built per request. A tenant's limits use the state keys of its own domain, as ``[auth]``'s always have, so that
its counts, windows and sessions are never another tenant's.

A key added to ``AUTH_SCHEMA`` is overridable per tenant from then on (the tenants' schema is derived from it),
unless it is added to :data:`PROCESS_WIDE`: code that acts for a request reads it from the request's tenant,
``auth.tenant(request.domain).settings``, never from ``auth.settings`` (``[auth]`` alone).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bastion_auth.passwords import Passwords
from kernel import Config, ConfigError, InvalidHost, Option, PluginSettings, Settings, parse_domain

#: The prefix of the sections that override ``[auth]`` for some tenants: ``[auth:alpha.example.com]``.
SECTION_PREFIX = "auth:"

#: The keys that hold one value for the whole server, refused in a tenant's section: why each cannot vary.
PROCESS_WIDE: dict[str, str] = {
    "argon2_memory_cost": "the password hash policy is one per server (a user's hash is checked against it at "
                          "every login, `bastion hash-password` makes [users] hashes with it, and the dummy hash "
                          "that times an unknown user's login like a known one's is computed with it), and the "
                          "memory of every concurrent login comes out of the whole server's",
    "argon2_time_cost": "the password hash policy is one per server (see argon2_memory_cost), and its CPU time per "
                        "login comes out of the whole server's",
    "argon2_parallelism": "the password hash policy is one per server (see argon2_memory_cost)",
    "demo_user": "the development demo user is demo@localhost, made once at the server's start",
}

#: How many domains :meth:`Tenants.of` remembers (each a dictionary entry; the resolution is cheap anyway).
CACHE_SIZE = 4096

#: The value of a key a tenant's section does not set (it inherits it).
INHERIT: Any = type("Inherit", (), {"__repr__": lambda self: "INHERIT"})()


class _ProcessWide:
    """What a tenant's section read for a key of :data:`PROCESS_WIDE`: refused once the section is read."""

    __slots__ = ("raw",)

    def __init__(self, raw: str):
        self.raw = raw


def tenant_schema(schema: Mapping[str, Option]) -> dict[str, Option]:
    """The schema of a tenant's section: ``[auth]``'s keys, none with a default (an unset key is inherited);
    a key of :data:`PROCESS_WIDE` is read, then refused with its reason (:func:`read`)."""
    result = {}
    for key, option in schema.items():
        if key in PROCESS_WIDE:
            result[key] = Option(_ProcessWide, INHERIT, "only in [auth]", option.help)
        else:
            result[key] = Option(option.parse, INHERIT, option.accepted, option.help)
    return result


def section_name(pattern: str) -> str:
    """The section of a tenant pattern: ``[auth:alpha.example.com]``, ``[auth:*.example.com]``; ``[auth]``."""
    return f"[{SECTION_PREFIX}{pattern}]" if pattern else "[auth]"


def parse_pattern(text: str) -> str:
    """A tenant pattern from a section's name: a host name (``alpha.example.com``, as a Host header names it:
    lowercase, without a trailing dot) or ``*.`` and one (``*.example.com``); ValueError otherwise."""
    wildcard = text.startswith("*.")
    name = text[2:] if wildcard else text
    try:
        domain = parse_domain(name)
    except InvalidHost:
        raise ValueError(text) from None
    if domain != name.lower().rstrip(".") or (wildcard and domain.startswith("[")):  # a port, or *.[v6]
        raise ValueError(text)
    return f"*.{domain}" if wildcard else domain


def _suffixes(name: str) -> list[str]:
    """The parent domains of a host name, longest first: ``a.b.example.com`` gives ``b.example.com``,
    ``example.com``, ``com``."""
    labels = name.split(".")
    return [".".join(labels[i:]) for i in range(1, len(labels))]


@dataclass(frozen=True)
class Tenant:
    """The settings of the tenants one section is the most specific match of: built once, at start-up.

    ``pattern`` is the section's host name or wildcard (empty for ``[auth]``),
    ``settings`` the effective values of every key, ``sources`` the section
    each value comes from (``[auth]`` for a key no tenant's section sets),
    ``passwords`` the password policy (its length rule is the tenant's, its
    hash context the server's).
    """

    pattern: str
    settings: Settings
    sources: Mapping[str, str]
    passwords: Passwords

    @property
    def section(self) -> str:
        """The section that is the most specific match: ``[auth:alpha.example.com]``, or ``[auth]``."""
        return section_name(self.pattern)

    @property
    def nonce_ttl(self) -> int:
        """Seconds a call's nonce is remembered: a call can pass while ``|floor(now) - ts| <= skew``, and its
        ``ts`` may lie up to ``skew`` ahead of ``floor(now)`` when it is first used, so it can pass again until
        ``floor(now)`` is past ``ts + skew``: for ``2 * skew + 1`` seconds at most."""
        return 2 * self.settings.skew + 1

    def describe(self, defaults: Mapping[str, Any]) -> list[tuple[str, str, str]]:
        """Rows ``(key, value, source)`` for ``bastion check --tenant``: the value as the file writes it."""
        rows = []
        for key, value in self.settings.items():
            source = self.sources[key]
            if key in PROCESS_WIDE:
                source += " (one value for every tenant)"
            elif source == "[auth]" and value == defaults.get(key):
                source += " (the default)"
            if key == "key_agreement" and value != "required" and self.settings.get("encryption") == "required":
                # What a login meets: encryption = required refuses version-1 logins (docs/protocol.md 16.6).
                value, source = "required", f"encryption = required ({self.sources['encryption']})"
            rows.append((key, _written(value), source))
        return rows


def _written(value: Any) -> str:
    """A value as an INI file writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class Tenants:
    """Every tenant's settings, built once at start-up, and the resolution of a domain to its tenant.

    :meth:`of` is exact name, else the longest wildcard suffix, else
    ``[auth]``; it remembers the last :data:`CACHE_SIZE` domains it resolved
    (a bounded cache: domains come from Host headers, which anyone writes).
    """

    def __init__(self, base: Tenant, tenants: Iterable[Tenant] = ()):
        self.base = base
        self.exact: dict[str, Tenant] = {}
        self.wildcards: dict[str, Tenant] = {}  # by suffix: "example.com" for *.example.com
        for tenant in tenants:
            if tenant.pattern.startswith("*."):
                self.wildcards[tenant.pattern[2:]] = tenant
            else:
                self.exact[tenant.pattern] = tenant
        self.of = functools.lru_cache(maxsize=CACHE_SIZE)(self._resolve)

    @classmethod
    def single(cls, settings: Settings, passwords: Passwords | None = None) -> Tenants:
        """One set of settings for every domain (``[auth]`` alone)."""
        return cls(Tenant("", settings, {key: "[auth]" for key in settings}, passwords or Passwords(settings)))

    def _resolve(self, domain: str) -> Tenant:
        tenant = self.exact.get(domain)
        if tenant is not None:
            return tenant
        if self.wildcards:
            for suffix in _suffixes(domain):
                tenant = self.wildcards.get(suffix)
                if tenant is not None:
                    return tenant
        return self.base

    def settings_of(self, domain: str) -> Settings:
        """The effective settings of ``domain``'s tenant (what the stores read their limits from)."""
        return self.of(domain).settings

    def all(self) -> list[Tenant]:
        """``[auth]``'s tenant, then each section's, in the order of their patterns."""
        return [self.base, *sorted([*self.exact.values(), *self.wildcards.values()], key=lambda t: t.pattern)]

    def most(self, key: str) -> Any:
        """The largest value of ``key`` over every tenant (what a limit shared by every tenant must allow)."""
        return max(tenant.settings[key] for tenant in self.all())


def read(config: PluginSettings | Config, base: Settings, schema: Mapping[str, Option],
         tenant_schema: Mapping[str, Option], passwords: Passwords) -> Tenants:
    """Claim and check every ``[auth:...]`` section; return every tenant's settings over ``base`` (``[auth]``).

    ``tenant_schema`` is :func:`tenant_schema` of ``schema`` (one object, so that reading again is the same
    claim); ``passwords`` is ``[auth]``'s policy, whose hash context every tenant shares.
    """
    overrides: dict[str, tuple[str, dict[str, Any]]] = {}  # pattern -> (section, the keys it sets)
    for name in config.sections_with_prefix(SECTION_PREFIX):
        values = config.section(name, tenant_schema)
        text = name[len(SECTION_PREFIX):].strip()
        try:
            pattern = parse_pattern(text)
        except ValueError:
            raise ConfigError(f"{config.label}: [{name}]: not a tenant; accepted: [auth:HOST] for one host, such as "
                              "[auth:alpha.example.com], or [auth:*.DOMAIN] for its subdomains, such as "
                              "[auth:*.example.com]") from None
        for key, value in values.items():
            if isinstance(value, _ProcessWide):
                raise ConfigError(f"{config.label}: [{name}] {key}: cannot be set per tenant: {PROCESS_WIDE[key]}; "
                                  "set it in [auth]")
        if pattern in overrides:
            raise ConfigError(f"{config.label}: [{name}]: the same tenant as [{overrides[pattern][0]}]")
        overrides[pattern] = (name, {key: value for key, value in values.items() if value is not INHERIT})
    tenants = []
    # The least specific first (fewer labels), so that an error names the section that brings it in.
    for pattern in sorted(overrides, key=lambda p: (p.count("."), not p.startswith("*."), p)):
        chain = _chain(pattern, overrides)
        effective, sources = dict(base), {key: "[auth]" for key in base}
        for matched in chain:
            for key, value in overrides[matched][1].items():
                effective[key], sources[key] = value, section_name(matched)
        settings = Settings(f"{SECTION_PREFIX}{pattern}", effective)
        _check(config.label, section_name(pattern), settings, sources)
        tenants.append(Tenant(pattern, settings, sources, passwords.with_lengths(settings)))
    return Tenants(Tenant("", base, {key: "[auth]" for key in schema}, passwords), tenants)


def _chain(pattern: str, overrides: Mapping[str, Any]) -> list[str]:
    """The patterns of the sections that match a section's own name, the least specific first, itself last."""
    name = pattern[2:] if pattern.startswith("*.") else pattern
    wildcards = [f"*.{suffix}" for suffix in reversed(_suffixes(name)) if f"*.{suffix}" in overrides]
    return [*wildcards, pattern]


def _check(label: str, where: str, settings: Settings, sources: Mapping[str, str]) -> None:
    """What ``[auth]`` must satisfy, every tenant must: ``absolute_timeout`` at least ``idle_timeout``."""
    idle, absolute = settings.idle_timeout, settings.absolute_timeout
    if absolute >= idle:
        return
    if sources["absolute_timeout"] == where:
        raise ConfigError(f"{label}: {where} absolute_timeout: must be at least idle_timeout ({idle}, from "
                          f"{sources['idle_timeout']})")
    raise ConfigError(f"{label}: {where} idle_timeout: must be at most absolute_timeout ({absolute}, from "
                      f"{sources['absolute_timeout']})")
