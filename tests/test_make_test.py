"""`make test` on a fresh machine: it checks (as root on Debian: installs) what its tests need, and on CI nothing skips.

``tools/test-needs`` runs first in ``make test``; ``.ci/run`` is only ``CI=true make test``; and
``kernel.testing.skip_or_fail`` turns the skip of a missing browser, server or plugin into a failure
when ``CI=true``.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from kernel.testing import import_or_skip, in_ci, skip_or_fail

ROOT = Path(__file__).resolve().parents[1]
NEEDS = ROOT / "tools" / "test-needs"


def run_needs(env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run tools/test-needs as an ordinary user (as root it would install with apt-get)."""
    command = ["sh", str(NEEDS)]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "nobody", "--", *command]
    return subprocess.run(command, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)


def test_everything_the_tests_need_is_here():
    result = run_needs({})
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize(("env", "package"), [
    ({"BASTION_REDIS_SERVER": "/nonexistent/redis-server"}, "redis-server"),
    ({"BASTION_REDIS_CLI": "/nonexistent/redis-cli"}, "redis-tools"),
    ({"BASTION_PG_BINDIR": "/nonexistent"}, "postgresql"),
])
def test_a_missing_program_stops_at_once_with_one_line_naming_its_package(env, package):
    started = time.monotonic()
    result = run_needs(env)
    assert time.monotonic() - started < 10
    assert result.returncode == 1 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line == (f"make test: missing {package}; install them (Debian: sudo apt-get install {package}), "
                    "or run make test as root on Debian to have it done")


def test_make_test_checks_first_and_ci_is_a_thin_wrapper():
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^test:\n((?:\t.*\n)+)", makefile, re.MULTILINE).group(1).splitlines()
    assert "tools/test-needs" in recipe[0] and recipe[-1].strip() == "$(BIN)/python -m pytest tests plugins"
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-2:] == ["export CI=true", "exec make test"] and not any("apt-get" in line for line in ci)


def test_what_cannot_run_is_skipped_here_and_fails_on_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    assert not in_ci()
    with pytest.raises(pytest.skip.Exception, match="no browser"):
        skip_or_fail("no browser")
    with pytest.raises(pytest.skip.Exception, match="nosuchmodule"):
        import_or_skip("nosuchmodule")
    monkeypatch.setenv("CI", "true")
    assert in_ci()
    with pytest.raises(pytest.fail.Exception, match="no browser .CI=true"):
        skip_or_fail("no browser")
    with pytest.raises(pytest.fail.Exception, match="nosuchmodule is not installed"):
        import_or_skip("nosuchmodule")
    assert import_or_skip("json").dumps([]) == "[]"


def fake_programs(folder: Path, scripts: dict[str, str]) -> Path:
    """A folder of shell scripts named like programs, to put first on ``PATH``."""
    folder.mkdir()
    for name, body in scripts.items():
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return folder


def test_as_root_it_waits_for_another_apt_get_to_release_its_locks(tmp_path):
    """Run as root (a fake ``id``), a missing redis-server is installed by a fake ``apt-get`` whose first updates
    find the lists lock held: test-needs tries again instead of failing, and the install waits for the dpkg lock
    (``DPkg::Lock::Timeout``). Nothing real is installed or stopped."""
    redis = tmp_path / "redis-server"
    calls = tmp_path / "calls"
    fakes = fake_programs(tmp_path / "bin", {
        "id": 'echo 0',
        "systemctl": "exit 0",
        "service": "exit 0",
        "apt-get": f"""echo "$*" >> {calls}
case "$*" in
  *" update "*)
    [ "$(grep -c ' update ' {calls})" -gt 2 ] && exit 0
    echo "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 4242 (apt-get)" >&2; exit 100 ;;
  *" install "*) printf '#!/bin/sh\\n' > {redis}; chmod +x {redis} ;;
esac""",
    })
    env = {**os.environ, "PATH": f"{fakes}:{os.environ['PATH']}", "BASTION_REDIS_SERVER": str(redis),
           "BASTION_APT_LOCK_TIMEOUT": "120"}
    result = subprocess.run(["sh", str(NEEDS)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout) == (0, ""), result
    assert result.stderr.splitlines() == ["make test: installing redis-server with apt-get",
                                          "make test: waiting for another apt-get to finish (at most 120 s)"]
    updates, install = calls.read_text().splitlines()[:3], calls.read_text().splitlines()[3:]
    assert updates == ["-o DPkg::Lock::Timeout=120 update -qq"] * 3
    assert install == ["-o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends redis-server fonts-liberation"]


def test_as_root_it_stops_when_the_lock_is_still_held_at_the_deadline(tmp_path):
    fakes = fake_programs(tmp_path / "bin", {
        "id": "echo 0",
        "apt-get": 'echo "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 4242 (apt-get)" >&2; '
                   "exit 100",
    })
    env = {**os.environ, "PATH": f"{fakes}:{os.environ['PATH']}", "BASTION_REDIS_SERVER": str(tmp_path / "none"),
           "BASTION_APT_LOCK_TIMEOUT": "0"}
    result = subprocess.run(["sh", str(NEEDS)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines()[-1] == "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 4242 (apt-get)"
