"""The plugin boundary, on the test side: what test modules may import, and what the kernel never imports.

* A plugin's test modules (``plugins/*/tests/*.py``) import of the kernel only
  ``kernel``, ``kernel.drivers`` (the driver author's facade) and
  ``kernel.testing``, and only names of their ``__all__``; of Bastion's
  plugins only their own (third-party libraries, pytest and the standard
  library are theirs to use).
* A plugin's own modules import ``kernel`` and ``kernel.drivers`` (and
  ``kernel.testing`` in the module that is its pytest plugin), names of their
  ``__all__`` only.
* The kernel's own tests (which may import kernel internals) reach the
  launchers of real servers through ``kernel.testing``, never through a
  plugin or the submodule behind it.
* The kernel, ``kernel.testing`` included, never imports a plugin.

Python source inside a string (a script a test runs in a subprocess) counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import kernel
import kernel.drivers
import kernel.testing

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_TESTS = sorted(ROOT.glob("plugins/*/tests/*.py"))
KERNEL_TESTS = sorted(p for p in (ROOT / "tests").glob("*.py") if p.name != Path(__file__).name)  # not its own samples
KERNEL_SOURCES = sorted((ROOT / "kernel").rglob("*.py"))

#: The public names of each kernel module a plugin's test may import from.
PUBLIC = {"kernel": set(kernel.__all__), "kernel.drivers": set(kernel.drivers.__all__),
          "kernel.testing": set(kernel.testing.__all__)}


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """Every import of a file as ``(line, module, names)``, nested ones and those in source strings included.

    ``import a.b`` is ``("a.b", [])``; ``from a import b, c`` is ``("a", ["b", "c"])``.
    """
    found: list[tuple[int, str, list[str]]] = []

    def visit(tree: ast.AST, offset: int) -> None:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.extend((offset + node.lineno, alias.name, []) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                found.append((offset + node.lineno, module, [alias.name for alias in node.names]))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "import " in node.value:
                try:
                    inner = ast.parse(node.value)
                except SyntaxError:
                    continue  # prose, not a script
                visit(inner, offset + node.lineno - 1)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), 0)
    return found


def own_package(test_file: Path) -> str:
    """plugins/storage_sql/tests/x.py -> bastion_storage_sql."""
    return "bastion_" + test_file.parents[1].name


def plugin_test_violations(path: Path, root: Path = ROOT) -> list[str]:
    helpers = {p.stem for p in path.parent.glob("*.py")}  # a test folder's own helper modules
    problems = []
    for line, module, names in imports(path):
        top = module.split(".")[0]
        where = f"{path.relative_to(root)}:{line}"
        if module in PUBLIC:
            for name in names:
                if name not in PUBLIC[module]:
                    problems.append(f"{where}: from {module} import {name}: not in {module}.__all__")
        elif top == "kernel":
            problems.append(f"{where}: {module} is not public: import from kernel, kernel.drivers or kernel.testing")
        elif top.startswith("bastion_") and top != own_package(path):
            problems.append(f"{where}: {module} is another plugin: reach it through the kernel (hooks, entry points)")
        elif top in ("tests", "bench") or (module.startswith(".") and module.lstrip(".") not in helpers):
            problems.append(f"{where}: {module} is not the plugin's nor a library")
    return problems


@pytest.mark.parametrize("path", PLUGIN_TESTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_plugin_tests_import_only_the_public_kernel(path):
    assert plugin_test_violations(path) == []


def test_the_boundary_check_catches_what_it_forbids(tmp_path):
    test_file = tmp_path / "plugins" / "auth" / "tests" / "test_bad.py"
    test_file.parent.mkdir(parents=True)
    test_file.write_text(
        "import kernel.cli\n"
        "from kernel.core import signing\n"
        "from kernel.testing.servers import GunicornServer\n"
        "from kernel.testing import Client, secret_helper\n"
        "from bastion_storage_mem import MemoryDriver\n"
        "from kernel.drivers import Change, DriverSuite, MemoryDriver\n"
        "from kernel.drivers import Client\n"
        "import kernel.storage_mem\n"
        "from bastion_auth import users\n"
        "import pytest, redis\n"
        "def f():\n"
        "    from kernel.core.errors import Forbidden\n"
        "SCRIPT = '''\nfrom kernel.core.driver import Change\n'''\n", encoding="utf-8")
    problems = plugin_test_violations(test_file, root=tmp_path)
    flagged = [problem.split(": ", 1)[0].rsplit(":", 1)[1] for problem in problems]
    assert flagged == ["1", "2", "3", "4", "5", "7", "8", "12", "14"], problems


#: The modules behind the launchers of kernel.testing, which tests reach through kernel.testing itself.
LAUNCHER_MODULES = {"kernel.testing.redis", "kernel.testing.postgres", "kernel.testing.servers", "kernel.testing.ports"}


@pytest.mark.parametrize("path", KERNEL_TESTS, ids=lambda p: p.name)
def test_kernel_tests_take_launchers_from_kernel_testing(path):
    wrong = [f"{line}: {module}" for line, module, _ in imports(path)
             if module in LAUNCHER_MODULES or (module.startswith("bastion_") and module.endswith(".testing"))]
    assert wrong == [], f"{path.name}: import the launchers from kernel.testing"


@pytest.mark.parametrize("path", KERNEL_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_kernel_never_imports_a_plugin(path):
    assert [(line, module) for line, module, _ in imports(path) if module.startswith("bastion_")] == []


def test_kernel_testing_exports_what_it_lists_and_nothing_of_kernel_all():
    assert [name for name in kernel.testing.__all__ if not hasattr(kernel.testing, name)] == []
    assert len(set(kernel.testing.__all__)) == len(kernel.testing.__all__)
    assert set(kernel.testing.__all__) & set(kernel.__all__) == set()


# -- plugin code, and the kernel's own shape ------------------------------------------------------

PLUGIN_CODE = sorted(ROOT.glob("plugins/*/bastion_*/**/*.py"))


@pytest.mark.parametrize("path", PLUGIN_CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_plugin_code_imports_only_the_public_api(path):
    """A plugin's own modules import the kernel as ``kernel`` and, for a driver's code, ``kernel.drivers``,
    nothing else (``kernel.testing`` only in the module that is the plugin's pytest plugin)."""
    allowed = {"kernel", "kernel.drivers"} | ({"kernel.testing"} if path.name == "testing.py" else set())
    problems = []
    for line, module, names in imports(path):
        if module.split(".")[0] != "kernel":
            continue
        if module not in allowed:
            problems.append(f"{line}: {module}")
        else:
            problems += [f"{line}: {name}" for name in names if name not in PUBLIC[module]]
    assert problems == [], f"{path.relative_to(ROOT)}: import from `kernel` or `kernel.drivers` only names of their __all__"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_kernel_modules_import_each_other_without_a_circle():
    """``kernel/__init__`` is the facade that imports them all; no kernel module imports the facade back."""
    modules = {_module_name(path): path for path in KERNEL_SOURCES}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        if name == "kernel":
            continue
        edges = graph.setdefault(name, set())
        for _, module, names in imports(path):
            if module == "kernel":
                submodules = {f"kernel.{n}" for n in names}
                assert submodules <= set(modules), f"{name} imports the facade `kernel`: import the module it needs"
                edges |= submodules
            elif module in modules:
                edges.add(module)
    graph = {name: edges & set(graph) for name, edges in graph.items()}

    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for following in sorted(graph.get(node, ())):
                if following == start:
                    return trail + [start]
                if following not in seen:
                    seen.add(following)
                    stack.append((following, trail + [following]))
        return None

    cycles = [cycle for cycle in map(cycle_from, sorted(graph)) if cycle]
    assert cycles == [], "import circles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_the_public_api_exports_what_it_lists():
    assert [name for name in kernel.__all__ if not hasattr(kernel, name)] == []


@pytest.mark.parametrize("path", KERNEL_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_kernel_knows_no_password_library(path):
    """Passwords are the auth plugin's: the kernel neither imports nor depends on passlib or argon2."""
    assert [(line, module) for line, module, _ in imports(path) if module.split(".")[0] in ("passlib", "argon2")] == []


def test_the_kernel_distribution_requires_no_password_library():
    requirements = (ROOT / "setup.cfg").read_text(encoding="utf-8").split("install_requires =", 1)[1].split("\n\n", 1)[0]
    assert "libpass" not in requirements and "argon2" not in requirements
