"""The ``[auth]`` section: every number of docs/protocol.md section 6 and the password policy; and the
``[auth:alpha.example.com]`` sections that override it for some tenants (:mod:`bastion_auth.tenants`)."""

from __future__ import annotations

from bastion_auth.passwords import (
    ARGON2_MEMORY_COST,
    ARGON2_PARALLELISM,
    ARGON2_TIME_COST,
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
)
from bastion_auth.tenants import Tenants, tenant_schema
from kernel import Bool, Choice, Config, ConfigError, Float, Int, PluginSettings, Problem, Settings

#: Keys, defaults and what they mean; sources are in docs/security.md.
AUTH_SCHEMA = {
    "idle_timeout": Int(1800, "seconds a session lives without calls", min=1),
    "absolute_timeout": Int(43200, "seconds a session lives at most after login", min=1),
    "max_active_sessions": Int(0, "live sessions per user; 0 for unlimited", min=0),
    "skew": Int(60, "seconds a call's ts may differ from the server's clock", min=1),
    "abuse_window": Int(600, "seconds abuse weight is remembered (sliding)", min=1),
    "abuse_max": Int(10, "weight at which an origin is banned in a domain; 0 disables bans", min=0),
    "account_window": Int(900, "seconds failed logins of one account are counted", min=1),
    "account_max_failures": Int(5, "failed logins that lock an account; 0 disables locks", min=0),
    "account_lock": Int(300, "seconds an account stays locked", min=1),
    "argon2_memory_cost": Int(ARGON2_MEMORY_COST, "argon2id memory in KiB (OWASP floor: 19456)", min=8),
    "argon2_time_cost": Int(ARGON2_TIME_COST, "argon2id iterations (OWASP floor: 2)", min=1),
    "argon2_parallelism": Int(ARGON2_PARALLELISM, "argon2id lanes", min=1),
    "min_password_length": Int(MIN_PASSWORD_LENGTH, "shortest password accepted when setting one", min=1),
    "max_password_length": Int(MAX_PASSWORD_LENGTH, "longest password accepted (never truncated)", min=8),
    "demo_user": Bool(True, "in development mode, create demo@localhost when no user exists"),
    "dummy_delay": Float(0.0, "extra seconds added to every failed login", min=0.0),
    "second_factor": Choice("allowed", ("off", "allowed", "required"),
                            "two-step sign-in (TOTP): off (no new enrolment), allowed, or required (a user without "
                            "one may only enrol)"),
    "key_agreement": Choice("allowed", ("allowed", "required"),
                            "version-2 logins (the session's keys agreed, never sent) accepted, or required"),
    "encryption": Choice("allowed", ("allowed", "required"),
                         "sealed (encrypted) calls accepted, or required of every call to a service (implies "
                         "key_agreement = required)"),
    "passkeys": Choice("off", ("off", "allowed", "required"),
                       "passkeys (WebAuthn): off; allowed beside passwords; required: no password login for a user "
                       "who has one"),
    "passkey_user_verification": Choice("required", ("required", "preferred"),
                                        "whether a passkey's authenticator must verify its user (PIN, biometrics)"),
}

#: The schema of a tenant's section, ``[auth:alpha.example.com]``: ``[auth]``'s keys, each inherited when unset.
TENANT_SCHEMA = tenant_schema(AUTH_SCHEMA)


def read_tenants(config: PluginSettings | Config, settings: Settings, passwords=None) -> Tenants:
    """Claim and check every ``[auth:...]`` section over ``[auth]``'s ``settings``; return every tenant's settings
    (``passwords``: ``[auth]``'s policy, whose hash context they share)."""
    from bastion_auth import tenants
    from bastion_auth.passwords import Passwords

    return tenants.read(config, settings, AUTH_SCHEMA, TENANT_SCHEMA, passwords or Passwords(settings))


