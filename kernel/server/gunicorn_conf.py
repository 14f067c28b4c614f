"""gunicorn settings read from the ``[server]`` section of the configured INI file.

``bastion serve`` runs gunicorn with them (:mod:`kernel.server.serve`); they are also
``gunicorn -c python:kernel.server.gunicorn_conf kernel.wsgi:app`` from any directory
(the INI file is ``$BASTION_CONFIG``, else ``./bastion.ini``), and a
checkout's ``gunicorn.conf.py`` imports them, so that plain ``gunicorn
kernel.wsgi:app`` there binds 127.0.0.1:9000. gunicorn's command-line flags
(``--bind``, ``--workers``) still override them. gunicorn, and ``bastion
serve``, take every name of this module that is one of gunicorn's settings.

**Importing this module has no side effect**: no file read, no process, no folder, no logging set up. The
settings that depend on no file are plain attributes. Those of ``[server]`` are read by
:func:`gunicorn_settings`, which the module calls itself only while gunicorn loads it as its configuration.
gunicorn loads a ``-c python:NAME`` configuration by importing the module
(``Application.get_config_from_module_name``), and a file one (``-c FILE``, or a checkout's
``gunicorn.conf.py``, which imports this module) by executing it (``get_config_from_filename``); either way
it then takes the module's attributes that are gunicorn settings, so the module looks for those two loaders
in the stack of its own import (tests/test_gunicorn_internals.py checks that gunicorn still loads so).
``bastion serve`` calls :func:`gunicorn_settings` itself, and again on a SIGHUP. A ``python:`` module stays
imported, as gunicorn keeps it: under plain gunicorn a SIGHUP does not read ``[server]`` again.

Reading them (:func:`kernel.server.settings.read`) happens once per load, in gunicorn's master: the file is
read and checked, the configured runtime is opened once and closed again in a short-lived child of the
master (so that the master imports no plugin, and development reloads see new plugin code), a bad
configuration or an unreachable storage stops the start with one line, and a driver whose data lives in
one process (``mem://``) makes gunicorn run one worker process. The result is published for the workers,
which gunicorn forks from the master: they take their deadlines and ``max_body`` from it instead of reading
the file again (docs/architecture.md, "What is read where").

Logging is configured in the master from the same reading (the logger class, ``kernel.server.logger``), and
gunicorn's own messages go through it. When gunicorn starts (:func:`on_starting`) the master also makes the
folder where the workers keep their metrics (``$PROMETHEUS_MULTIPROC_DIR``, see ``kernel.ops.metrics``),
emptied at each start and removed at exit (:func:`on_exit`) when it made it.
"""

import sys
from typing import TYPE_CHECKING

from kernel.core.errors import ConfigError
from kernel.ops.metrics import prepare_multiprocess_dir, remove_multiprocess_dir
from kernel.server.settings import CannotStart, published, read

if TYPE_CHECKING:
    from types import FrameType

# Bastion's threaded worker (kernel/server/worker.py), with one thread too: it gathers requests, head and body, without a
# thread, bounds them by [server] header_timeout and body_timeout, and answers its refusals in JSON.
worker_class = "kernel.server.worker.BastionWorker"
# gunicorn's messages through the INI file's logging (kernel.ops.logs); bastion.call replaces gunicorn's access log.
logger_class = "kernel.server.worker.BastionLogger"
# The admin control socket (gunicorn 24+) lives at one fixed path per user; test servers would collide there.
control_socket_disable = True
forwarded_allow_ips = ""  # Bastion reads X-Forwarded-* itself, only from [bastion] trusted_proxies


def on_starting(server):
    """Make the workers' metrics folder, and say where the server listens and in which mode."""
    settings = published()
    if settings is None:  # this module's hooks without its settings: gunicorn loaded it in a way it does not know
        sys.exit("bastion: the [server] settings were not read: run `bastion serve`, or gunicorn with "
                 "`-c python:kernel.server.gunicorn_conf`")
    prepare_multiprocess_dir()
    from kernel.core.urls import StorageURL
    from kernel.version import __version__

    bastion = settings.config.bastion
    state = StorageURL(bastion.state or bastion.storage).redacted
    server.log.info("Bastion %s, %s mode, storage %s, state %s%s", __version__,
                    "development" if bastion.development else "production", StorageURL(bastion.storage).redacted,
                    state, "; the workers reload on code changes" if server.cfg.reload else "")


def on_exit(server):
    """Remove the metrics folder the master made."""
    remove_multiprocess_dir()


#: The settings that depend on no file: the attributes above.
FIXED = ("worker_class", "logger_class", "control_socket_disable", "forwarded_allow_ips", "on_starting", "on_exit")


def gunicorn_settings() -> dict[str, object]:
    """Every gunicorn setting of Bastion's: read the configuration (in gunicorn's master), publish it for the
    workers, and return the settings by gunicorn's names. A bad configuration exits with one line."""
    try:
        settings = read()
    except (ConfigError, CannotStart) as exc:
        sys.exit(f"bastion: {exc}")
    return {**{name: globals()[name] for name in FIXED}, **settings.gunicorn()}


def _loaded_by_gunicorn() -> bool:
    """Whether gunicorn's configuration loader is importing this module (``-c python:...``, or a ``-c FILE`` that
    imports it), rather than anything else that imports it."""
    base = sys.modules.get("gunicorn.app.base")
    if base is None:  # gunicorn's loader is not even imported
        return False
    loaders = {getattr(getattr(base.Application, name, None), "__code__", None)
               for name in ("get_config_from_module_name", "get_config_from_filename")}
    frame: FrameType | None = sys._getframe()
    while frame is not None:
        if frame.f_code in loaders:
            return True
        frame = frame.f_back
    return False


__all__ = list(FIXED)
if _loaded_by_gunicorn():
    _loaded = gunicorn_settings()
    globals().update(_loaded)
    __all__ = list(_loaded)
