"""`make install` prints nothing alarming: building the kernel and every plugin says no "Warning", no "would be
ignored" and no traceback, and what is built holds the data folders (the kernel's and the todo UI's static files,
the SQL migrations).

The test installs, as the Makefile does (``pip install --quiet -e . -e plugins/...``), copies of the checkout's
projects into a fresh virtualenv, with no network, no pip configuration and the setuptools of this test
environment (``--no-build-isolation``), then builds their wheels the same way. Nothing of this checkout or of this
environment is changed; the virtualenv is removed at the end.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from .test_kernel_only import SOURCE, clean_environment, closure, link_distributions

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ALARMING = re.compile(r"warning|would be ignored|traceback", re.IGNORECASE)
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "tests")


def makefile_plugins() -> list[str]:
    """The plugin folders `make install` installs, in its order."""
    line = re.search(r"^PLUGINS := (.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE).group(1)
    return line.split()


def copy_projects(folder: Path) -> list[Path]:
    """Copies of the kernel's project and of every plugin's, as pip would see them in a fresh clone."""
    kernel = folder / "bastion"
    kernel.mkdir()
    for name in SOURCE:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, kernel / name, ignore=IGNORE)
        else:
            shutil.copy2(ROOT / name, kernel / name)
    plugins = [shutil.copytree(ROOT / plugin, folder / Path(plugin).name, ignore=IGNORE) for plugin in makefile_plugins()]
    return [kernel, *plugins]


def pip(*args: str, cwd: Path, build: Path) -> subprocess.CompletedProcess:
    """This environment's pip, configured by nothing but its arguments, its output (both streams) in ``stdout``."""
    environment = {key: value for key, value in clean_environment().items() if not key.startswith("PIP_")}
    environment.update(PIP_CONFIG_FILE="/dev/null", PIP_NO_INDEX="1", PYTHONPATH=str(build))
    return subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, env=environment, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)


def assert_quiet(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stdout
    assert not ALARMING.search(done.stdout), done.stdout


def test_installing_and_building_every_project_prints_nothing_alarming(tmp_path):
    projects = copy_projects(tmp_path)
    build = link_distributions(closure("setuptools"), tmp_path / "build-requirements")
    venv.create(tmp_path / "venv", with_pip=False)
    python = tmp_path / "venv" / "bin" / "python"
    editables = [argument for project in projects for argument in ("-e", str(project))]
    installed = pip("--python", str(python), "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-cache-dir",
                    *editables, cwd=tmp_path, build=build)
    assert_quiet(installed)
    packages = ["kernel", *(f"bastion_{project.name}" for project in projects[1:])]
    code = f"import importlib.util as u; print(*(u.find_spec(p).origin for p in {packages!r}), sep=chr(10))"
    found = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path,
                           env=clean_environment(), timeout=60)
    assert found.returncode == 0, found.stderr
    assert [Path(line) for line in found.stdout.splitlines()] == [
        project / package / "__init__.py" for project, package in zip(projects, packages, strict=True)]

    wheels = tmp_path / "wheels"
    built = pip("wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-cache-dir", "--wheel-dir", str(wheels),
                *map(str, projects), cwd=tmp_path, build=build)
    assert_quiet(built)
    files = {name for wheel in wheels.glob("*.whl") for name in zipfile.ZipFile(wheel).namelist()}
    assert {"kernel/static/bastion.js", "bastion_todo/static/index.html", "bastion_todo/static/app.js",
            "bastion_storage_sql/migrations/env.py", "bastion_storage_sql/migrations/script.py.mako",
            "bastion_storage_sql/migrations/versions/0001_initial.py"} <= files
    assert not any("__pycache__" in name or name.startswith("tests/") for name in files)
