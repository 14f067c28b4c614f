"""Settings per tenant: ``[auth:HOST]`` and ``[auth:*.DOMAIN]`` override ``[auth]`` key by key for their domains.

The resolution (exact name, else the longest wildcard suffix, else ``[auth]``), the start-up checks (one line
naming file, section and key, as for ``[auth]``), ``bastion check --tenant``, and the acceptance: two tenants of
one server with different ``idle_timeout``, ``max_active_sessions`` and ``abuse_max`` behave differently, through
the real WSGI app on mem:// and on SQLite (the end-to-end run over gunicorn is in tests/test_tenants_e2e.py).
"""

from __future__ import annotations

import pytest
from auth_helpers import ALICE_HASH, CHEAP_AUTH, PASSWORD, ServicesPlugin, assert_error, auth_of, login_body, send
from bastion_auth.settings import read, read_tenants
from bastion_auth.tenants import CACHE_SIZE, PROCESS_WIDE

from kernel import Abusive, Config, ConfigError, ExpiredSession, MaxActiveSessions
from kernel.testing import Client

ORIGIN = "192.0.2.10"


def tenants_of(text: str, label: str = "tenants.ini"):
    """The tenants a configuration file's text gives (as the plugin reads them at start-up)."""
    settings = Config.from_string(text, label).for_plugin("bastion_auth")
    auth, _, _ = read(settings)
    return read_tenants(settings, auth)


FAMILY = """
[auth]
idle_timeout = 1200
abuse_max = 8

[auth:*.example.com]
idle_timeout = 600
max_active_sessions = 3

[auth:*.eu.example.com]
idle_timeout = 300

[auth:alpha.example.com]
max_active_sessions = 1

[auth:alpha.eu.example.com]
abuse_max = 2
"""


# -- resolution ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("domain", "section"), [
    ("alpha.example.com", "[auth:alpha.example.com]"),  # exact
    ("beta.example.com", "[auth:*.example.com]"),  # wildcard
    ("a.b.example.com", "[auth:*.example.com]"),  # at any depth
    ("beta.eu.example.com", "[auth:*.eu.example.com]"),  # the longest wildcard suffix wins
    ("alpha.eu.example.com", "[auth:alpha.eu.example.com]"),  # an exact name beats every wildcard
    ("example.com", "[auth]"),  # *.example.com is its subdomains only, as in allowed_hosts
    ("eu.example.com", "[auth:*.example.com]"),
    ("localhost", "[auth]"),  # no section: [auth]
    ("alpha.example.com.evil.org", "[auth]"),
    ("xalpha.example.com", "[auth:*.example.com]"),
])
def test_a_domain_resolves_to_its_most_specific_section(domain, section):
    assert tenants_of(FAMILY).of(domain).section == section


def test_each_key_comes_from_the_most_specific_section_that_sets_it():
    tenants = tenants_of(FAMILY)
    alpha = tenants.of("alpha.eu.example.com")
    assert (alpha.settings.abuse_max, alpha.sources["abuse_max"]) == (2, "[auth:alpha.eu.example.com]")
    assert (alpha.settings.idle_timeout, alpha.sources["idle_timeout"]) == (300, "[auth:*.eu.example.com]")
    assert (alpha.settings.max_active_sessions, alpha.sources["max_active_sessions"]) == (3, "[auth:*.example.com]")
    assert (alpha.settings.skew, alpha.sources["skew"]) == (60, "[auth]")
    exact = tenants.of("alpha.example.com")
    assert (exact.settings.idle_timeout, exact.settings.max_active_sessions, exact.settings.abuse_max) == (600, 1, 8)
    base = tenants.of("localhost")
    assert (base.settings.idle_timeout, base.settings.max_active_sessions) == (1200, 0)
    assert base is tenants.base and base.settings is tenants.base.settings


def test_tenants_are_built_once_and_the_resolution_is_a_bounded_cache():
    tenants = tenants_of(FAMILY)
    first = tenants.of("beta.example.com")
    assert tenants.of("gamma.example.com") is first  # one object per section, not per domain or request
    assert tenants.of.cache_info().maxsize == CACHE_SIZE
    for n in range(CACHE_SIZE + 10):
        tenants.of(f"t{n}.example.com")
    assert tenants.of.cache_info().currsize == CACHE_SIZE


