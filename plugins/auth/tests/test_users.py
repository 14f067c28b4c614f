"""Users: password hashing and upgrade, the [users] bootstrap, the demo user, the CLI."""

from __future__ import annotations

import io
import re
import threading
import time

import pytest
from auth_helpers import (
    ALICE_HASH,
    CHEAP_AUTH,
    PASSWORD,
    DenyPlugin,
    ServicesPlugin,
    SharedDriverPlugin,
    assert_error,
    cheap_hash,
    login_body,
    send,
)
from bastion_auth import users
from bastion_auth.passwords import Passwords
from bastion_auth.settings import AUTH_SCHEMA

from kernel import Config, ConfigError, Runtime, UnknownSession
from kernel.testing import Client, create_app, get_plugin_manager, main


def stored_hash(app, username: str, domain: str = "localhost") -> str | None:
    with app.runtime.bind(domain):
        record = users.find(username)
        return None if record is None else record.password


def params_of(hashed: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"([mtp])=(\d+)", hashed)}


# -- passwords -----------------------------------------------------------------

def test_the_default_policy_is_argon2id_m19456_t2_p1():
    settings = Config.from_dict({}).section("auth", AUTH_SCHEMA)
    hashed = Passwords(settings).hash(PASSWORD)
    assert hashed.startswith("$argon2id$")
    assert params_of(hashed) == {"m": 19456, "t": 2, "p": 1}
    assert Passwords(settings).verify(PASSWORD, hashed) == (True, False)


def test_a_new_password_follows_the_length_policy():
    passwords = Passwords(Config.from_dict({"auth": CHEAP_AUTH}).section("auth", AUTH_SCHEMA))
    with pytest.raises(ValueError):
        passwords.hash("short")
    with pytest.raises(ValueError):
        passwords.hash("x" * 1025)
    assert passwords.hash("x" * 1024).startswith("$argon2id$")


def test_a_weak_hash_is_upgraded_at_login(auth_app, client_for):
    app = auth_app(auth={"argon2_memory_cost": 128, "argon2_time_cost": 2},
                   users={"bob@localhost": cheap_hash(PASSWORD, memory_cost=64, rounds=1)})
    client_for(target=app).login("bob", PASSWORD)
    upgraded = stored_hash(app, "bob")
    assert params_of(upgraded) == {"m": 128, "t": 2, "p": 1}
    client_for(target=app).login("bob", PASSWORD)
    assert stored_hash(app, "bob") == upgraded


def test_a_failed_login_upgrades_nothing(auth_app):
    weak = cheap_hash(PASSWORD, memory_cost=64, rounds=1)
    app = auth_app(auth={"argon2_memory_cost": 128}, users={"bob@localhost": weak})
    send(app, "/auth/login", login_body("bob", "wrong"))
    assert stored_hash(app, "bob") == weak


# -- configuration ---------------------------------------------------------------

@pytest.mark.parametrize("users_section, message", [
    ({"alice@localhost": "s3cret"}, "not a password hash"),
    ({"bad name@localhost": ALICE_HASH}, "username"),
    ({"alice@not a host": ALICE_HASH}, "not a host name"),
    ({"alice": ALICE_HASH}, "username@domain"),
])
def test_bad_users_entries_stop_the_start(make_app, users_section, message):
    with pytest.raises(ConfigError, match=message):
        make_app({"users": users_section, "auth": CHEAP_AUTH}, only=["storage_mem", "auth"])


@pytest.mark.parametrize("auth, key", [
    ({"absolute_timeout": 100, "idle_timeout": 200}, "absolute_timeout"),
    ({"skew": "0"}, "skew"),
    ({"abuse_max": "-1"}, "abuse_max"),
    ({"nonsense": "1"}, "nonsense"),
])
def test_bad_auth_settings_stop_the_start(make_app, auth, key):
    with pytest.raises(ConfigError, match=key):
        make_app({"auth": auth}, only=["storage_mem", "auth"])


def test_users_keys_are_normalized_like_hosts(auth_app, client_for):
    app = auth_app(users={"carol@Alpha.LOCALHOST.": cheap_hash(PASSWORD)})
    assert client_for(host="alpha.localhost", target=app).login("carol", PASSWORD)["domain"] == "alpha.localhost"


# -- the [users] bootstrap -------------------------------------------------------

