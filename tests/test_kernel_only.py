"""The kernel's distribution alone serves: a virtualenv with ``bastion`` and its requirements, and no plugin, runs
``bastion check`` and ``bastion serve`` on the default storage (``mem://``, built in) and answers ``GET /healthz``.

The virtualenv is made once for the module, in a few seconds and with no network: the kernel is installed from a
copy of this checkout by pip (``--no-deps --no-build-isolation --no-index``), and its requirements are those this
test environment already has, linked into a folder of their own (nothing else of it: no plugin is visible). It is
removed at the end.
"""

from __future__ import annotations

import http.client
import importlib.metadata
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernel.testing import free_port, wait_until_serving

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

#: What pip needs of the checkout to build the kernel's distribution.
SOURCE = ("kernel", "setup.cfg", "pyproject.toml", "README.md")


def closure(name: str) -> list[importlib.metadata.Distribution]:
    """A distribution and every one it requires, extras left out, as installed here."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = [name]
    while todo:
        try:
            dist = importlib.metadata.distribution(todo.pop())
        except importlib.metadata.PackageNotFoundError:
            continue  # a requirement for another platform or Python
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in found:
            continue
        found[key] = dist
        todo += [re.match(r"[\w.-]+", line)[0] for line in dist.requires or [] if "extra ==" not in line]
    return list(found.values())


def link_distributions(dists: list[importlib.metadata.Distribution], folder: Path) -> Path:
    """Link each distribution's top-level packages and metadata into ``folder``."""
    folder.mkdir()
    for dist in dists:
        site = Path(dist.locate_file(""))
        for top in {file.parts[0] for file in dist.files or [] if file.parts[0] != ".."}:
            if not (folder / top).exists():
                (folder / top).symlink_to(site / top)
    return folder


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without what would point the kernel-only one at this checkout or its settings."""
    dropped = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    env = {key: value for key, value in os.environ.items() if key not in dropped and not key.startswith("BASTION_")}
    return {**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}


@pytest.fixture(scope="module")
def kernel_only() -> Iterator[Path]:
    """The ``bin`` folder of a fresh virtualenv holding only the kernel's distribution and its requirements."""
    with tempfile.TemporaryDirectory(prefix="bastion-kernel-only-") as tmp:
        root = Path(tmp)
        source = root / "source"
        source.mkdir()
        for name in SOURCE:
            if (ROOT / name).is_dir():
                shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(ROOT / name, source / name)
        requirements = [dist for dist in closure("bastion") if dist.metadata["Name"] != "bastion"]
        runtime = link_distributions(requirements, root / "requirements")
        build = link_distributions(closure("setuptools"), root / "build-requirements")
        venv.create(root / "venv", with_pip=False)
        python = root / "venv" / "bin" / "python"
        purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                 capture_output=True, text=True, check=True, env=clean_environment()).stdout.strip()
        Path(purelib, "bastion-requirements.pth").write_text(f"{runtime}\n", encoding="utf-8")
        subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                        "--no-build-isolation", "--no-index", "--no-cache-dir", str(source)],
                       check=True, cwd=root, env=clean_environment(PYTHONPATH=str(build)), timeout=120)
        yield root / "venv" / "bin"


def run(bin: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin / args[0]), *args[1:]], capture_output=True, text=True, cwd=cwd,
                          env=clean_environment(), timeout=60)


def test_the_virtualenv_holds_the_kernel_and_no_plugin(kernel_only, tmp_path):
    code = ("import importlib.metadata as m, importlib.util as u, kernel, kernel.drivers; "
            "print(kernel.__file__); print(sorted(e.name for e in m.entry_points(group='bastion'))); "
            "print([p for p in ('bastion_storage_mem', 'bastion_auth', 'bastion_storage_sql') if u.find_spec(p)])")
    done = run(kernel_only, "python", "-c", code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    where, entry_points, plugins = done.stdout.splitlines()
    assert Path(where).is_relative_to(kernel_only.parent) and not Path(where).is_relative_to(ROOT)
    assert (entry_points, plugins) == ("[]", "[]")
    done = run(kernel_only, "bastion", "plugins", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "storage_mem  bastion (built in)" in done.stdout


def test_check_and_serve_with_the_kernel_alone(kernel_only, tmp_path):
    port = free_port("127.0.0.1")
    (tmp_path / "bastion.ini").write_text(f"[bastion]\ndevelopment = true\n\n[server]\nbind = 127.0.0.1:{port}\n",
                                          encoding="utf-8")
    done = run(kernel_only, "bastion", "check", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("ok: ")

    with open(tmp_path / "serve.log", "wb") as log:
        server = subprocess.Popen([str(kernel_only / "bastion"), "serve"], cwd=tmp_path, env=clean_environment(),
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_serving("127.0.0.1", port, server, timeout=30)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/healthz", headers={"Host": "localhost"})
        response = conn.getresponse()
        body = response.read()
        conn.close()
        assert response.status == 200, body
    except Exception:
        print((tmp_path / "serve.log").read_text(errors="replace"))
        raise
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