def test_every_tenant_shares_the_hash_context_and_has_its_own_length_rule():
    tenants = tenants_of("[auth]\nmin_password_length = 10\n[auth:strict.example.com]\nmin_password_length = 20\n"
                         "max_password_length = 64\n")
    strict, base = tenants.of("strict.example.com"), tenants.of("localhost")
    assert strict.passwords.context is base.passwords.context
    assert strict.passwords.broken_rule("x" * 15) == ("min_length", 20) and base.passwords.broken_rule("x" * 15) is None
    assert strict.passwords.broken_rule("x" * 65) == ("max_length", 64)
    assert tenants.most("max_password_length") == 1024


def test_without_tenant_sections_every_domain_is_auths():
    tenants = tenants_of("[auth]\nidle_timeout = 100\n")
    assert tenants.all() == [tenants.base] and tenants.of("alpha.example.com").settings.idle_timeout == 100


# -- start-up checks: one line naming file, section and key -----------------------------------------------------------


def test_an_unknown_key_and_a_bad_value_get_auths_error_lines():
    with pytest.raises(ConfigError) as in_auth:
        tenants_of("[auth]\nidle_timout = 5\n")
    with pytest.raises(ConfigError) as in_tenant:
        tenants_of("[auth:alpha.example.com]\nidle_timout = 5\n")
    assert str(in_tenant.value) == str(in_auth.value).replace("[auth]", "[auth:alpha.example.com]")
    assert str(in_tenant.value).startswith("tenants.ini: [auth:alpha.example.com] idle_timout: unknown key; "
                                           "accepted keys: absolute_timeout, abuse_max, ")
    for bad in ("idle_timeout = 0", "max_active_sessions = many", "abuse_max = -1", "dummy_delay = nan"):
        with pytest.raises(ConfigError) as in_auth:
            tenants_of(f"[auth]\n{bad}\n")
        with pytest.raises(ConfigError) as in_tenant:
            tenants_of(f"[auth:*.example.com]\n{bad}\n")
        assert str(in_tenant.value) == str(in_auth.value).replace("[auth]", "[auth:*.example.com]")
        assert "\n" not in str(in_tenant.value) and ": invalid value; accepted: " in str(in_tenant.value)


@pytest.mark.parametrize("key", sorted(PROCESS_WIDE))
def test_a_key_of_the_whole_server_is_refused_in_a_tenant_section_with_its_reason(key):
    with pytest.raises(ConfigError) as refused:
        tenants_of(f"[auth:alpha.example.com]\n{key} = 1\n")
    message = str(refused.value)
    assert message.startswith(f"tenants.ini: [auth:alpha.example.com] {key}: cannot be set per tenant: ")
    assert message.endswith("; set it in [auth]") and "\n" not in message


@pytest.mark.parametrize("name", ["", "*", "*.", "alpha.example.com:8000", "*.*.example.com", "al pha.example.com",
                                  "*.[::1]", "a*.example.com"])
def test_a_section_that_names_no_tenant_is_refused(name):
    with pytest.raises(ConfigError, match=rf"^tenants.ini: \[auth:{__import__('re').escape(name)}\]: not a tenant; "
                                          r"accepted: \[auth:HOST\] for one host"):
        tenants_of(f"[auth:{name}]\nskew = 30\n")


def test_names_are_normalized_as_a_host_header_is_and_a_tenant_is_named_once():
    tenants = tenants_of("[auth:Alpha.Example.COM.]\nskew = 30\n[auth:127.0.0.1]\nskew = 20\n[auth:[::1]]\nskew = 10\n")
    assert tenants.of("alpha.example.com").settings.skew == 30
    assert tenants.of("127.0.0.1").settings.skew == 20 and tenants.of("[::1]").settings.skew == 10
    with pytest.raises(ConfigError, match=r"^tenants.ini: \[auth:ALPHA.example.com\]: the same tenant as "
                                          r"\[auth:alpha.example.com\]$"):
        tenants_of("[auth:alpha.example.com]\nskew = 30\n[auth:ALPHA.example.com]\nskew = 20\n")