def shared_app(plugin, users_section, *, development=True, auth=None, clock=None, server=None, **bastion):
    sections = {"bastion": {"development": development, "storage": "shared://", **bastion},
                "auth": {**CHEAP_AUTH, **(auth or {})}}
    if server:
        sections["server"] = server
    if users_section:
        sections["users"] = users_section
    pm = get_plugin_manager(only=["storage_mem", "auth"], trace=False)
    for p in (plugin, ServicesPlugin(), DenyPlugin()):
        pm.register(p)
    return create_app(Runtime(Config.from_dict(sections), pm, clock=clock).start())


@pytest.fixture
def shared(fake_clock):
    plugin = SharedDriverPlugin(fake_clock)
    apps = []

    def make(users_section=None, **kwargs):
        app = shared_app(plugin, users_section, clock=fake_clock, **kwargs)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.runtime.close()


def test_the_bootstrap_is_idempotent_and_never_overwrites(shared):
    first = shared({"alice@localhost": ALICE_HASH})
    second = shared({"alice@localhost": cheap_hash("another password")})  # a restart with a new hash
    third = shared({"alice@localhost": ALICE_HASH})
    for app in (first, second, third):
        assert stored_hash(app, "alice") == ALICE_HASH
        with app.runtime.bind("localhost"):
            assert users.list_usernames() == ["alice"]


def test_the_bootstrap_does_not_resurrect_a_changed_password(shared):
    first = shared({"alice@localhost": ALICE_HASH})
    new = cheap_hash("changed by the admin")
    with first.runtime.bind("localhost"):
        users.set_password("alice", new)
    shared({"alice@localhost": ALICE_HASH})
    assert stored_hash(first, "alice") == new


def test_runtimes_starting_together_create_each_user_once(fake_clock):
    plugin = SharedDriverPlugin(fake_clock)
    section = {"alice@localhost": ALICE_HASH, "bob@beta.localhost": ALICE_HASH}
    barrier = threading.Barrier(8)
    apps, errors = [], []

    def start():
        barrier.wait()
        try:
            apps.append(shared_app(plugin, section, clock=fake_clock))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == [] and len(apps) == 8
        with apps[0].runtime.bind("localhost"):
            assert users.list_usernames() == ["alice"]
        with apps[0].runtime.bind("beta.localhost"):
            assert users.list_usernames() == ["bob"]
    finally:
        for app in apps:
            app.runtime.close()


# -- the demo user ---------------------------------------------------------------

DEMO = re.compile(r"as demo / (\S+)")


def test_development_creates_a_demo_user_once_and_prints_its_password_once(shared, capsys, fake_clock):
    app = shared(auth={"argon2_memory_cost": 19456, "argon2_time_cost": 2})
    err = capsys.readouterr().err
    passwords = DEMO.findall(err)
    assert len(passwords) == 1
    shared()
    assert DEMO.findall(capsys.readouterr().err) == []
    client = Client(app=app, host="localhost", clock=fake_clock)
    assert client.login("demo", passwords[0]) == {"username": "demo", "domain": "localhost"}
    assert params_of(stored_hash(app, "demo")) == {"m": 19456, "t": 2, "p": 1}


def test_the_demo_banner_names_the_real_address_and_the_tenant(shared, capsys, fake_clock):
    shared(server={"bind": "127.0.0.1:8123"})
    err = capsys.readouterr().err
    assert "Development mode: log in at http://localhost:8123/ as demo / " in err
    assert "The tenant is the host name in the address bar: localhost. http://127.0.0.1:8123/ is another tenant, " \
           "with no user." in err
    shared(server={"bind": "127.0.0.1:8123"})  # another worker of the start that made the user: silent
    assert "Development mode" not in capsys.readouterr().err
    # a restart on the same data: the password is not shown again, but how to reset it is
    fake_clock.advance(31)
    shared(server={"bind": "0.0.0.0:8123"})
    err = capsys.readouterr().err
    assert DEMO.findall(err) == [] and "log in at http://localhost:8123/ as demo (its password was printed" in err
    assert "Forgot it? bastion passwd demo --domain localhost" in err
    shared(server={"bind": "0.0.0.0:8123"})  # another worker of the same start: one of them says it
    assert "Forgot it?" not in capsys.readouterr().err
    fake_clock.advance(31)
    shared()
    assert "Forgot it?" in capsys.readouterr().err


