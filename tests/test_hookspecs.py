"""The hooks' typed contracts: every spec is annotated, and every call of a hook passes exactly its arguments.

pluggy calls every implementation with the keyword arguments it was given: an unknown keyword is silently
dropped (an implementation never sees it), a missing one fails only when the hook is called with an
implementation that takes it, and a positional argument is refused at call time. So every call site in the
kernel and the plugins (``<anything>.hook.bastion_x(...)``, or ``hook.bastion_x(...)``, and ``hooks`` for the pipeline's
direct callers) is read here, and must
pass by keyword exactly the names of the spec's parameters.
"""

from __future__ import annotations

import ast
import inspect
import typing
from pathlib import Path

import pytest

from kernel.core import hookspecs

ROOT = Path(__file__).resolve().parents[1]
#: Where hooks are called: the kernel and every plugin (their tests included).
SCANNED = (ROOT / "kernel", ROOT / "plugins")
HOOKS = hookspecs.hook_names()


def spec_parameters(name: str) -> list[str]:
    return list(inspect.signature(getattr(hookspecs, name)).parameters)


def _per_plugin_hook(node: ast.AST) -> str | None:
    """The hook a node calls, if it is ``call_per_plugin(pm, "bastion_x", settings_of, ...)``."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "call_per_plugin"):
        return None
    if len(node.args) != 3 or not isinstance(node.args[1], ast.Constant) or not isinstance(node.args[1].value, str):
        return "call_per_plugin without a literal hook name"
    return node.args[1].value


def _hook_called(node: ast.AST) -> str | None:
    """The hook a node calls, if it is ``<anything>.hook.bastion_x(...)``, ``hook.bastion_x(...)`` (or ``hooks``) or a
    per-plugin call."""
    per_plugin = _per_plugin_hook(node)
    if per_plugin is not None:
        return per_plugin
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr.startswith("bastion_")):
        return None
    owner = node.func.value
    # ``hooks``: the pipeline's DirectHooks (kernel/core/plugins.py), called as pluggy's relay is.
    if (isinstance(owner, ast.Name) and owner.id in ("hook", "hooks")) or (
            isinstance(owner, ast.Attribute) and owner.attr in ("hook", "hooks")):
        return node.func.attr
    return None


def hook_calls(roots: tuple[Path, ...] = SCANNED) -> list[tuple[str, str, ast.Call]]:
    """Every hook call under ``roots``: ``(path:line, hook name, call)``."""
    found: list[tuple[str, str, ast.Call]] = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            where = path.relative_to(root.parent)
            for node in ast.walk(tree):
                name = _hook_called(node)
                if name is not None and isinstance(node, ast.Call):
                    found.append((f"{where}:{node.lineno}", name, node))
    return found


def wrong_calls(roots: tuple[Path, ...] = SCANNED) -> list[str]:
    """What is wrong with each hook call under ``roots``: one line per problem."""
    wrong = []
    for where, name, call in hook_calls(roots):
        if name not in HOOKS:
            wrong.append(f"{where}: {name} is no hook of kernel/core/hookspecs.py")
            continue
        per_plugin = _per_plugin_hook(call) is not None
        if call.args and not per_plugin:
            wrong.append(f"{where}: {name} is given {len(call.args)} positional argument(s): pluggy takes keywords only")
        if any(keyword.arg is None for keyword in call.keywords):
            wrong.append(f"{where}: {name} is given **arguments, whose names cannot be checked")
        given = [keyword.arg for keyword in call.keywords if keyword.arg is not None]
        if per_plugin:
            given.append("settings")  # call_per_plugin gives each implementation its own plugin's settings
        expected = spec_parameters(name)
        missing = [n for n in expected if n not in given]
        unknown = [n for n in given if n not in expected]
        if missing:
            wrong.append(f"{where}: {name} is not given {', '.join(missing)}")
        if unknown:
            wrong.append(f"{where}: {name} is given {', '.join(unknown)}, which its spec does not name "
                         "(pluggy would drop it)")
    return wrong


def test_every_hook_call_passes_exactly_the_specs_arguments():
    assert wrong_calls() == []


def test_every_hook_is_called_by_the_kernel():
    """The scan finds the kernel's calls: each hook is called somewhere in kernel/."""
    called = {name for _, name, _ in hook_calls((ROOT / "kernel",))}
    assert called == set(HOOKS)


