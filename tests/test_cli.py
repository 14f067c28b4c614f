"""The `bastion` command: plugins, check, hash-password."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from kernel.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_plugins_lists_the_memory_driver_with_its_hooks(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "storage_mem  bastion-storage-mem" in out
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
