"""gunicorn's logger class for Bastion: gunicorn's own messages through the INI file's logging.

The packaged settings select it (``logger_class = "kernel.server.worker.BastionLogger"``, the name gunicorn
configurations know; it lives here). gunicorn makes it in its master, before any worker, and again on a
reload (``setup``): logging is configured there, and the workers inherit what the master set up.
"""

from __future__ import annotations

import logging
import sys

from gunicorn import glogging, util

from kernel.core.config import load_config
from kernel.core.errors import ConfigError
from kernel.ops.logs import configure_logging
from kernel.server.settings import published


class BastionLogger(glogging.Logger):
    """gunicorn's logger, sending its messages through Bastion's logging (``kernel.ops.logs``): the INI file's
    ``[loggers]``/``[handlers]``/``[formatters]``, else the default line on standard error.

    ``gunicorn.error`` keeps gunicorn's ``--log-level`` (info) and propagates to the root logger's handlers
    instead of having its own; gunicorn's access log is off, since ``bastion.call`` has one line per request
    (``--access-logfile`` and ``--error-logfile`` are not used). ``kill -USR1`` reopens every file handler.

    The configuration is the one the master read with the server's settings (:mod:`kernel.server.settings`),
    not read again; the INI file is read here only when gunicorn runs without Bastion's settings, or reloads
    without reading them again.
    """

    def setup(self, cfg):
        self.cfg = cfg
        self._access_log_enabled = False
        self.loglevel = self.LOG_LEVELS.get(cfg.loglevel.lower(), logging.INFO)
        for log in (self.error_log, self.access_log):
            for handler in list(log.handlers):
                if getattr(handler, "_gunicorn", False):
                    log.removeHandler(handler)
            log.propagate = True
        self.error_log.setLevel(self.loglevel)
        self.access_log.setLevel(logging.WARNING)
        # In the master, when gunicorn starts (and again on a reload): workers inherit what it set up. From the
        # file the server's settings were just read from; a reload that read no settings (gunicorn keeps a
        # ``python:`` settings module imported) reads the file for its logging, as a reload always did.
        settings = published()
        fresh = settings if settings is not getattr(self, "_settings", None) else None
        self._settings = settings
        try:
            configure_logging(fresh.config if fresh is not None else load_config())
        except ConfigError as exc:
            sys.exit(f"bastion: {exc}")

    #: What gunicorn's worker says when it starts with code reloading on (``gunicorn.workers.base``).
    RELOADER_ON = "Reloader is on. Use in development only!"

    def warning(self, msg, *args, **kwargs):
        """gunicorn's warnings, except its note on code reloading under ``[bastion] development``: reloading is then
        what development mode does (``[server] reload = auto``), as the master's start line says, so the note is an
        INFO line, not a WARNING on every ``make run``. In production (``reload = on``) it stays a warning."""
        if msg == self.RELOADER_ON and self._settings is not None and self._settings.config.bastion.development:
            self.error_log.info(msg, *args, **kwargs)
        else:
            self.error_log.warning(msg, *args, **kwargs)

    def access(self, resp, req, environ, request_time):
        """Nothing: ``bastion.call`` has the line of every request."""

    def _handlers(self):
        loggers = [logging.getLogger()] + [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
        for log in loggers:
            yield from getattr(log, "handlers", [])

    def reopen_files(self):
        """Reopen every file handler (``kill -USR1``, after logrotate moved the files)."""
        for handler in self._handlers():
            if isinstance(handler, logging.FileHandler):
                handler.acquire()
                try:
                    if handler.stream:
                        handler.stream.close()
                        handler.stream = handler._open()
                finally:
                    handler.release()

    def close_on_exec(self):
        for handler in self._handlers():
            if isinstance(handler, logging.FileHandler) and handler.stream:
                util.close_on_exec(handler.stream.fileno())


__all__ = ["BastionLogger"]