def test_no_demo_user_when_a_user_exists(shared, capsys):
    app = shared({"alice@alpha.localhost": ALICE_HASH})
    assert DEMO.findall(capsys.readouterr().err) == []
    assert stored_hash(app, "demo") is None


def test_never_a_demo_user_in_production(shared, capsys):
    app = shared(development=False, allowed_hosts="localhost")
    assert capsys.readouterr().err == ""
    assert stored_hash(app, "demo") is None


def test_demo_user_can_be_turned_off(shared, capsys):
    app = shared(auth={"demo_user": False})
    assert capsys.readouterr().err == ""
    assert stored_hash(app, "demo") is None


# -- the command line --------------------------------------------------------------

@pytest.fixture
def cli(tmp_path, monkeypatch, fake_clock):
    """Run ``bastion`` commands on a shared:// store that an app can also use."""
    plugin = SharedDriverPlugin(fake_clock)
    ini = tmp_path / "bastion.ini"
    ini.write_text("[bastion]\ndevelopment = true\nstorage = shared://\n\n[auth]\nargon2_memory_cost = 64\n"
                   "argon2_time_cost = 1\ndemo_user = false\n", encoding="utf-8")

    def plugin_manager():
        pm = get_plugin_manager(only=["storage_mem", "auth"], trace=False)
        pm.register(plugin)
        return pm

    def run(*argv: str, password: str | None = None) -> int:
        if password is not None:
            monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
        # The commands come from, and their runtime is built with, a plugin manager with the shared:// store; that
        # runtime keeps time with time.time: the app's fake clock, so that both see the same sessions, locks and bans.
        with monkeypatch.context() as patch:
            patch.setattr(time, "time", fake_clock)
            return main(["--config", str(ini), *argv], pm=plugin_manager())

    run.app = lambda: shared_app(plugin, None, clock=fake_clock, auth={"demo_user": False})
    return run


def test_cli_adduser_users_passwd_deluser(cli, capsys, fake_clock):
    from kernel import UnknownSession

    assert cli("adduser", "bob", "--domain", "Alpha.Localhost", "--password-stdin", password="first password") == 0
    assert cli("adduser", "eve", "--domain", "localhost", "--password-stdin", password="eve password") == 0
    assert cli("users") == 0
    out = capsys.readouterr().out
    assert "Created the user bob@alpha.localhost." in out
    assert "bob@alpha.localhost: no live session." in out.splitlines()
    assert "eve@localhost: no live session." in out.splitlines()
    assert cli("users", "--domain", "localhost") == 0
    assert capsys.readouterr().out.splitlines() == ["eve@localhost: no live session."]

    app = cli.app()
    try:
        bob = Client(app=app, host="alpha.localhost", clock=fake_clock)
        bob.login("bob", "first password")
        assert cli("passwd", "bob", "--domain", "alpha.localhost", "--password-stdin", password="second password") == 0
        assert "Changed the password of bob@alpha.localhost; ended its 1 live session.\n" in capsys.readouterr().out
        with pytest.raises(UnknownSession):
            bob.call("echo", "x")
        assert_error(send(app, "/auth/login", login_body("bob", "first password"), host="alpha.localhost"),
                     401, "InvalidCredential")
        bob.login("bob", "second password")
        assert cli("deluser", "bob", "--domain", "alpha.localhost") == 0
        assert "Deleted the user bob@alpha.localhost; ended its 1 live session.\n" in capsys.readouterr().out
        with pytest.raises(UnknownSession):
            bob.call("echo", "x")
        assert_error(send(app, "/auth/login", login_body("bob", "second password"), host="alpha.localhost"),
                     401, "InvalidCredential")
    finally:
        app.runtime.close()


