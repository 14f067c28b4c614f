"""Logging: configured from the INI file, one line per event, and the request id in every line.

**Configuration.** When the INI file has ``[loggers]``, ``[handlers]`` and
``[formatters]`` (and their ``[logger_*]``, ``[handler_*]``,
``[formatter_*]`` sections), they are given to :func:`logging.config.fileConfig`,
as Pyramid does: ``%(here)s`` is the file's folder, ``${NAME}`` an environment
variable, and loggers the file does not name keep working. Otherwise
:func:`configure_logging` installs the default: one handler on the root logger
writing to standard error, one line per record with its time (UTC, ISO 8601)
and level, as text or as one JSON object (``[bastion] log_format``); the
``bastion`` loggers at ``[bastion] log_level``, other libraries at WARNING.
gunicorn's own messages go through the same handlers (``kernel.server.worker.BastionLogger``).

**Events.** Two loggers carry structured lines: ``bastion.call`` (one line per
request, written by :mod:`kernel.http.app` and by the worker for what it refuses)
and ``bastion.security`` (one line per security event, written through
:meth:`kernel.Runtime.security_event`). Their message is an :class:`Event`, a
name and fields, which :class:`TextFormatter` writes as ``event key=value ...``
and :class:`JsonFormatter` as top-level keys. A formatter of the INI file's
own that prints ``%(message)s`` gets the ``key=value`` text.

**Request ids.** :func:`bind_request_id` makes an id current for the request
being served (a context variable); both formatters of this module print it.
With the INI file's logging sections, every record made meanwhile carries it
as ``record.request_id`` (``-`` outside a request), so their format strings
may print ``%(request_id)s``.

Nothing here is on a signed call's path unless a line is written: a logger
below its level costs one cached comparison.
"""

from __future__ import annotations

import configparser
import json
import logging
import logging.config
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

from kernel.core.context import bind_request_id, current_request_id, unbind_request_id
from kernel.core.errors import ConfigError
from kernel.core.events import CALL, MAX_FIELD, SECURITY, Event, clip, json_string, text_value

#: The sections :func:`logging.config.fileConfig` reads, and the prefixes of the ones they name.
LOGGING_SECTIONS = ("loggers", "handlers", "formatters")
LOGGING_PREFIXES = ("logger_", "handler_", "formatter_")

#: What a request id received from a trusted proxy may look like (else a new one is made).
REQUEST_ID = re.compile(r"[A-Za-z0-9._:@+=/-]{1,128}")


def new_request_id() -> str:
    """A fresh request id: 16 random hexadecimal digits."""
    return os.urandom(8).hex()


def log_event(logger: logging.Logger, level: int, name: str, fields: Mapping[str, Any],
              request_id: str | None = None) -> None:
    """Write one structured line (``request_id`` defaults to the current request's)."""
    if logger.isEnabledFor(level):
        emit(logger, level, Event(name, fields, request_id or current_request_id()))


def emit(logger: logging.Logger, level: int, event: Event) -> None:
    """Hand an event to the logger's handlers (the caller has checked ``logger.isEnabledFor(level)``).

    On the default configuration, when the record would reach the default
    handler alone and unfiltered, the line is formatted by that handler's
    formatter and written under its lock directly: the same line, without the
    LogRecord and the dispatch (a good share of what a call line costs). Any
    other configuration (the INI file's sections, a handler or filter added
    since) goes through logging, without looking for the caller's file and
    line (a stack walk ``logger.log`` makes for every record, and that no event
    line prints).
    """
    handler = _direct
    if handler is not None and handler.level <= level and _only_to(handler, logger):
        handler.write_event(level, logger.name, event)
        return
    logger.handle(logger.makeRecord(logger.name, level, "(event)", 0, event, (), None))


def _only_to(handler: logging.Handler, logger: logging.Logger) -> bool:
    """Whether a record of ``logger`` reaches ``handler`` alone, and nothing filters it on the way."""
    log: logging.Logger | None = logger
    while log is not None:
        if log.filters or log.disabled:
            return False
        if log.parent is None:  # the root
            return len(log.handlers) == 1 and log.handlers[0] is handler and not handler.filters
        if log.handlers or not log.propagate:
            return False
        log = log.parent
    return False


#: The default handler, while it is the one :func:`configure_logging` installed (see :func:`emit`).
_direct: StderrHandler | None = None


# ---------------------------------------------------------------------------
# Formatters
# ---------------------------------------------------------------------------


