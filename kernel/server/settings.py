"""The server's settings: read once in gunicorn's master, handed to the workers it forks.

What is read where, in the processes of one server (``bastion serve``, or gunicorn with the packaged settings):

* **gunicorn's master** reads the INI file once, when gunicorn loads its settings
  (:mod:`kernel.server.gunicorn_conf`; ``bastion serve`` again on a SIGHUP): ``[server]``, what the worker needs
  of ``[bastion]`` (``max_body``), ``[metrics]`` and the logging sections checked, and the configured runtime
  opened once in a short-lived child (:func:`read`). The result, a :class:`ServerSettings`, is
  :func:`published` in this module: gunicorn's settings come from it, and the master's logger configures
  logging from its configuration (:mod:`kernel.server.logger`).
* **each worker** is forked from the master after that, so it finds the master's :class:`ServerSettings` here
  and takes its deadlines and ``max_body`` from it (:class:`kernel.server.worker.BastionWorker`), without
  reading the file: a worker started later (after ``max_requests``, a crash, a code reload) serves with the
  values its siblings and the master have, even if the file changed since.
* **the application** is built in each worker by :mod:`kernel.wsgi`, which reads the file itself: the
  runtime (plugins, drivers, every plugin's sections) is built in the worker, never in the master (which
  imports no plugin, so that a development reload sees new plugin code), by the same loader the commands
  use. ``$BASTION_CONFIG`` names the file (``bastion serve`` makes it absolute before anything reads it).

A worker class used without Bastion's settings (``gunicorn -k kernel.server.worker.BastionWorker``) finds
nothing published, and reads the file itself (:func:`for_worker`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace

from kernel.core.config import Config, load_config
from kernel.core.errors import BastionError, ConfigError
from kernel.ops.logs import claim_logging_sections

_log = logging.getLogger("gunicorn.error")


class CannotStart(Exception):
    """The configured runtime could not be opened: the server does not start (the message is one line)."""


@dataclass(frozen=True)
class ServerSettings:
    """What gunicorn's master read of the configuration for the server, and the workers take from it."""

    #: The file as the master read it: ``[server]``, ``[bastion]``, ``[metrics]`` and the logging sections checked.
    config: Config
    #: gunicorn's ``workers``: ``[server] workers``, or 1 when a driver keeps its data in one process.
    workers: int
    #: The worker's deadlines (``[server]``) and its body limit (``[bastion] max_body``).
    header_timeout: float
    body_timeout: float
    max_body: int

    @classmethod
    def from_config(cls, config: Config) -> ServerSettings:
        """The settings of ``config`` (ConfigError for a bad ``[server]``, ``[bastion]``, ``[metrics]`` or logging)."""
        server, bastion = config.server, config.bastion
        config.metrics  # noqa: B018 - checked before any worker starts
        claim_logging_sections(config)  # applied by the logger class, when gunicorn's master starts
        return cls(config=config, workers=server.workers,
                   header_timeout=server.header_timeout, body_timeout=server.body_timeout, max_body=bastion.max_body)

    def gunicorn(self) -> dict[str, object]:
        """The gunicorn settings ``[server]`` gives, by gunicorn's names (its command-line flags still override them)."""
        server, bastion = self.config.server, self.config.bastion
        return {
            "bind": [server.bind],
            "workers": self.workers,
            "threads": server.threads,
            "timeout": server.timeout,
            "graceful_timeout": server.graceful_timeout,
            "keepalive": server.keepalive,
            "max_requests": server.max_requests,
            "max_requests_jitter": server.max_requests_jitter,
            # Per worker; at the limit Bastion's worker closes an idle or still-arriving connection for a new one.
            "worker_connections": server.worker_connections,
            "reload": bastion.development if server.reload == "auto" else server.reload == "on",
        }


_published: ServerSettings | None = None


def read(path: str | os.PathLike | None = None) -> ServerSettings:
    """Read the configuration in gunicorn's master, check it, open its runtime once, and publish the settings.

    ``path``, else ``$BASTION_CONFIG``, else ``./bastion.ini``. Raises ConfigError, or CannotStart when the
    runtime cannot be opened (a bad plugin section, an unreachable storage).
    """
    config = load_config(path)
    settings = ServerSettings.from_config(config)  # checked before the runtime is opened
    if _process_local(config):
        settings = replace(settings, workers=1)
    if settings.workers != config.server.workers:
        _log.warning("the storage keeps its data in one process: each worker would have its own, so running "
                     "1 worker (with %d threads) instead of %d", config.server.threads, config.server.workers)
    publish(settings)
    return settings


def publish(settings: ServerSettings) -> None:
    """Make ``settings`` the ones the workers forked from now on take."""
    global _published
    _published = settings


def published() -> ServerSettings | None:
    """The settings the master read last (in a worker, the master's before it forked), or None."""
    return _published


def for_worker() -> ServerSettings:
    """A worker's settings: the master's, else (gunicorn runs without Bastion's settings) read from the file here."""
    return _published if _published is not None else ServerSettings.from_config(load_config())


def _process_local(config: Config) -> bool:
    """Whether a configured driver keeps its data in one process: the runtime is opened in a child process.

    In a child, so that gunicorn's master imports no plugin (workers import them, and a development reload
    sees new plugin code), and so that nothing the runtime opens is inherited by the workers.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: open the runtime, say what it found, leave at once
        os.close(read_end)
        try:
            from kernel.core.runtime import Runtime

            with Runtime(config) as runtime:
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
        raise CannotStart(answer[1:].decode("utf-8", "replace") or "the configuration could not be opened")
    return answer == b"1"


__all__ = ["ServerSettings", "CannotStart", "read", "publish", "published", "for_worker"]