@pytest.mark.parametrize("argv, password, message", [
    (("adduser", "bad name", "--domain", "localhost", "--password-stdin"), "long enough", "username"),
    (("adduser", "bob", "--domain", "not a host", "--password-stdin"), "long enough", "not a host name"),
    (("adduser", "bob", "--domain", "localhost", "--password-stdin"), "short", "characters"),
    (("adduser", "bob", "--domain", "localhost", "--password-stdin"), "", "empty password"),
    (("passwd", "nobody", "--domain", "localhost", "--password-stdin"), "long enough", "no user"),
    (("deluser", "nobody", "--domain", "localhost"), None, "no user"),
    (("sessions", "bob"), None, "sessions USER needs --domain"),
    (("end-sessions", "bob", "--domain", "not a host"), None, "not a host name"),
    (("unlock", "bad name", "--domain", "localhost"), None, "username"),
    (("unban", "not-an-address", "--domain", "localhost"), None, "is not an IP address"),
    (("hash-password", "--password-stdin"), "short", "characters"),
])
def test_cli_refuses_bad_input_with_a_message(cli, argv, password, message):
    with pytest.raises(SystemExit, match=message):
        cli(*argv, password=password)


def test_cli_adduser_never_overwrites(cli, capsys):
    assert cli("adduser", "bob", "--domain", "localhost", "--password-stdin", password="first password") == 0
    with pytest.raises(SystemExit, match="already exists"):
        cli("adduser", "bob", "--domain", "localhost", "--password-stdin", password="other password")


def test_cli_sessions_and_end_sessions(cli, capsys, fake_clock):
    assert cli("adduser", "bob", "--domain", "localhost", "--password-stdin", password="first password") == 0
    app = cli.app()
    try:
        bob = Client(app=app, host="localhost", clock=fake_clock)
        bob.login("bob", "first password")
        capsys.readouterr()
        assert cli("sessions", "bob", "--domain", "localhost") == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith(f"bob@localhost: session {bob.session.sid[:8]}..., created ") and "from 127.0.0.1," \
            in lines[0]
        assert lines[1:] == ["1 live session."]
        assert cli("end-sessions", "bob", "--domain", "localhost") == 0
        captured = capsys.readouterr()
        assert captured.out == "Ended 1 live session of bob@localhost.\n"
        assert "event=sessions_ended domain=localhost origin=cli user=bob admin=" in captured.err
        with pytest.raises(UnknownSession):
            bob.call("echo", "x")
        assert cli("sessions") == 0
        assert capsys.readouterr().out == "No live session.\n"
    finally:
        app.runtime.close()


def test_cli_users_shows_a_lock_and_unlock_ends_it(cli, capsys, fake_clock):
    assert cli("adduser", "bob", "--domain", "localhost", "--password-stdin", password="first password") == 0
    app = cli.app()
    try:
        for _ in range(4):
            assert_error(send(app, "/auth/login", login_body("bob", "not his")), 401, "InvalidCredential")
        assert_error(send(app, "/auth/login", login_body("bob", "not his")), 429, "AccountLocked")  # the lock it sets
        assert_error(send(app, "/auth/login", login_body("bob", "first password")), 429, "AccountLocked")
        capsys.readouterr()
        assert cli("users", "--domain", "localhost") == 0
        assert re.fullmatch(r"bob@localhost: no live session; locked until \S+Z \(in \d+ s\) after failed logins\.\n",
                            capsys.readouterr().out)
        assert cli("locks") == 0
        assert re.fullmatch(r"bob@localhost is locked until \S+Z \(in 300 s\)\.\n", capsys.readouterr().out)
        assert cli("unlock", "bob", "--domain", "localhost") == 0
        captured = capsys.readouterr()
        assert captured.out == "Unlocked bob@localhost.\n"
        assert cli("locks", "--domain", "localhost") == 0
        assert capsys.readouterr().out == "No account is locked in localhost.\n"
        assert "event=account_unlocked domain=localhost origin=cli user=bob" in captured.err
        assert "was_locked=true" in captured.err
        Client(app=app, host="localhost", clock=fake_clock).login("bob", "first password")
        assert cli("unlock", "bob", "--domain", "localhost") == 0
        assert capsys.readouterr().out == "bob@localhost was not locked; its failed logins are forgotten.\n"
    finally:
        app.runtime.close()