def read(config: PluginSettings | Config) -> tuple[Settings, dict[str, str], dict[str, list[str]]]:
    """Claim and check ``[auth]``, ``[users]`` and ``[roles]``; return the settings, the users (key -> hash) and
    their roles (key -> sorted role names)."""
    from bastion_auth.passwords import Passwords
    from bastion_auth.users import parse_roles, split_key

    settings = config.section("auth", AUTH_SCHEMA)
    if settings.absolute_timeout < settings.idle_timeout:
        raise ConfigError(f"{config.label}: [auth] absolute_timeout: must be at least idle_timeout "
                          f"({settings.idle_timeout})")
    passwords = Passwords(settings)
    bootstrap = config.raw_section("users")
    for key, value in bootstrap.items():
        try:
            split_key(key)
        except ValueError as exc:
            raise ConfigError(f"{config.label}: [users] {key}: {exc}") from None
        if not passwords.identify(value):
            raise ConfigError(f"{config.label}: [users] {key}: not a password hash; "
                              "accepted: the output of `bastion hash-password`")
    roles: dict[str, list[str]] = {}
    for key, value in config.raw_section("roles").items():
        try:
            username, domain = split_key(key)
            roles[f"{username}@{domain}"] = parse_roles(value)
        except ValueError as exc:
            raise ConfigError(f"{config.label}: [roles] {key}: {exc}; accepted: username@domain = role, role") from None
    return settings, bootstrap, roles


#: OWASP Password Storage Cheat Sheet, argon2id: equivalent minimum configurations (memory in KiB, iterations).
OWASP_ARGON2 = ((47104, 1), (19456, 2), (12288, 3), (9216, 4), (7168, 5))


def meets_owasp(memory_cost: int, time_cost: int) -> bool:
    """Whether argon2id parameters are at least one of OWASP's minimum configurations."""
    return any(memory_cost >= m and time_cost >= t for m, t in OWASP_ARGON2)


def deploy_problems(config: PluginSettings | Config, runtime) -> list[Problem]:
    """The auth plugin's part of ``bastion check --deploy``."""
    settings = config.section("auth", AUTH_SCHEMA)
    problems = []
    m, t = settings.argon2_memory_cost, settings.argon2_time_cost
    if not meets_owasp(m, t):
        problems.append(Problem.error(
            "auth.E001", f"[auth] argon2_memory_cost = {m}, argon2_time_cost = {t}: below OWASP's floor for argon2id "
            "(19456 KiB and 2 iterations, or an equivalent pair); stolen hashes are cheap to guess",
            "use the defaults: argon2_memory_cost = 19456, argon2_time_cost = 2 (hashes are upgraded at the next "
            "login)"))
    # [auth], then each tenant's section, for the keys it sets itself.
    for tenant in read_tenants(config, settings).all():
        values, where = tenant.settings, tenant.section
        named = {key for key, source in tenant.sources.items() if source == where}
        if not values.abuse_max and "abuse_max" in named:
            problems.append(Problem.warning("auth.W002", f"{where} abuse_max = 0: abusive origins are never banned",
                                            "use the default, 10"))
        if not values.account_max_failures and "account_max_failures" in named:
            problems.append(Problem.warning("auth.W003", f"{where} account_max_failures = 0: accounts are never "
                                            "locked after failed logins", "use the default, 5"))
        if values.min_password_length < 8 and "min_password_length" in named:
            problems.append(Problem.warning(
                "auth.W004", f"{where} min_password_length = {values.min_password_length}: below the 8 characters "
                "of OWASP ASVS", "use 8 or more (15 is recommended)"))
    if runtime is not None:
        from bastion_auth.users import find

        with runtime.bind("localhost"):
            demo = find("demo")
        if demo is not None:
            problems.append(Problem.warning(
                "auth.W005", "the user demo@localhost exists (development mode made it, and printed its password)",
                "bastion deluser demo --domain localhost"))
    return problems
