"""The kernel's layers import downward only (docs/architecture.md, "Layers").

``kernel/core`` imports nothing above it; ``kernel/ops`` the core; ``kernel/http`` the core and operations;
``kernel/server`` those three; ``kernel/client`` the core. The top-level modules (the facade, the command, the WSGI
entry point, the defaults plugin, the compatibility modules) and ``kernel/testing`` put the layers together and
may import any. Every import counts, a function's too: a late import is still an arrow.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNEL = ROOT / "kernel"

#: What each layer may import of the kernel (itself included), and of the outside world it must not.
MAY_IMPORT = {
    "core": {"core"},
    "ops": {"core", "ops"},
    "http": {"core", "ops", "http"},
    "server": {"core", "ops", "http", "server"},
    "client": {"core", "client"},
}
FORBIDDEN_OUTSIDE = {
    "core": {"falcon", "gunicorn", "prometheus_client"},
    "ops": {"falcon", "gunicorn"},
    "client": {"falcon", "gunicorn", "prometheus_client"},
}
#: Leaf modules every layer may import: they import nothing of the kernel.
LEAVES = {"kernel.version"}


def layer_of(path: Path) -> str | None:
    parts = path.relative_to(KERNEL).parts
    return parts[0] if len(parts) > 1 and parts[0] in MAY_IMPORT else None


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Every module an ``import`` or ``from ... import`` of the file names (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            found.append((node.lineno, module))
            if module == "kernel" or module.startswith("kernel.") and module.count(".") == 1:
                # ``from kernel.core import context``: the names may be modules of that package
                found.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
    return found


def wrong_arrows(root: Path = KERNEL) -> list[str]:
    wrong = []
    for path in sorted(root.rglob("*.py")):
        layer = layer_of(path)
        if layer is None:
            continue
        for line, module in imports_of(path):
            top = module.split(".")[0]
            if top in FORBIDDEN_OUTSIDE.get(layer, set()):
                wrong.append(f"{path.relative_to(ROOT)}:{line}: the {layer} layer imports {module}")
            if top != "kernel" or module in LEAVES or module == "kernel":
                if module == "kernel":
                    wrong.append(f"{path.relative_to(ROOT)}:{line}: the {layer} layer imports the facade `kernel`")
                continue
            target = module.split(".")[1] if module.count(".") else None
            if target in MAY_IMPORT and target not in MAY_IMPORT[layer]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: the {layer} layer imports {module}")
            elif target not in MAY_IMPORT and f"kernel.{target}" not in LEAVES:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: the {layer} layer imports the top-level {module}")
    return wrong


def test_every_arrow_points_down():
    assert wrong_arrows() == []


def test_the_check_finds_an_arrow_that_points_up(tmp_path):
    """Broken on purpose: a core module that imports the HTTP layer, and one that imports Falcon."""
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "__init__.py").write_text("")
    (tmp_path / "core" / "bad.py").write_text("from kernel.http.app import create_app\nimport falcon\n"
                                               "def late():\n    from kernel.ops import logs\n")
    global KERNEL, ROOT
    saved = KERNEL, ROOT
    KERNEL, ROOT = tmp_path, tmp_path
    try:
        found = wrong_arrows(tmp_path)
    finally:
        KERNEL, ROOT = saved
    assert len(found) == 4, found  # "from kernel.ops import logs" names kernel.ops and kernel.ops.logs
    assert any("imports kernel.http.app" in line for line in found)
    assert any("imports falcon" in line for line in found)
    assert any("imports kernel.ops" in line for line in found)


@pytest.mark.parametrize("module", ["kernel", "kernel.core.runtime", "kernel.core.store", "kernel.client"])
def test_importing_the_kernel_does_not_import_falcon(module):
    code = f"import sys, {module}; print(sorted(m for m in ('falcon', 'gunicorn') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert done.stdout.strip() == "[]"