def test_cli_unban_ends_a_ban(cli, capsys):
    app = cli.app()
    origin = "203.0.113.7"

    def attempt(i: int) -> int:  # a new username each time: never an account lock
        return send(app, "/auth/login", login_body(f"nobody{i}", "guess"), remote_addr=origin).status_code

    try:
        assert [attempt(i) for i in range(10)] == [401] * 10
        assert attempt(10) == 429
        assert cli("unban", origin, "--domain", "localhost") == 0
        captured = capsys.readouterr()
        assert captured.out == f"Unbanned {origin} in localhost.\n"
        assert "event=unbanned domain=localhost origin=cli admin=" in captured.err
        assert f"banned_origin={origin} was_banned=true" in captured.err
        assert attempt(11) == 401
        assert cli("unban", f"[{origin}]", "--domain", "localhost") == 0
        assert capsys.readouterr().out == f"{origin} was not banned in localhost; its abuse weight is forgotten.\n"
    finally:
        app.runtime.close()


def test_cli_hash_password_follows_the_auth_section(cli, capsys):
    assert cli("hash-password", "--password-stdin", password="correct horse battery") == 0
    hashed = capsys.readouterr().out.strip()
    assert hashed.startswith("$argon2id$v=19$m=64,t=1,p=1$")  # the fixture's [auth]
    assert Passwords(Config.from_dict({"auth": CHEAP_AUTH}).section("auth", AUTH_SCHEMA)).verify(
        "correct horse battery", hashed)[0]


def test_cli_commands_come_from_the_plugin_managers_given(cli, capsys):
    """Without the auth plugin, its commands are not there: the table is the plugin's."""
    from bastion_auth.cli import COMMANDS

    with pytest.raises(SystemExit) as exited:
        main(["--help"], pm=get_plugin_manager(only=["storage_mem", "auth"], trace=False))
    assert exited.value.code == 0
    listing = capsys.readouterr().out
    assert all(f"    {command.name}" in listing for command in COMMANDS)
    with pytest.raises(SystemExit) as exited:
        main(["users"], pm=get_plugin_manager(only=["storage_mem"], trace=False))
    assert exited.value.code == 2 and "invalid choice: 'users'" in capsys.readouterr().err


# -- check --deploy ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("memory, time_cost, ok", [
    (19456, 2, True), (47104, 1, True), (12288, 3, True), (7168, 5, True), (65536, 3, True),
    (19455, 2, False), (19456, 1, False), (64, 1, False), (7168, 4, False),
])
def test_deploy_check_holds_argon2_to_owasps_floor(memory, time_cost, ok):
    from bastion_auth.settings import deploy_problems

    config = Config.from_dict({"auth": {"argon2_memory_cost": memory, "argon2_time_cost": time_cost}})
    ids = [p.id for p in deploy_problems(config, None)]
    assert ("auth.E001" not in ids) == ok, ids


def test_cli_roles_shows_and_sets_a_users_roles(cli, capsys):
    assert cli("adduser", "bob", "--domain", "localhost", "--password-stdin", password="first password") == 0
    capsys.readouterr()
    assert cli("roles", "bob", "--domain", "localhost") == 0
    assert capsys.readouterr().out == "bob@localhost has no roles.\n"
    assert cli("roles", "bob", "--domain", "LOCALHOST", "--set", "editor, admin ,editor") == 0
    assert capsys.readouterr().out == "bob@localhost now has the roles admin, editor.\n"
    assert cli("roles", "bob", "--domain", "localhost", "--set", "admin,editor") == 0
    assert capsys.readouterr().out == "bob@localhost already has the roles admin, editor: nothing changed.\n"
    assert cli("roles", "bob", "--domain", "localhost") == 0
    assert capsys.readouterr().out == "bob@localhost has the roles admin, editor.\n"
    app = cli.app()
    try:
        with app.runtime.bind("localhost"):
            assert users.roles_of("bob") == ("admin", "editor")
    finally:
        app.runtime.close()
    assert cli("roles", "bob", "--domain", "localhost", "--set", "") == 0
    assert capsys.readouterr().out == "bob@localhost now has no roles.\n"


@pytest.mark.parametrize("argv, message", [
    (("roles", "nobody", "--domain", "localhost"), "no user nobody@localhost"),
    (("roles", "nobody", "--domain", "localhost", "--set", "admin"), "no user nobody@localhost"),
    (("roles", "bob", "--domain", "localhost", "--set", "not a role"), "not a role name"),
    (("roles", "bad name", "--domain", "localhost"), "username"),
])
def test_cli_roles_refuses_bad_input_with_a_message(cli, argv, message):
    cli("adduser", "bob", "--domain", "localhost", "--password-stdin", password="first password")
    with pytest.raises(SystemExit, match=message):
        cli(*argv)
