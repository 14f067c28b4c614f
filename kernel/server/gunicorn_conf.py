"""gunicorn settings read from the ``[server]`` section of the configured INI file.

``bastion serve`` runs gunicorn with them (:mod:`kernel.server.serve`); they are also
``gunicorn -c python:kernel.server.gunicorn_conf kernel.wsgi:app`` from any directory
(the INI file is ``$BASTION_CONFIG``, else ``./bastion.ini``), and a
checkout's ``gunicorn.conf.py`` imports them, so that plain ``gunicorn
kernel.wsgi:app`` there binds 127.0.0.1:9000. gunicorn's command-line flags
(``--bind``, ``--workers``) still override them. gunicorn, and ``bastion
serve``, take every name of this module that is one of gunicorn's settings.

Before any worker starts, the configured runtime is opened once and closed
again, in a short-lived child of the master (so that the master imports no
plugin, and development reloads see new plugin code): a bad configuration or
an unreachable storage stops the start with one line, and a driver whose data
lives in one process (``mem://``) makes gunicorn run one worker process.

Logging is configured here, in the master, from the INI file (``kernel.ops.logs``),
and gunicorn's own messages go through it (``logger_class``). The master also
makes the folder where the workers keep their metrics
(``$PROMETHEUS_MULTIPROC_DIR``, see ``kernel.ops.metrics``), emptied at each start
and removed at exit when it made it.
"""

import logging
import os
import sys

from kernel.core.config import load_config
from kernel.core.errors import BastionError, ConfigError
from kernel.ops.logs import claim_logging_sections
from kernel.ops.metrics import prepare_multiprocess_dir, remove_multiprocess_dir

_log = logging.getLogger("gunicorn.error")

try:
    _config = load_config()
    _server = _config.server
    _bastion = _config.bastion
    _config.metrics  # noqa: B018 - checked before any worker starts
    claim_logging_sections(_config)  # applied by the logger class, when gunicorn's master starts
except ConfigError as exc:
    sys.exit(f"bastion: {exc}")


def _process_local() -> bool:
    """Whether a configured driver keeps its data in one process: the runtime is opened in a child process."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: open the runtime, say what it found, leave at once
        os.close(read_end)
        try:
            from kernel.core.runtime import Runtime

            with Runtime(_config) as runtime:
                answer = b"1" if runtime.process_local else b"0"
        except (ConfigError, BastionError) as exc:
            answer = b"!" + str(exc).encode("utf-8", "replace")
        except BaseException as exc:  # noqa: BLE001 - reported to the master, which stops
            answer = b"!" + f"{type(exc).__name__}: {exc}".encode("utf-8", "replace")
        os.write(write_end, answer)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    if not answer or answer.startswith(b"!"):
        sys.exit(f"bastion: {answer[1:].decode('utf-8', 'replace') or 'the configuration could not be opened'}")
    return answer == b"1"


bind = [_server.bind]
workers = _server.workers
threads = _server.threads
timeout = _server.timeout
graceful_timeout = _server.graceful_timeout
keepalive = _server.keepalive
max_requests = _server.max_requests
max_requests_jitter = _server.max_requests_jitter
# Per worker; at the limit Bastion's worker closes an idle or still-arriving connection for a new one.
worker_connections = _server.worker_connections
# Bastion's threaded worker (kernel/server/worker.py), with one thread too: it gathers requests, head and body, without a
# thread, bounds them by [server] header_timeout and body_timeout, and answers its refusals in JSON.
worker_class = "kernel.server.worker.BastionWorker"
# gunicorn's messages through the INI file's logging (kernel.ops.logs); bastion.call replaces gunicorn's access log.
logger_class = "kernel.server.worker.BastionLogger"
reload = _bastion.development if _server.reload == "auto" else _server.reload == "on"
# The admin control socket (gunicorn 24+) lives at one fixed path per user; test servers would collide there.
control_socket_disable = True
forwarded_allow_ips = ""  # Bastion reads X-Forwarded-* itself, only from [bastion] trusted_proxies

if _process_local():
    if workers != 1:
        _log.warning("the storage keeps its data in one process: each worker would have its own, so running "
                     "1 worker (with %d threads) instead of %d", threads, workers)
    workers = 1


__all__ = ["bind", "workers", "threads", "timeout", "graceful_timeout", "keepalive", "max_requests",
           "max_requests_jitter", "worker_connections", "worker_class", "logger_class", "reload",
           "control_socket_disable", "forwarded_allow_ips", "on_starting", "on_exit"]


def on_starting(server):
    """Make the workers' metrics folder, and say where the server listens and in which mode."""
    prepare_multiprocess_dir()
    from kernel.core.urls import StorageURL
    from kernel.version import __version__

    state = StorageURL(_bastion.state or _bastion.storage).redacted
    server.log.info("Bastion %s, %s mode, storage %s, state %s", __version__,
                    "development" if _bastion.development else "production", StorageURL(_bastion.storage).redacted,
                    state)


def on_exit(server):
    """Remove the metrics folder the master made."""
    remove_multiprocess_dir()
