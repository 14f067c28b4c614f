"""Builds the plugin manager: built-in defaults, then installed plugins."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys
import types
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import pluggy
from pluggy import HookImpl

from kernel.core import hookspecs
from kernel.core.urls import scrub

log = logging.getLogger("bastion.plugins")

#: The entry-point group under which plugins register.
ENTRY_POINT_GROUP = "bastion"

#: The kernel's own plugins, ``(name, module)``: registered first, each under its name, like third-party ones.
#: ``storage_mem`` is the ``mem://`` driver, the default storage, so that the kernel's distribution alone serves;
#: an entry point of that name (an older ``bastion-storage-mem``) is then not loaded: one plugin answers ``mem://``.
DEFAULT_PLUGINS = (("kernel.defaults", "kernel.defaults"), ("storage_mem", "kernel.storage_mem"))

#: The name under which a runtime takes its seat on its plugin manager (an object without hooks): one runtime per
#: manager, seen by pluggy's own ``get_plugin``; not a plugin, so :func:`describe` leaves it out.
SEAT = "bastion.runtime"

#: The plugin managers whose hook calls are traced (``trace``): a :class:`DirectHook` of theirs leaves every call
#: to pluggy, whose monitoring writes the trace.
_TRACED: weakref.WeakSet[pluggy.PluginManager] = weakref.WeakSet()


def get_plugin_manager(
    load_entry_points: bool = True,
    only: Iterable[str] | None = None,
    trace: bool | None = None,
) -> pluggy.PluginManager:
    """Build a plugin manager with the kernel's hooks and every installed plugin.

    ``only`` restricts the entry points loaded to those names; by default it is
    read from ``BASTION_LOAD_PLUGINS`` (comma-separated; empty loads none). The
    built-in plugins are always there, and naming one is allowed (it loads
    nothing more): ``only=["storage_mem"]`` is the kernel alone, on ``mem://``.
    ``trace`` logs every hook call at DEBUG on ``bastion.plugins`` (and sets
    that logger to DEBUG, so that the lines come out under any ``log_level``);
    by default it follows ``BASTION_TRACE_PLUGINS``.
    """
    pm = pluggy.PluginManager("bastion")
    pm.add_hookspecs(hookspecs)
    for name, module in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module), name=name)
    if load_entry_points:
        if only is None and "BASTION_LOAD_PLUGINS" in os.environ:
            only = [n.strip() for n in os.environ["BASTION_LOAD_PLUGINS"].split(",") if n.strip()]
        load_entry_point_plugins(pm, only)
    pm.check_pending()
    if trace is None:
        trace = os.environ.get("BASTION_TRACE_PLUGINS", "") not in ("", "0", "false", "no")
    if trace:
        log.setLevel(logging.DEBUG)
        pm.add_hookcall_monitoring(_trace_before, _trace_after)
        _TRACED.add(pm)
    return pm


def _trace_before(hook_name: str, hook_impls, kwargs) -> None:
    """Log a hook call on one line: every argument as its ``repr``.

    pluggy's own tracer writes ``str()`` of each argument on a line of its own, so client text (a login body's key,
    a path with U+2028) would split the trace into lines that look like the log's own. A ``repr`` escapes every
    line break; a storage URL's password is scrubbed from the line.
    """
    args = ", ".join(f"{name}={value!r}" for name, value in kwargs.items())
    log.debug("%s", scrub(f"call {hook_name}({args}) [{len(hook_impls)} implementations]"))


def _trace_after(outcome, hook_name: str, hook_impls, kwargs) -> None:
    """Log what a traced hook call returned (or raised), on one line."""
    exception = outcome.exception
    result = f"raised {exception!r}" if exception is not None else f"returned {outcome.get_result()!r}"
    log.debug("%s", scrub(f"done {hook_name}: {result}"))


def load_entry_point_plugins(pm: pluggy.PluginManager, only: Iterable[str] | None = None) -> list[str]:
    """Register every plugin of the ``bastion`` entry-point group; return their names."""
    wanted = None if only is None else set(only)
    loaded = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if wanted is not None and ep.name not in wanted:
            continue
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        pm.register(ep.load(), name=ep.name)
        loaded.append(ep.name)
    if wanted is not None:
        missing = wanted - set(loaded) - {n for n, _ in pm.list_name_plugin()}
        if missing:
            raise RuntimeError(f"BASTION_LOAD_PLUGINS names plugins that are not installed: {', '.join(sorted(missing))}")
    return loaded


def describe(pm: pluggy.PluginManager) -> list[dict]:
    """List each registered plugin: name, distribution, version and every hook it implements.

    ``hooks`` holds the hooks of the plugin's own object (its module) and those of the classes of its package
    whose instances it registers when a runtime opens (``runtime.register(Auth(...))`` in ``bastion_configure``:
    a plugin's authentication, services or permission checks usually live there, and no runtime is open here);
    ``registered`` names the class of each hook found only on such a class.
    """
    dists = {ep.name: ep.dist for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    built_in = {name for name, _ in DEFAULT_PLUGINS}
    rows = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None or name == SEAT:
            continue
        dist = None if name in built_in else dists.get(name)
        own = {h.name for h in pm.get_hookcallers(plugin) or []}
        registered = {hook: cls for hook, cls in _class_hooks(pm, plugin, name in built_in).items() if hook not in own}
        rows.append({
            "name": name,
            "distribution": dist.metadata["Name"] if dist else "bastion (built in)",
            "version": dist.version if dist else _kernel_version(),
            "hooks": sorted(own | set(registered)),
            "registered": registered,
        })
    return rows


def _class_hooks(pm: pluggy.PluginManager, plugin: object, module_only: bool) -> dict[str, str]:
    """The hooks that classes of a plugin module's package implement (of the module alone when ``module_only``: the
    kernel's built-in plugins), each with the first class found (``module.Class``); none for a plugin that is an
    object (its hooks are its own). Only modules already imported are looked at: those a plugin registers objects
    from are imported with it."""
    if not isinstance(plugin, types.ModuleType):
        return {}
    package = plugin.__name__ if module_only else plugin.__name__.partition(".")[0]
    found: dict[str, str] = {}
    for name, loaded in sorted(sys.modules.copy().items()):
        if loaded is None or not (name == package or name.startswith(package + ".")):
            continue
        for cls in vars(loaded).copy().values():
            if not isinstance(cls, type) or cls.__module__ != name:
                continue
            for attribute in dir(cls):
                if hasattr(pm.hook, attribute) and pm.parse_hookimpl_opts(cls, attribute) is not None:
                    found.setdefault(attribute, f"{name}.{cls.__qualname__}")
    return found


def _kernel_version() -> str:
    from kernel.version import __version__

    return __version__


def owner_of(impl: HookImpl) -> str:
    """The plugin a hook implementation belongs to: the top-level package of its code (``bastion_auth``, ``kernel``)."""
    return (getattr(impl.function, "__module__", None) or impl.plugin_name).split(".")[0]


def call_per_plugin(pm: pluggy.PluginManager, name: str, settings_of: Callable[[str], Any], **kwargs: Any) -> list:
    """Call the hook ``name`` once per implementation, each given ``settings=settings_of(its owner)`` besides ``kwargs``.

    pluggy gives every implementation of a call the same arguments; a
    plugin's settings differ from plugin to plugin. So each implementation
    is called through pluggy on its own (a subset caller holding only its
    plugin: tracing, ``tryfirst``/``trylast`` order and argument checks are
    pluggy's), in the order pluggy would call them. Returns the non-None
    results in that order; for a ``firstresult`` hook, stops at the first.
    """
    hook = getattr(pm.hook, name)
    first = bool(hook.spec and hook.spec.opts.get("firstresult"))
    results: list[Any] = []
    for impl in reversed(hook.get_hookimpls()):
        others = [plugin for plugin in pm.get_plugins() if plugin is not impl.plugin]
        result = pm.subset_hook_caller(name, others)(**kwargs, settings=settings_of(owner_of(impl)))
        if first:
            if result is not None:
                return [result]
            continue
        results.extend(r for r in result if r is not None)
    return results


class DirectHook:
    """Calls one hook's implementations as pluggy's own call does, without its general machinery, for the hooks
    every signed call makes (the pipeline's steps ``ban``, ``authenticate`` and ``authorize``).

    pluggy's call checks its arguments against the spec, copies the list of implementations and runs each through
    a loop that also serves wrappers; for a hook whose implementations are plain functions that is most of what a
    call costs. This caller asks pluggy for the hook's implementations at every call (so a plugin registered or
    unregistered later counts at once) and, while they are the ones it last saw, calls each in pluggy's order
    (last registered first, ``tryfirst``/``trylast`` as pluggy sorted them) with its arguments taken from the
    call's keywords by name, collecting the results that are not None (the first for a ``firstresult`` hook).
    Anything else goes through pluggy itself: an implementation that is a wrapper or has an argument with a
    default (pluggy passes those by keyword), and every call while hook calls are traced
    (``BASTION_TRACE_PLUGINS``), so that the trace misses none.
    """

    __slots__ = ("name", "_caller", "_first", "_traced", "_known")

    def __init__(self, pm: pluggy.PluginManager, name: str):
        self.name = name
        self._caller = getattr(pm.hook, name)
        spec = self._caller.spec
        self._first = bool(spec is not None and spec.opts.get("firstresult"))
        self._traced = pm in _TRACED
        #: The implementations last seen, and the plan made of them: ``(function, argnames)`` per implementation,
        #: in calling order, or None when pluggy calls them. One attribute, replaced whole: a thread never reads
        #: the plan of other implementations than those it compared.
        self._known: tuple[list[HookImpl] | None, tuple[tuple[Callable[..., Any], tuple[str, ...]], ...] | None] = (
            None, None)

    def __call__(self, **kwargs: Any) -> Any:
        impls = self._caller.get_hookimpls()
        seen, plan = self._known
        if impls != seen:
            plan = self._planned(impls)
            self._known = (impls, plan)
        if plan is None:
            return self._caller(**kwargs)
        results = []
        for function, argnames in plan:
            try:
                args = [kwargs[name] for name in argnames]
            except KeyError as missing:  # as pluggy says it
                raise pluggy.HookCallError(f"hook call must provide argument {missing.args[0]!r}") from missing
            result = function(*args)
            if result is not None:
                if self._first:
                    return result
                results.append(result)
        return None if self._first else results

    def _planned(self, impls: list[HookImpl]) -> tuple[tuple[Callable[..., Any], tuple[str, ...]], ...] | None:
        if self._traced or any(impl.hookwrapper or impl.wrapper or impl.kwargnames for impl in impls):
            return None
        return tuple((impl.function, tuple(impl.argnames)) for impl in reversed(impls))


class DirectHooks:
    """:class:`DirectHook` callers of the hooks named, as attributes of their names: held as ``self.hooks``, they are
    called as pluggy's relay is (``self.hooks.bastion_admit(request=..., ...)``), where tests/test_hookspecs.py
    finds every call and checks its arguments against the hook's spec."""

    def __init__(self, pm: pluggy.PluginManager, *names: str):
        for name in names:
            setattr(self, name, DirectHook(pm, name))

    def __getattr__(self, name: str) -> DirectHook:  # pragma: no cover - for type checkers: every name was set
        raise AttributeError(f"no direct caller of {name}: name it when the DirectHooks are made")