def test_the_check_finds_a_call_that_does_not_match_its_spec(tmp_path):
    """Broken on purpose: a positional argument, a missing one, an unknown one, ``**``, and no such hook."""
    package = tmp_path / "broken"
    package.mkdir()
    (package / "calls.py").write_text(
        "def run(runtime, hook, config, url):\n"
        "    runtime.hook.bastion_shutdown(runtime)\n"
        "    runtime.hook.bastion_configure(config=config)\n"
        "    hook.bastion_storage_driver(url=url, config=config, clock=None, timeout=3)\n"
        "    runtime.pm.hook.bastion_static(**{})\n"
        "    runtime.hook.bastion_no_such_hook()\n"
        "    call_per_plugin(runtime.pm, 'bastion_check', config.for_plugin, runtime=runtime)\n"
        "    call_per_plugin(runtime.pm, 'bastion_startup', config.for_plugin, runtime=runtime, config=config)\n"  # right
    )
    found = wrong_calls((package,))
    assert found == [
        "broken/calls.py:2: bastion_shutdown is given 1 positional argument(s): pluggy takes keywords only",
        "broken/calls.py:2: bastion_shutdown is not given runtime",
        "broken/calls.py:3: bastion_configure is not given settings, runtime",
        "broken/calls.py:4: bastion_storage_driver is not given settings",
        "broken/calls.py:4: bastion_storage_driver is given timeout, which its spec does not name (pluggy would drop it)",
        "broken/calls.py:5: bastion_static is given **arguments, whose names cannot be checked",
        "broken/calls.py:6: bastion_no_such_hook is no hook of kernel/core/hookspecs.py",
        "broken/calls.py:7: bastion_check is not given config",
    ], found


# -- the specs' annotations ------------------------------------------------------------------------------------------


def _type_checking_names() -> dict[str, object]:
    """The names hookspecs.py imports for the type checker only (its ``if TYPE_CHECKING:`` block), imported."""
    tree = ast.parse(Path(hookspecs.__file__).read_text())
    blocks = [node for node in tree.body if isinstance(node, ast.If) and isinstance(node.test, ast.Name)
              and node.test.id == "TYPE_CHECKING"]
    assert len(blocks) == 1
    namespace: dict[str, object] = {}
    exec(compile(ast.Module(blocks[0].body, type_ignores=[]), hookspecs.__file__, "exec"), namespace)
    return namespace


@pytest.mark.parametrize("name", HOOKS)
def test_every_spec_is_annotated_with_types_that_exist(name):
    spec = getattr(hookspecs, name)
    signature = inspect.signature(spec)
    assert signature.return_annotation is not inspect.Signature.empty, f"{name} does not say what it returns"
    for parameter in signature.parameters.values():
        assert parameter.annotation is not inspect.Parameter.empty, f"{name}'s {parameter.name} has no type"
    hints = typing.get_type_hints(spec, globalns={**vars(hookspecs), **_type_checking_names()})
    assert set(hints) == {*signature.parameters, "return"}


def test_the_kernels_types_are_imported_for_the_type_checker_only():
    """Importing the hooks imports no other module of the kernel: the types are under ``TYPE_CHECKING``."""
    tree = ast.parse(Path(hookspecs.__file__).read_text())
    imported = [alias.name if isinstance(node, ast.Import) else node.module
                for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)
                for alias in node.names]
    assert not [module for module in imported if module and module.startswith("kernel")], imported