def test_every_tenant_keeps_absolute_timeout_at_least_idle_timeout():
    with pytest.raises(ConfigError, match=r"^tenants.ini: \[auth:alpha.example.com\] idle_timeout: must be at most "
                                          r"absolute_timeout \(43200, from \[auth\]\)$"):
        tenants_of("[auth:alpha.example.com]\nidle_timeout = 50000\n")
    with pytest.raises(ConfigError, match=r"^tenants.ini: \[auth:alpha.example.com\] absolute_timeout: must be at "
                                          r"least idle_timeout \(600, from \[auth:\*.example.com\]\)$"):
        tenants_of("[auth:*.example.com]\nidle_timeout = 600\n[auth:alpha.example.com]\nabsolute_timeout = 300\n")
    # A wildcard that breaks it is named, not the exact sections under it.
    with pytest.raises(ConfigError, match=r"\[auth:\*.example.com\] idle_timeout: must be at most"):
        tenants_of("[auth:alpha.example.com]\nskew = 5\n[auth:*.example.com]\nidle_timeout = 99999\n")


def test_a_tenant_section_with_no_auth_plugin_is_an_unknown_section(make_app):
    with pytest.raises(ConfigError, match=r"\[auth:alpha.example.com\]: unknown section"):
        make_app({"auth:alpha.example.com": {"skew": 30}}, only=["storage_mem"])


def test_deploy_checks_name_the_tenant_section_that_turns_a_protection_off():
    from bastion_auth.settings import deploy_problems

    config = Config.from_string("[auth]\n[auth:*.example.com]\nabuse_max = 0\n[auth:alpha.example.com]\n"
                                "account_max_failures = 0\nmin_password_length = 4\n", "tenants.ini")
    problems = {(p.id, p.message.split(": ")[0]) for p in deploy_problems(config.for_plugin("bastion_auth"), None)}
    assert problems == {("auth.W002", "[auth:*.example.com] abuse_max = 0"),
                        ("auth.W003", "[auth:alpha.example.com] account_max_failures = 0"),
                        ("auth.W004", "[auth:alpha.example.com] min_password_length = 4")}


# -- bastion check --tenant ------------------------------------------------------------------------------------------


def test_check_tenant_prints_each_value_and_the_section_it_comes_from(tmp_path, capsys):
    from kernel.testing import main

    ini = tmp_path / "bastion.ini"
    ini.write_text("[bastion]\ndevelopment = true\nallowed_hosts = localhost, *.example.com\n" + FAMILY)
    assert main(["--config", str(ini), "check", "--tenant", "Alpha.EU.example.com."]) == 0
    out = capsys.readouterr().out
    lines = {line.split(" = ")[0].strip(): line for line in out.splitlines() if " = " in line}
    assert "tenant alpha.eu.example.com:" in out
    assert lines["abuse_max"].split() == ["abuse_max", "=", "2", "from", "[auth:alpha.eu.example.com]"]
    assert lines["idle_timeout"].split() == ["idle_timeout", "=", "300", "from", "[auth:*.eu.example.com]"]
    assert lines["max_active_sessions"].split()[-2:] == ["from", "[auth:*.example.com]"]
    assert lines["skew"].split() == ["skew", "=", "60", "from", "[auth]", "(the", "default)"]
    assert lines["argon2_memory_cost"].endswith("from [auth] (one value for every tenant)")
    assert set(lines) >= {"account_lock", "dummy_delay", "demo_user", "min_password_length"}
    assert "not in [bastion] allowed_hosts" not in out

    assert main(["--config", str(ini), "check", "--tenant", "other.org"]) == 0
    out = capsys.readouterr().out
    assert "idle_timeout = 1200" in out and "note: other.org is not in [bastion] allowed_hosts" in out

    assert main(["--config", str(ini), "check", "--tenant", "no host!"]) == 2
    assert capsys.readouterr().err.startswith("bastion: --tenant 'no host!': malformed Host header; accepted: ")


