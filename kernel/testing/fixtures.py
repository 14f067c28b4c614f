"""pytest fixtures for Bastion and plugin authors (loaded through the ``pytest11`` entry point).

``make_app(sections=None, plugins=(), only=None)`` builds an in-process app
(development mode, ``mem://`` unless told otherwise) with extra plugin
objects registered, and closes it after the test; ``only`` restricts the
installed plugins loaded, as ``BASTION_LOAD_PLUGINS`` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pytest

from kernel.testing.clock import FakeClock

DEFAULT_SECTIONS = {"bastion": {"development": True, "storage": "mem://"}}


@pytest.fixture
def fake_clock() -> FakeClock:
    """A clock that moves only when told."""
    return FakeClock()


def open_app(sections: Mapping[str, Mapping] | None = None, plugins: Iterable[object] = (),
             only: Iterable[str] | None = None, clock=None):
    """Build, start and return an in-process app; close it with ``app.runtime.close()``.

    ``sections`` are merged over :data:`DEFAULT_SECTIONS`; ``plugins`` are
    extra plugin objects registered before the runtime is built; ``only``
    restricts the installed plugins loaded, as ``BASTION_LOAD_PLUGINS`` does.
    """
    from kernel.app import create_app
    from kernel.config import Config
    from kernel.plugins import get_plugin_manager
    from kernel.runtime import Runtime

    merged = {name: dict(values) for name, values in DEFAULT_SECTIONS.items()}
    for name, values in (sections or {}).items():
        merged.setdefault(name, {}).update(values)
    pm = get_plugin_manager(only=only, trace=False)
    for plugin in plugins:
        pm.register(plugin)
    runtime = Runtime(Config.from_dict(merged), pm, clock=clock).start()
    try:
        return create_app(runtime)
    except BaseException:
        runtime.close()
        raise


@pytest.fixture
def make_app(fake_clock):
    """Factory of in-process Bastion apps on the ``fake_clock``, closed after the test: see :func:`open_app`."""
    apps = []

    def make(sections: Mapping[str, Mapping] | None = None, plugins: Iterable[object] = (),
             only: Iterable[str] | None = None, clock=None):
        app = open_app(sections, plugins, only, clock or fake_clock)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.runtime.close()