class _Clock:
    """UTC ISO 8601 times with milliseconds; the part down to the second is computed once per second."""

    def __init__(self):
        self._second = -1
        self._prefix = ""

    def iso(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{int((created - second) * 1000):03d}Z"


#: Every character that some reader of a log takes for the end of a line (str.splitlines' set).
_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def one_line(text: str) -> str:
    """``text`` with every line break written as its escape (``\\n``, ``\\u2028``, ...): it cannot start a line."""
    if _LINE_BREAKS.search(text) is None:
        return text
    return _LINE_BREAKS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def _continuation(text: str) -> str:
    """A traceback or stack as the lines after a record's: each indented, none able to pass for a record's first."""
    return "\n".join("  " + one_line(line) for line in text.split("\n"))


class TextFormatter(logging.Formatter):
    """``2026-01-31T12:00:00.123Z INFO bastion.call call request_id=... domain=... status=200``.

    A record that is not an :class:`Event` gets ``request_id=...`` after its
    message when it was made during a request; a traceback follows on the
    next lines, each indented. Every record's first line starts at column 0
    and nothing in it can break it: a message's line breaks (whatever text it
    repeats, a client's included) are written as escapes, so no message can
    forge a line of its own.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._clock = _Clock()

    def format_event(self, created: float, levelname: str, name: str, event: Event) -> str:
        """The line of an event (:func:`emit` writes it without a record on the default configuration)."""
        return f"{self._clock.iso(created)} {levelname} {name} {event}"

    def format(self, record: logging.LogRecord) -> str:
        msg = record.msg
        if isinstance(msg, Event):
            line = self.format_event(record.created, record.levelname, record.name, msg)
        else:
            text = one_line(record.getMessage())
            request_id = getattr(record, "request_id", None) or current_request_id()
            if request_id and request_id != "-":
                text = f"{text} request_id={request_id}"
            line = f"{self._clock.iso(record.created)} {record.levelname} {record.name} {text}"
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{_continuation(record.exc_text)}"
        if record.stack_info:
            line = f"{line}\n{_continuation(self.formatStack(record.stack_info))}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, then an event's fields (``event``,
    ``request_id``, ...) or a record's ``message`` (with ``request_id`` during a request); ``exc_info``
    holds a traceback. ASCII only: no value can break the line.

    Usable from the INI file: ``[formatter_json]`` ``class = kernel.ops.logs.JsonFormatter``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._clock = _Clock()
        self._encoder = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), default=str)

    def format_event(self, created: float, levelname: str, name: str, event: Event) -> str:
        """The line of an event (:func:`emit` writes it without a record on the default configuration)."""
        return f'{{"time":"{self._clock.iso(created)}","level":"{levelname}","logger":{json_string(name)},' \
               f'{event.json_members()}}}'

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {"time": self._clock.iso(record.created), "level": record.levelname,
                                "logger": record.name}
        msg = record.msg
        if isinstance(msg, Event):
            msg.data(data)
        else:
            data["message"] = record.getMessage()
            request_id = getattr(record, "request_id", None) or current_request_id()
            if request_id and request_id != "-":
                data["request_id"] = request_id
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exc_info"] = record.exc_text
        if record.stack_info:
            data["stack_info"] = self.formatStack(record.stack_info)
        return self._encoder.encode(data)


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (as :data:`logging.lastResort` does)."""

    #: Set on the handler :func:`configure_logging` installs, so that it replaces its own and no other.
    _bastion: bool = False

    def __init__(self, level: int = logging.NOTSET):
        logging.Handler.__init__(self, level)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.setStream; the stream is always the current stderr
        pass

    def write_event(self, level: int, name: str, event: Event) -> None:
        """Format and write an event's line as :meth:`emit` would a record's (see :func:`kernel.ops.logs.emit`)."""
        formatter = self.formatter
        try:
            # Duck-typed: a formatter without format_event (or None) raises here and takes the ordinary way below.
            line = formatter.format_event(time.time(), logging.getLevelName(level), name, event)  # type: ignore[union-attr]
        except Exception:  # a formatter without format_event, or a value it cannot write: the ordinary way
            logging.getLogger(name).handle(logging.getLogger(name).makeRecord(name, level, "(event)", 0, event,
                                                                              (), None))
            return
        self.acquire()
        try:
            stream = sys.stderr
            stream.write(line + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - as Handler.handleError does when stderr fails: nothing more to do
            pass
        finally:
            self.release()


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


def logging_sections(config) -> list[str]:
    """The names of the INI file's logging sections (``[loggers]``, ``[handler_x]``, ...), in file order."""
    return [name for name in config.parser.sections() if name in LOGGING_SECTIONS or name.startswith(LOGGING_PREFIXES)]


def claim_logging_sections(config) -> list[str]:
    """Claim the logging sections (so that they are no unknown sections) and check that they hang together."""
    names = logging_sections(config)
    for name in names:
        config.raw_section(name)
    if names:
        missing = [name for name in LOGGING_SECTIONS if name not in names]
        if missing:
            raise ConfigError(f"{config.label}: [{missing[0]}]: missing; logging sections follow "
                              "logging.config.fileConfig, which needs [loggers], [handlers] and [formatters]")
        for key in ("log_level", "log_format"):
            if config.parser.has_option("bastion", key):
                raise ConfigError(f"{config.label}: [bastion] {key}: not used when the file has [loggers]; "
                                  "set levels and formats in the logging sections")
    return names


_configured = False
_factory_installed = False


def is_configured() -> bool:
    """Whether :func:`configure_logging` ran in this process (or in the process it was forked from)."""
    return _configured


def configure_logging(config) -> None:
    """Set up logging for a process (a server's master and workers, a command) from the configuration.

    Runs again safely: the default handler replaces the one installed before,
    and ``fileConfig`` replaces the root's handlers. Raises ConfigError naming
    the file for logging sections ``fileConfig`` cannot use.
    """
    global _configured, _direct
    names = claim_logging_sections(config)
    _direct = None
    if names:
        _install_record_factory()  # formats of the file's own may print %(request_id)s
        _file_config(config, names)
    else:
        settings = config.bastion
        root = logging.getLogger()
        for handler in list(root.handlers):
            if getattr(handler, "_bastion", False):
                root.removeHandler(handler)
        handler = StderrHandler()
        handler._bastion = True
        handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
        root.addHandler(handler)
        _direct = handler
        # The default formatters print no thread nor process: not looking them up spares every record some
        # microseconds (they read the request id from the context themselves).
        logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
        if root.level == logging.NOTSET or root.level > logging.WARNING:
            root.setLevel(logging.WARNING)
        logging.getLogger("bastion").setLevel(settings.log_level.upper())
    _configured = True


class LoggingState:
    """What :func:`configure_logging` changes, taken before and put back after (a command run in-process)."""

    def __init__(self):
        root = logging.getLogger()
        self.loggers = {name: (log.level, list(log.handlers), log.propagate, log.disabled)
                        for name, log in [("", root)] + [(n, logging.getLogger(n))
                                                         for n in list(logging.root.manager.loggerDict)]
                        if isinstance(log, logging.Logger)}
        self.configured = _configured
        self.direct = _direct

    def restore(self) -> None:
        """Put every logger's level, handlers, propagation and state back; loggers made since are reset."""
        global _configured, _direct
        for name in list(logging.root.manager.loggerDict) + [""]:
            log = logging.getLogger(name)
            if not isinstance(log, logging.Logger):
                continue
            level, handlers, propagate, disabled = self.loggers.get(name, (logging.NOTSET, [], True, False))
            log.setLevel(level)
            log.handlers[:] = handlers
            log.propagate, log.disabled = propagate, disabled
        _configured, _direct = self.configured, self.direct


def _file_config(config, names: list[str]) -> None:
    """``logging.config.fileConfig`` over the logging sections, ``${NAME}`` expanded, ``%(here)s`` the file's folder."""
    parser = configparser.ConfigParser(defaults={"here": str(config.base_dir), "__file__": config.path or ""},
                                       interpolation=_StoredAsWritten())
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # configparser's way to keep the keys' case
    for name in names:
        parser.add_section(name)
        for key, value in config.raw_section(name).items():
            parser.set(name, key, value)
    try:
        logging.config.fileConfig(parser, disable_existing_loggers=False)
    except Exception as exc:  # fileConfig raises KeyError, ValueError, ImportError, NameError, OSError, ...
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"{config.label}: logging sections: {type(exc).__name__}: {detail}") from None


class _StoredAsWritten(configparser.BasicInterpolation):
    """``%(here)s`` in the values fileConfig reads with interpolation (``args``); a format string, which it reads
    raw, may hold any ``%(asctime)s``-style field, so nothing is checked when a value is stored."""

    def before_set(self, parser, section, option, value):
        return value


def _install_record_factory() -> None:
    """Every record made during a request carries ``request_id`` (``-`` outside one)."""
    global _factory_installed
    if _factory_installed:
        return
    base = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = base(*args, **kwargs)
        record.request_id = current_request_id() or "-"
        return record

    logging.setLogRecordFactory(factory)
    _factory_installed = True


__all__ = ["CALL", "SECURITY", "Event", "TextFormatter", "JsonFormatter", "StderrHandler", "configure_logging",
           "claim_logging_sections", "log_event", "emit", "bind_request_id", "unbind_request_id", "current_request_id",
           "new_request_id", "text_value", "clip", "MAX_FIELD", "is_configured", "LoggingState"]