def test_check_tenant_shows_the_key_agreement_that_encryption_required_implies(tmp_path, capsys):
    from kernel.testing import main

    ini = tmp_path / "bastion.ini"
    ini.write_text("[bastion]\ndevelopment = true\nallowed_hosts = localhost, *.example.com\n"
                   "[auth:sealed.example.com]\nencryption = required\n")
    assert main(["--config", str(ini), "check", "--tenant", "sealed.example.com"]) == 0
    lines = {line.split(" = ")[0].strip(): line for line in capsys.readouterr().out.splitlines() if " = " in line}
    assert lines["encryption"].split() == ["encryption", "=", "required", "from", "[auth:sealed.example.com]"]
    assert lines["key_agreement"].split() == ["key_agreement", "=", "required", "from", "encryption", "=",
                                              "required", "([auth:sealed.example.com])"]
    assert main(["--config", str(ini), "check", "--tenant", "other.example.com"]) == 0
    out = capsys.readouterr().out
    assert "key_agreement = allowed" in out and "encryption = allowed" in out


# -- acceptance: two tenants of one server behave differently ---------------------------------------------------------

#: alpha: short idle time, one session per user, a ban at weight 3; *.example.com (beta): the defaults but a longer
#: idle time; localhost: [auth].
TENANT_SECTIONS = {
    "auth:alpha.example.com": {"idle_timeout": 60, "max_active_sessions": 1, "abuse_max": 3},
    "auth:*.example.com": {"idle_timeout": 600, "max_active_sessions": 2, "abuse_max": 6},
}
HOSTS = ("alpha.example.com", "beta.example.com", "localhost")


@pytest.fixture(params=["mem", "sqlite"])
def tenant_app(request, make_app, tmp_path):
    """One app serving the three tenants, each with alice, on mem:// or on a SQLite file."""
    storage = "mem://" if request.param == "mem" else f"sqlite:///{tmp_path}/bastion.sqlite3"
    sections = {
        "bastion": {"development": True, "storage": storage, "allowed_hosts": ", ".join(HOSTS)},
        "auth": dict(CHEAP_AUTH),
        "users": {f"alice@{host}": ALICE_HASH for host in HOSTS},
        **TENANT_SECTIONS,
    }
    only = ["storage_mem", "auth"] if request.param == "mem" else ["storage_sql", "auth"]
    return make_app(sections, plugins=[ServicesPlugin()], only=only)


def client(app, host: str, clock, origin: str = "127.0.0.1") -> Client:
    return Client(app=app, host=host, remote_addr=origin, clock=clock)


def test_each_tenant_ends_idle_sessions_after_its_own_idle_timeout(tenant_app, fake_clock):
    clients = {host: client(tenant_app, host, fake_clock) for host in HOSTS}
    for c in clients.values():
        c.login("alice", PASSWORD)
    fake_clock.advance(61)
    with pytest.raises(ExpiredSession):
        clients["alpha.example.com"].call("echo", "x")
    assert clients["beta.example.com"].call("echo", "x")["domain"] == "beta.example.com"
    assert clients["localhost"].call("echo", "x")["domain"] == "localhost"
    fake_clock.advance(601)
    with pytest.raises(ExpiredSession):
        clients["beta.example.com"].call("echo", "x")
    assert clients["localhost"].call("echo", "x")["x"] == "x"  # [auth]: 1800 s


def test_each_tenant_has_its_own_maximum_of_sessions(tenant_app, fake_clock):
    def logins(host: str) -> int:
        opened = 0
        for _ in range(4):
            try:
                client(tenant_app, host, fake_clock).login("alice", PASSWORD)
            except MaxActiveSessions:
                return opened
            opened += 1
        return opened

    assert [logins(host) for host in HOSTS] == [1, 2, 4]  # localhost: [auth]'s 0, unlimited
    # force still ends the others in the tenant with one session per user
    forced = client(tenant_app, "alpha.example.com", fake_clock)
    forced.login("alice", PASSWORD, force=True)
    assert forced.call("echo", "x")["domain"] == "alpha.example.com"


