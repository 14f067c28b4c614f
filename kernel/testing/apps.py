"""In-process apps for tests: :func:`open_app` (the ``make_app`` fixture builds on it)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

#: The configuration every test app starts from: development mode, ``mem://``.
DEFAULT_SECTIONS = {"bastion": {"development": True, "storage": "mem://"}}


def open_app(sections: Mapping[str, Mapping] | None = None, plugins: Iterable[object] = (),
             only: Iterable[str] | None = None, clock=None):
    """Build, start and return an in-process app; close it with ``app.runtime.close()``.

    ``sections`` are merged over :data:`DEFAULT_SECTIONS`; ``plugins`` are
    extra plugin objects registered before the runtime is built; ``only``
    restricts the installed plugins loaded, as ``BASTION_LOAD_PLUGINS`` does;
    ``clock`` (a callable returning Unix seconds, default ``time.time``) is
    the runtime's.
    """
    from kernel.core.config import Config
    from kernel.core.plugins import get_plugin_manager
    from kernel.core.runtime import Runtime
    from kernel.http.app import create_app
    from kernel.ops.metrics import Metrics

    merged = {name: dict(values) for name, values in DEFAULT_SECTIONS.items()}
    for name, values in (sections or {}).items():
        merged.setdefault(name, {}).update(values)
    pm = get_plugin_manager(only=only, trace=False)
    for plugin in plugins:
        pm.register(plugin)
    config = Config.from_dict(merged)
    runtime = Runtime(config, pm, clock=clock, metrics=Metrics.from_config(config)).start()
    try:
        return create_app(runtime)
    except BaseException:
        runtime.close()
        raise
