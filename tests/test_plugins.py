"""The plugin manager: defaults, entry points, restrictions, tracing, loud failures."""

from __future__ import annotations

import logging
import sys
import types

import pluggy
import pytest

import kernel
from kernel import hookimpl
from kernel.core.plugins import DirectHook, describe, get_plugin_manager


def names(pm):
    return {name for name, plugin in pm.list_name_plugin() if plugin is not None}


def test_defaults_then_entry_points():
    pm = get_plugin_manager()
    assert {"kernel.defaults", "storage_mem"} <= names(pm)


def test_load_plugins_restricts(monkeypatch):
    monkeypatch.setenv("BASTION_LOAD_PLUGINS", "storage_mem")
    assert names(get_plugin_manager()) == {"kernel.defaults", "storage_mem"}
    monkeypatch.setenv("BASTION_LOAD_PLUGINS", "")  # no entry point: the built-in plugins only
    assert names(get_plugin_manager()) == {"kernel.defaults", "storage_mem"}


def test_load_plugins_names_a_missing_plugin(monkeypatch):
    monkeypatch.setenv("BASTION_LOAD_PLUGINS", "storage_mem,no_such_plugin")
    with pytest.raises(RuntimeError, match="no_such_plugin"):
        get_plugin_manager()


def test_misspelt_hookimpl_fails_loudly():
    class Typo:
        @hookimpl
        def bastion_servics(self):
            return []

    pm = get_plugin_manager(only=[])
    pm.register(Typo())
    with pytest.raises(pluggy.PluginValidationError):
        pm.check_pending()


def test_trace_logs_every_hook_call(caplog):
    pm = get_plugin_manager(only=["storage_mem"], trace=True)
    with caplog.at_level(logging.DEBUG, logger="bastion.plugins"):
        pm.hook.bastion_static()
    assert "bastion_static" in caplog.text


def test_trace_from_environment(monkeypatch, caplog):
    monkeypatch.setenv("BASTION_TRACE_PLUGINS", "1")
    pm = get_plugin_manager(only=[])
    with caplog.at_level(logging.DEBUG, logger="bastion.plugins"):
        pm.hook.bastion_models()
    assert "bastion_models" in caplog.text


class Verdict:
    """A plugin answering ``bastion_has_permission`` and ``bastion_authenticate`` with what it was made with."""

    def __init__(self, verdict, name="plain"):
        self.verdict, self.name, self.calls = verdict, name, []

    @hookimpl
    def bastion_has_permission(self, session, service, request):
        self.calls.append((session, service, request))
        return self.verdict

    @hookimpl
    def bastion_authenticate(self, credentials, service):
        return None if self.verdict is None else (self.name, credentials, service)


class First(Verdict):
    @hookimpl(tryfirst=True)
    def bastion_has_permission(self, session, service, request):
        return super().bastion_has_permission(session, service, request)


def _both(pm, name, **kwargs):
    """What pluggy's own call answers, and what the DirectHook's does."""
    return getattr(pm.hook, name)(**kwargs), DirectHook(pm, name)(**kwargs)


def test_direct_hook_answers_as_pluggy_does():
    pm = get_plugin_manager(only=[])
    plugins = [Verdict(True, "a"), First(False, "b"), Verdict(None, "c"), Verdict("maybe", "d")]
    for plugin in plugins:
        pm.register(plugin)
    kwargs = {"session": "s", "service": "get_all", "request": "r"}
    direct = DirectHook(pm, "bastion_has_permission")
    assert direct(**kwargs) == pm.hook.bastion_has_permission(**kwargs) == [False, "maybe", True]  # tryfirst first
    assert plugins[0].calls[-1] == ("s", "get_all", "r")  # arguments by name, in the implementation's order
    # firstresult: the first answer that is not None, in the same order (c says None, d answers)
    kwargs = {"request": "r", "credentials": "cr", "service": "add", "admissions": [], "runtime": None}
    assert _both(pm, "bastion_authenticate", **kwargs) == (("d", "cr", "add"), ("d", "cr", "add"))
    for plugin in plugins:
        pm.unregister(plugin)
    assert _both(pm, "bastion_authenticate", **kwargs) == (None, None)