def test_each_tenant_bans_an_origin_at_its_own_abuse_max(tenant_app, fake_clock):
    state = auth_of(tenant_app).state

    def banned(host: str) -> bool:
        until = state.get(host, f"ban:{ORIGIN}")
        return until is not None and until > fake_clock()

    for host, maximum in (("alpha.example.com", 3), ("beta.example.com", 6), ("localhost", 10)):
        for _ in range(maximum - 1):
            assert_error(send(tenant_app, "/api/echo", b"", host=host, remote_addr=ORIGIN), 401, "Unauthorized")
        assert not banned(host)
        assert_error(send(tenant_app, "/api/echo", b"", host=host, remote_addr=ORIGIN), 401, "Unauthorized")
        assert banned(host), host
        body = assert_error(send(tenant_app, "/auth/login", login_body(), host=host, remote_addr=ORIGIN), 429,
                            "Abusive")
        assert body["retry_after"] == 600  # abuse_window: [auth]'s everywhere
    with pytest.raises(Abusive):
        client(tenant_app, "alpha.example.com", fake_clock, ORIGIN).login("alice", PASSWORD)


def test_a_tenants_lower_abuse_max_bounds_its_logins_in_flight_too(tenant_app, fake_clock):
    """The login attempts of one origin take places in its window, atomically, up to the tenant's abuse_max."""
    abuse = auth_of(tenant_app).abuse
    for n in range(3):
        abuse.reserve("alpha.example.com", ORIGIN, f"attempt{n}", fake_clock())
    with pytest.raises(Abusive) as busy:
        abuse.reserve("alpha.example.com", ORIGIN, "attempt3", fake_clock())
    assert getattr(busy.value, "in_flight", False) and "at most 3 at once" in str(busy.value)
    for n in range(6):
        abuse.reserve("beta.example.com", ORIGIN, f"attempt{n}", fake_clock())
    with pytest.raises(Abusive, match="at most 6 at once"):
        abuse.reserve("beta.example.com", ORIGIN, "attempt6", fake_clock())


# -- the password length rule is the tenant's -------------------------------------------------------------------------


def test_adduser_checks_the_length_rule_of_the_users_tenant(tmp_path, capsys, monkeypatch):
    import io
    import sys

    from kernel.testing import main

    ini = tmp_path / "bastion.ini"
    ini.write_text(f"[bastion]\nstorage = sqlite:///{tmp_path / 'b.sqlite3'}\ndevelopment = true\n"
                   "allowed_hosts = *.example.com\n[auth]\nargon2_memory_cost = 64\nargon2_time_cost = 1\n"
                   "[auth:strict.example.com]\nmin_password_length = 20\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO("a good password\n"))
    assert main(["--config", str(ini), "adduser", "alice", "--domain", "easy.example.com", "--password-stdin"]) == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("a good password\n"))
    with pytest.raises(SystemExit, match="a password has 20 to 1024 characters"):
        main(["--config", str(ini), "adduser", "alice", "--domain", "strict.example.com", "--password-stdin"])


def test_change_password_and_the_login_body_follow_the_tenants_length_rule(make_app, fake_clock):
    hosts = ("strict.example.com", "localhost")
    app = make_app({"bastion": {"development": True, "allowed_hosts": ", ".join(hosts)}, "auth": dict(CHEAP_AUTH),
                    "users": {f"alice@{host}": ALICE_HASH for host in hosts},
                    "auth:strict.example.com": {"min_password_length": 30, "max_password_length": 2048}},
                   plugins=[ServicesPlugin()], only=["storage_mem", "auth"])
    from kernel import ValidationError

    strict, easy = (client(app, host, fake_clock) for host in hosts)
    for c in (strict, easy):
        c.login("alice", PASSWORD)
    with pytest.raises(ValidationError) as refused:
        strict.call("change_password", PASSWORD, "twenty-two characters")
    assert refused.value.extra["fields"] == {"new": {"min_length": 30}}
    assert easy.call("change_password", PASSWORD, "twenty-two characters") is True
    # one login route for every tenant: its body limit lets the longest password of any tenant through
    from bastion_auth.login import login_max_body

    assert auth_of(app).login_max_body == login_max_body(2048)
    long_body = login_body("alice", "x" * 1500)
    assert_error(send(app, "/auth/login", long_body, host="localhost"), 401, "InvalidCredential")
