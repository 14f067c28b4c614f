"""The plugin boundary, as rules the code cannot break quietly.

* A plugin imports the kernel only through its public API: ``kernel`` (its
  ``__all__``), and in its tests ``kernel.testing``.
* The kernel imports no plugin, ever: it discovers them.
* The kernel's modules import each other without a circle (``kernel/__init__``
  is the facade that imports them; no module imports the facade back).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import kernel

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_CODE = sorted(p for p in (ROOT / "plugins").glob("*/bastion_*/**/*.py"))
PLUGIN_TESTS = sorted((ROOT / "plugins").glob("*/tests/**/*.py"))
KERNEL = sorted((ROOT / "kernel").rglob("*.py"))


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, module, names)`` of every import of a file, except those only for type checkers."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return found


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize("path", PLUGIN_CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_plugin_code_imports_only_the_public_api(path):
    for line, module, names in imports(path):
        if module == "kernel" or module.startswith("kernel."):
            assert module == "kernel", f"{path.name}:{line} imports {module}; plugins import `kernel` only"
            private = [n for n in names if n not in kernel.__all__]
            assert not private, f"{path.name}:{line} imports {private}, which `kernel.__all__` does not list"


@pytest.mark.parametrize("path", PLUGIN_TESTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_plugin_tests_import_only_the_public_and_the_testing_api(path):
    import kernel.testing

    for line, module, names in imports(path):
        if module == "kernel" or module.startswith("kernel."):
            assert module in ("kernel", "kernel.testing"), f"{path.name}:{line} imports {module}"
            public = kernel.__all__ if module == "kernel" else kernel.testing.__all__
            private = [n for n in names if n not in public]
            assert not private, f"{path.name}:{line} imports {private} from {module}, which its __all__ does not list"


@pytest.mark.parametrize("path", KERNEL, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_kernel_imports_no_plugin(path):
    for line, module, _ in imports(path):
        top = module.split(".")[0]
        assert not top.startswith("bastion_") and top != "plugins", f"{path.name}:{line} imports {module}"


def test_the_kernel_modules_import_each_other_without_a_circle():
    graph: dict[str, set[str]] = {}
    for path in KERNEL:
        name = module_name(path)
        if name == "kernel":
            continue  # the facade
        edges = graph.setdefault(name, set())
        for _, module, names in imports(path):
            if module == "kernel":
                edges.update(f"kernel.{n}" for n in names if (ROOT / "kernel" / f"{n}.py").exists())
                assert all((ROOT / "kernel" / f"{n}.py").exists() or (ROOT / "kernel" / n).is_dir() for n in names), (
                    f"{name} imports the facade `kernel`; a kernel module imports the module it needs")
            elif module.startswith("kernel."):
                edges.add(module)
    graph = {name: {m for m in edges if m in graph} for name, edges in graph.items()}

    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    return trail + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, trail + [nxt]))
        return None

    cycles = [c for c in (cycle_from(name) for name in sorted(graph)) if c]
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_public_api_lists_only_what_it_exports():
    missing = [name for name in kernel.__all__ if not hasattr(kernel, name)]
    assert not missing
