"""INI configuration: typed values, one-line errors, environment references."""

from __future__ import annotations

import pytest

from kernel.core.config import Config, load_config
from kernel.core.errors import ConfigError
from kernel.core.plugins import get_plugin_manager
from kernel.core.runtime import Runtime


def runtime_of(text: str, environ=None, path="test.ini") -> Runtime:
    # The auth plugin reads [users] (the kernel claims only [bastion] and [server]).
    return Runtime(Config.from_string(text, path, environ or {}), get_plugin_manager(only=["storage_mem", "auth"]))


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BASTION_CONFIG", raising=False)
    config = load_config()
    assert config.path is None
    assert config.bastion.development is False
    assert config.bastion.storage == "mem://"
    assert config.bastion.max_body == 1024 * 1024
    assert config.server.bind == "127.0.0.1:9000"


def test_bastion_config_variable_wins(tmp_path, monkeypatch):
    ini = tmp_path / "other.ini"
    ini.write_text("[bastion]\ndevelopment = yes\n")
    monkeypatch.setenv("BASTION_CONFIG", str(ini))
    assert load_config().bastion.development is True


def test_typed_values():
    config = Config.from_string("[bastion]\nmax_body = 2MiB\ntrusted_proxies = 10.0.0.0/8, ::1\n"
                                "allowed_hosts = a.example\n  *.b.example\n")
    assert config.bastion.max_body == 2 * 1024 * 1024
    assert [str(n) for n in config.bastion.trusted_proxies] == ["10.0.0.0/8", "::1/128"]
    assert config.bastion.allowed_hosts == ("a.example", "*.b.example")


@pytest.mark.parametrize("text, needle", [
    ("[bastion]\ndevelopmnet = true\n", "test.ini: [bastion] developmnet: unknown key; accepted keys:"),
    ("[bastion]\ndevelopment = maybe\n", "test.ini: [bastion] development = 'maybe': invalid value; accepted: true or false"),
    ("[bastion]\nmax_body = lots\n", "[bastion] max_body = 'lots': invalid value; accepted: a size in bytes"),
    ("[bastion]\ntrusted_proxies = not-an-ip\n", "[bastion] trusted_proxies"),
    ("[server]\nworkers = 0\n", "[server] workers = '0': invalid value; accepted: an integer from 1 to 64"),
    ("[server]\nworker_connections = 0\n",
     "[server] worker_connections = '0': invalid value; accepted: an integer from 1 to 100000"),
    ("[server]\nbind = nowhere\n", "[server] bind"),
    ("[bastoin]\n", "test.ini: [bastoin]: unknown section"),
    ("[users]\nalice = $argon2id$x\n", "[users] alice: expected username@domain"),
    ("[bastion]\ndevelopment = on\nstorage = nope://x\n", "no installed plugin serves the scheme 'nope'"),
])
def test_bad_configuration_is_one_clear_line(text, needle):
    with pytest.raises(ConfigError) as info:
        runtime_of(text)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_environment_references():
    runtime = runtime_of("[bastion]\ndevelopment = ${DEV}\n", {"DEV": "true"})
    assert runtime.development is True
    with pytest.raises(ConfigError, match=r"\[bastion\] development: environment variable MISSING is not set"):
        runtime_of("[bastion]\ndevelopment = ${MISSING}\n")


def test_dollar_signs_of_hashes_are_kept():
    config = Config.from_string("[users]\nalice@localhost = $argon2id$v=19$m=8,t=1,p=1$abc$def\n")
    assert config.raw_section("users") == {"alice@localhost": "$argon2id$v=19$m=8,t=1,p=1$abc$def"}


def test_malformed_file_is_one_line():
    with pytest.raises(ConfigError) as info:
        Config.from_string("[bastion]\n[bastion]\n", "dup.ini")
    assert str(info.value).startswith("dup.ini:") and "\n" not in str(info.value)


def test_shipped_bastion_ini_loads(tmp_path, monkeypatch):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    config = load_config(root / "bastion.ini")
    runtime = Runtime(config)
    try:
        runtime.ping()
    finally:
        runtime.close()


def test_a_section_has_one_owner():
    """A second claim of a section with another schema names both claimers; asking again with the same one reads it."""
    from kernel import Int

    config = Config.from_string("[shop]\nsize = 3\n", "shop.ini")
    first = {"size": Int(1)}
    assert config.section("shop", first, owner="bastion_shop").size == 3
    assert config.section("shop", first) is config.section("shop", first)
    assert config.owner("shop") == "bastion_shop"
    with pytest.raises(ConfigError, match=r"shop.ini: \[shop\]: claimed by bastion_shop and again by tests"):
        config.section("shop", {"size": Int(2), "color": Int(0)})
    with pytest.raises(ConfigError, match=r"\[shop\]: claimed by bastion_shop and again by other"):
        config.raw_section("shop", owner="other")
    config.raw_section("notes", owner="bastion_notes")
    assert config.raw_section("notes", owner="bastion_notes") == {}
    with pytest.raises(ConfigError, match=r"\[notes\]: claimed by bastion_notes and again by tests"):
        config.raw_section("notes")


def test_the_kernel_owns_its_sections_whoever_reads_them_first():
    config = Config.from_string("[bastion]\ndevelopment = true\n")
    assert config.bastion.development is True
    assert config.owner("bastion") == "kernel" and config.owner("server") is None
