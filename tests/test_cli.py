"""The `bastion` command: plugins, check, hash-password."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from kernel import Problem, hookimpl, load_config, service
from kernel.cli import main
from kernel.core.plugins import get_plugin_manager

ROOT = Path(__file__).resolve().parents[1]


def test_plugins_lists_the_memory_driver_with_its_hooks(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "storage_mem  bastion (built in)" in out
    assert "    bastion_storage_driver" in out


def test_check_passes_on_the_shipped_config(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the shipped SQLite path is relative: keep the checkout's var/ untouched
    assert main(["--config", str(ROOT / "bastion.ini"), "check"]) == 0
    assert capsys.readouterr().out.startswith("ok: ")


def test_check_fails_with_one_line_on_a_misspelt_key(tmp_path, capsys):
    ini = tmp_path / "bad.ini"
    ini.write_text("[bastion]\ndevelopment = true\nstorgae = mem://\n")
    assert main(["--config", str(ini), "check"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"bastion: {ini}: [bastion] storgae: unknown key")
    assert "\n" not in err


def test_hash_password_from_stdin(monkeypatch, capsys):
    from passlib.hash import argon2

    monkeypatch.setattr(sys, "stdin", io.StringIO("correct horse battery\n"))
    assert main(["hash-password", "--password-stdin"]) == 0
    hashed = capsys.readouterr().out.strip()
    assert hashed.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert argon2.verify("correct horse battery", hashed)


def test_console_script_is_installed():
    result = subprocess.run([str(Path(sys.executable).with_name("bastion")), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "plugins" in result.stdout


def test_hash_password_follows_the_auth_section(tmp_path, monkeypatch, capsys):
    ini = tmp_path / "b.ini"
    ini.write_text("[auth]\nargon2_memory_cost = 65536\nargon2_time_cost = 3\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO("correct horse battery\n"))
    assert main(["--config", str(ini), "hash-password", "--password-stdin"]) == 0
    assert capsys.readouterr().out.startswith("$argon2id$v=19$m=65536,t=3,p=1$")


def test_hash_password_refuses_a_short_password(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    try:
        main(["hash-password", "--password-stdin"])
    except SystemExit as exc:
        assert "8 to 1024" in str(exc)
    else:
        raise AssertionError("a short password was hashed")


# -- operability: --version, check's URLs, check --deploy ---------------------------------------------------------


def test_version(capsys):
    from kernel import __version__

    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert capsys.readouterr().out == f"bastion {__version__}\n"


def test_check_reports_both_urls_and_never_a_password(tmp_path, postgres_server, redis_server):
    import os
    from urllib.parse import quote

    from kernel.testing import free_port

    secret = "s3cr/t+pa:ss@w0rd=="  # generated passwords hold / + = and @, pasted as they are, unencoded
    pg = postgres_server.url.replace("postgresql://bastion@", "postgresql://bastion:${PGPASS}@")
    ini = tmp_path / "bastion.ini"

    def check(state: str) -> str:
        ini.write_text(f"[bastion]\ndevelopment = true\nstorage = {pg}\nstate = {state}\n")
        result = subprocess.run([str(Path(sys.executable).with_name("bastion")), "--config", str(ini), "check"],
                                capture_output=True, text=True, env={**os.environ, "PGPASS": secret, "RPASS": secret},
                                timeout=60)
        text = result.stdout + result.stderr
        assert secret not in text and "s3cr" not in text and "w0rd" not in text, text
        return text

    # PostgreSQL trusts the test's connections whatever the password; this Redis has none
    text = check(redis_server.url)
    assert text.startswith("ok: ") and "storage postgresql://bastion:***@127.0.0.1:" in text
    assert f"and state {redis_server.url} answer" in text
    # redis-py cannot read that password unencoded: refused, without a piece of it
    text = check(redis_server.url.replace("redis://", "redis://:${RPASS}@"))
    assert "invalid Redis URL 'redis://:***@127.0.0.1:" in text
    # encoded, on a port where no Redis listens: the failure names both URLs, redacted
    text = check(f"redis://:{quote(secret, safe='')}@127.0.0.1:{free_port()}/0")
    assert "storage unavailable" in text and "state redis://:***@127.0.0.1:" in text
    assert quote(secret, safe="") not in text


def test_a_bad_value_never_shows_a_password_from_the_environment(tmp_path, capsys):
    ini = tmp_path / "bastion.ini"
    ini.write_text("[bastion]\ndevelopment = true\nstorage = not a url://u:${PW}@h/db\n")
    from kernel.core.config import BASTION_SCHEMA, load_config
    from kernel.core.errors import ConfigError

    try:
        load_config(str(ini), environ={"PW": "hunter2/x"}).section("bastion", BASTION_SCHEMA)
    except ConfigError as exc:
        assert "hunter2" not in str(exc) and "***" in str(exc)
    else:
        raise AssertionError("an invalid URL was accepted")


def _deploy(ini: Path, capsys, *extra: str) -> tuple[int, str]:
    status = main(["--config", str(ini), "check", "--deploy", *extra])
    return status, capsys.readouterr().out


def test_check_deploy_names_every_problem_of_a_development_configuration(tmp_path, capsys):
    ini = tmp_path / "bastion.ini"
    ini.write_text("[bastion]\ndevelopment = true\nstorage = mem://\nlog_level = debug\n"
                   "[auth]\nargon2_memory_cost = 64\nargon2_time_cost = 1\nabuse_max = 0\nmin_password_length = 4\n"
                   "[metrics]\nallow = 0.0.0.0/0\n[server]\nbind = 0.0.0.0:9000\nreload = on\n")
    status, out = _deploy(ini, capsys)
    assert status == 1
    for problem in ("error   bastion.E001", "error   bastion.E002", "error   bastion.E003", "error   bastion.E008",
                    "error   auth.E001", "warning bastion.W009", "warning bastion.W010", "warning bastion.W011",
                    "warning auth.W002", "warning auth.W004"):
        assert problem in out, f"{problem} missing:\n{out}"
    assert out.index("error ") < out.index("warning ")  # errors first
    assert out.rstrip().endswith("check --deploy: 5 errors, 5 warnings: not ready for production"), out


def test_check_deploy_passes_a_production_configuration_with_its_warnings(tmp_path, capsys, monkeypatch):
    ini = tmp_path / "bastion.ini"
    database = tmp_path / "bastion.sqlite3"
    ini.write_text(f"[bastion]\nstorage = sqlite:///{database}\nallowed_hosts = example.com, *.example.com\n"
                   "trusted_proxies = 127.0.0.1\n")
    monkeypatch.chdir(tmp_path)
    assert main(["--config", str(ini), "initdb"]) == 0  # production mode: the schema is made once, by initdb
    capsys.readouterr()
    status, out = _deploy(ini, capsys)
    assert status == 0, out
    assert "warning sql.W001: [bastion] storage: SQLite serves one machine" in out
    assert out.rstrip().endswith("check --deploy: 0 errors, 1 warning: ready for production")
    status, out = _deploy(ini, capsys, "--fail-level", "warning")
    assert status == 1 and "not ready for production" in out


def test_check_deploy_names_a_password_written_in_the_file(tmp_path, capsys):
    ini = tmp_path / "bastion.ini"
    ini.write_text("[bastion]\nstorage = redis://:plain-secret@127.0.0.1:1/0\nallowed_hosts = example.com\n")
    ini.chmod(0o644)
    status, out = _deploy(ini, capsys)
    assert status == 1  # the Redis does not answer: bastion.E000, and the rest is still named
    assert "error   bastion.E000: the storage does not answer" in out
    assert "warning bastion.W012: [bastion] storage: a password is written in" in out and "readable by other" in out
    assert "plain-secret" not in out


def test_check_deploy_names_a_remote_store_without_a_password(tmp_path, capsys, monkeypatch):
    # The hosts are unreachable on purpose: the check reads the URLs, the storage error is one more problem.
    ini = tmp_path / "bastion.ini"
    ini.write_text("[bastion]\ndevelopment = true\nstorage = sqlite:///" + str(tmp_path / "b.sqlite3") + "\n"
                   "state = redis://192.0.2.10:6379/0\nallowed_hosts = example.com\n"
                   "[storage_redis]\nsocket_connect_timeout = 0.2\nsocket_timeout = 0.2\n")
    status, out = _deploy(ini, capsys)
    assert status == 1
    assert "error   redis.E001: [bastion] state = redis://192.0.2.10:6379/0: Redis on 192.0.2.10 with no password" in out
    assert "warning redis.W002" in out


# -- the commands' table, and the plugin manager a test gives ------------------------------------------------------


@service
def given_greeting() -> str:
    return "hello"


class _Given:
    """A plugin only a given plugin manager has: one service and one deploy problem."""

    @hookimpl
    def bastion_services(self):
        return [given_greeting]

    @hookimpl
    def bastion_deploy_checks(self, config, runtime):
        return [Problem.warning("given.W001", f"the given plugin saw {'a' if runtime else 'no'} runtime")]


def _given_pm():
    pm = get_plugin_manager(only=["storage_mem"], trace=False)
    pm.register(_Given(), name="given")
    return pm


def _mem_ini(tmp_path: Path) -> Path:
    ini = tmp_path / "bastion.ini"
    ini.write_text("[bastion]\ndevelopment = true\nstorage = mem://\n")
    return ini


def test_plugins_lists_the_plugin_managers_given(capsys):
    assert main(["plugins"], pm=_given_pm()) == 0
    out = capsys.readouterr().out
    assert "storage_mem  bastion (built in)" in out and "given  " in out and "    bastion_deploy_checks" in out
    assert "auth  bastion-auth" not in out


def test_check_builds_its_runtime_with_the_plugin_manager_given(tmp_path, capsys):
    assert main(["--config", str(_mem_ini(tmp_path)), "check"], pm=_given_pm()) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: ") and "answer; 1 service and no models.\n" in out, out


def test_check_deploy_asks_the_plugin_manager_given(tmp_path, capsys):
    status = main(["--config", str(_mem_ini(tmp_path)), "check", "--deploy"], pm=_given_pm())
    out = capsys.readouterr().out
    assert status == 1 and "error   bastion.E001" in out  # development = true
    assert "warning given.W001: the given plugin saw a runtime" in out


def test_version_and_serve_help_with_the_plugin_manager_given(capsys):
    from kernel import __version__

    for argv, shown in ((["--version"], f"bastion {__version__}\n"), (["serve", "--help"], "usage: bastion serve")):
        try:
            main(argv, pm=_given_pm())
        except SystemExit as exc:
            assert exc.code == 0
        else:
            raise AssertionError(f"{argv} did not exit")
        assert capsys.readouterr().out.startswith(shown)


def test_the_parser_lists_the_kernels_table_then_the_plugins_commands(capsys):
    from kernel.cli import COMMANDS

    try:
        main(["--help"], pm=_given_pm())
    except SystemExit as exc:
        assert exc.code == 0
    listing = capsys.readouterr().out
    positions = [listing.index(f"\n    {command.name} ") for command in COMMANDS]
    assert positions == sorted(positions)
    assert "adduser" not in listing  # the auth plugin is not in this plugin manager


# -- the Python client ---------------------------------------------------------------------------------------------


def test_the_client_passes_any_keyword_to_the_service(make_app):
    from kernel import hookimpl, service
    from kernel.testing import Client

    @service
    def greet(name: str, service: str = "x") -> str:
        return f"{name} {service}"

    class Plugin:
        @hookimpl
        def bastion_services(self):
            return [greet]

    from passlib.hash import argon2

    hashed = argon2.using(type="ID", memory_cost=64, rounds=1).hash("correct horse battery")
    app = make_app({"users": {"alice@localhost": hashed},
                    "auth": {"argon2_memory_cost": 64, "argon2_time_cost": 1}}, plugins=[Plugin()],
                   only=["storage_mem", "auth"])
    client = Client(app=app, host="localhost", clock=app.runtime.clock)
    client.login("alice", "correct horse battery")
    assert client.call("greet", name="world", service="y") == "world y"
    assert client.call("greet", "positional") == "positional x"


def test_check_fails_with_one_line_on_a_permission_for_no_service(tmp_path, capsys):
    ini = tmp_path / "bad.ini"
    ini.write_text("[bastion]\ndevelopment = true\nstorage = mem://\n\n[permissions]\nclear_complete = admin\n")
    assert main(["--config", str(ini), "check"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"bastion: {ini}: [permissions] clear_complete: no such service; accepted: one of ")
    assert "clear_completed" in err and "\n" not in err


def test_check_names_the_bad_line_of_roles(tmp_path, capsys):
    ini = tmp_path / "bad.ini"
    ini.write_text("[bastion]\ndevelopment = true\nstorage = mem://\n\n[roles]\nalice@localhost = admin, not a role\n")
    assert main(["--config", str(ini), "check"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"bastion: {ini}: [roles] alice@localhost: 'not a role' is not a role name")


def plugins_listed(output: str) -> dict[str, set[str]]:
    """``bastion plugins``'s output as each plugin's hooks."""
    rows: dict[str, set[str]] = {}
    hooks: set[str] = set()
    for line in output.splitlines():
        if line.startswith("    "):
            hooks.add(line.split()[0])
        else:
            hooks = rows[line.split()[0]] = set()
    return rows


def test_plugins_lists_every_hook_also_those_of_the_objects_a_plugin_registers_when_a_runtime_opens(tmp_path):
    """The auth and permissions plugins implement most of their hooks on objects they register in
    ``bastion_configure``: the console script lists those too, the same hooks as a runtime has for each plugin."""
    from kernel.core.runtime import Runtime

    result = subprocess.run([str(Path(sys.executable).with_name("bastion")), "plugins"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result
    listed = plugins_listed(result.stdout)
    assert {"bastion_services", "bastion_authenticate", "bastion_configure", "bastion_cli"} <= listed["auth"]
    assert {"bastion_configure", "bastion_check", "bastion_has_permission"} <= listed["permissions"]
    assert "    bastion_services  (on bastion_auth.core.Auth, registered when a runtime opens)" in result.stdout

    config = load_config(_mem_ini(tmp_path))
    with Runtime(config, get_plugin_manager()) as runtime:
        packages = {name: _package(plugin) for name, plugin in runtime.pm.list_name_plugin() if name in listed}
        opened: dict[str, set[str]] = {name: set() for name in packages}
        for _, plugin in runtime.pm.list_name_plugin():
            owner = next((name for name, package in packages.items() if package == _package(plugin)), None)
            if owner is not None and not owner.startswith("kernel") and owner != "storage_mem":
                opened[owner] |= {hook.name for hook in runtime.pm.get_hookcallers(plugin) or []}
    for name in ("auth", "permissions", "todo", "storage_sql", "storage_redis"):
        assert listed[name] == opened[name], name


def _package(plugin: object) -> str:
    """The top-level package of a plugin object (a module or an instance)."""
    module = plugin.__name__ if isinstance(plugin, type(sys)) else type(plugin).__module__
    return module.partition(".")[0]