def test_direct_hook_sees_a_plugin_registered_or_unregistered_after_its_first_call():
    pm = get_plugin_manager(only=[])
    direct = DirectHook(pm, "bastion_has_permission")
    kwargs = {"session": "s", "service": "x", "request": "r"}
    assert direct(**kwargs) == []
    late = Verdict(False)
    pm.register(late)
    assert direct(**kwargs) == [False]
    pm.unregister(late)
    assert direct(**kwargs) == []


def test_direct_hook_leaves_wrappers_and_traced_calls_to_pluggy(caplog):
    seen = []

    class Wrapper:
        @hookimpl(wrapper=True)
        def bastion_has_permission(self, session, service, request):
            seen.append(service)
            verdicts = yield
            return [*verdicts, "wrapped"]

    pm = get_plugin_manager(only=[])
    pm.register(Verdict(True))
    pm.register(Wrapper())
    assert DirectHook(pm, "bastion_has_permission")(session=None, service="add", request=None) == [True, "wrapped"]
    assert seen == ["add"]

    traced = get_plugin_manager(only=[], trace=True)
    traced.register(Verdict(True))
    with caplog.at_level(logging.DEBUG, logger="bastion.plugins"):
        assert DirectHook(traced, "bastion_has_permission")(session=None, service="add", request=None) == [True]
    assert "call bastion_has_permission" in caplog.text and "done bastion_has_permission" in caplog.text


def test_direct_hook_refuses_a_call_without_an_argument_as_pluggy_does():
    pm = get_plugin_manager(only=[])
    pm.register(Verdict(True))
    with pytest.raises(pluggy.HookCallError, match="'request'"):
        DirectHook(pm, "bastion_has_permission")(session=None, service="add")


def test_describe_lists_distribution_version_and_hooks():
    rows = {row["name"]: row for row in describe(get_plugin_manager(only=["storage_mem"]))}
    mem = rows["storage_mem"]
    assert mem["distribution"] == "bastion (built in)"
    assert mem["version"] == kernel.__version__
    assert "bastion_storage_driver" in mem["hooks"]


def test_kernel_imports_no_plugin():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "kernel"
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            modules = []
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            for module in modules:
                assert not module.startswith("bastion_"), f"{path} imports plugin {module}"


def test_describe_counts_the_hooks_of_the_classes_a_plugin_registers_when_a_runtime_opens(monkeypatch):
    """A plugin module whose ``bastion_configure`` registers an object: the object's hooks are the plugin's too,
    with its class named; an object registered as a plugin has only its own."""
    package, core = types.ModuleType("someplugin"), types.ModuleType("someplugin.core")

    class Engine:
        @hookimpl
        def bastion_services(self):
            return []

    Engine.__module__, Engine.__qualname__ = core.__name__, "Engine"
    core.Engine = Engine

    @hookimpl
    def bastion_configure(config, runtime):
        runtime.register(Engine(), name="someplugin.engine")

    package.bastion_configure = bastion_configure
    monkeypatch.setitem(sys.modules, package.__name__, package)
    monkeypatch.setitem(sys.modules, core.__name__, core)
    pm = get_plugin_manager(only=["storage_mem"], trace=False)
    pm.register(package, name="someplugin")
    pm.register(Engine(), name="an-object")
    rows = {row["name"]: row for row in describe(pm)}
    assert rows["someplugin"]["hooks"] == ["bastion_configure", "bastion_services"]
    assert rows["someplugin"]["registered"] == {"bastion_services": "someplugin.core.Engine"}
    assert (rows["an-object"]["hooks"], rows["an-object"]["registered"]) == (["bastion_services"], {})
