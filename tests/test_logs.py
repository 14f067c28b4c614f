"""kernel.ops.logs in one process: the two line formats, what no value can do to a line, the configuration."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from kernel.core.config import Config
from kernel.core.errors import ConfigError
from kernel.ops import logs
from kernel.ops.logs import CALL, Event, JsonFormatter, LoggingState, emit

FIELDS = {"domain": "localhost", "origin": "127.0.0.1", "method": "POST", "path": "/api/add", "service": "add",
          "user": None, "status": 200, "duration_ms": 1.5, "ok": True}


class Captured:
    def __init__(self, capsys):
        self.capsys = capsys

    def getvalue(self) -> str:
        return self.capsys.readouterr().err


@pytest.fixture
def configured(capsys):
    """The default logging of a process (its handler writes to whatever sys.stderr is: pytest's capture here);
    everything put back afterwards."""
    state = LoggingState()

    def configure(**bastion) -> Captured:
        logs.configure_logging(Config.from_dict({"bastion": bastion}))
        capsys.readouterr()
        return Captured(capsys)

    yield configure
    state.restore()


def test_text_lines_are_logfmt_and_no_value_forges_a_field_or_a_line():
    event = Event("call", {**FIELDS, "path": '/a b\n2026-01-01 INFO forged=1 "x"', "user": "é"}, "rid")
    text = str(event)
    assert "\n" not in text
    assert text.startswith("event=call request_id=rid domain=localhost origin=127.0.0.1 method=POST ")
    assert 'path="/a b\\n2026-01-01 INFO forged=1 \\"x\\""' in text and 'user="\\u00e9"' in text
    assert "status=200 duration_ms=1.5 ok=true" in text and "None" not in text


@pytest.mark.parametrize("brk", ["\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"])
def test_no_message_or_exception_text_starts_a_line_of_its_own(brk):
    """Any logger's message may repeat client text: written as escapes, it cannot pass for a record."""
    forged = "1999-01-01T00:00:00.000Z INFO bastion.security event=login user=admin"
    formatter = logs.TextFormatter()
    record = logging.LogRecord("plugin", logging.WARNING, __file__, 1, "refused %s", (f"x{brk}{forged}",), None)
    line = formatter.format(record)
    assert line.splitlines() == [line] and line.endswith(forged) and "refused x\\" in line
    try:
        raise ValueError(f"bad key {brk}{forged}")
    except ValueError:
        import sys
        record = logging.LogRecord("plugin", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    first, *rest = formatter.format(record).splitlines()
    assert first.endswith(" ERROR plugin failed") and rest[0] == "  Traceback (most recent call last):"
    assert all(line.startswith("  ") for line in rest)


def test_json_lines_hold_the_fields_as_named():
    line = JsonFormatter().format_event(0.0, "INFO", "bastion.call", Event("call", {**FIELDS, "path": "/\n"}, "rid"))
    data = json.loads(line)
    assert list(data) == ["time", "level", "logger", "event", "request_id", "domain", "origin", "method", "path",
                          "service", "status", "duration_ms", "ok"]
    assert data["path"] == "/\n" and data["ok"] is True and line.isascii() and "\n" not in line
    assert data["time"] == "1970-01-01T00:00:00.000Z"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_direct_path_writes_what_logging_would(configured, log_format):
    stderr = configured(log_format=log_format)
    event = Event("call", FIELDS, "abc")
    emit(CALL, logging.INFO, event)  # the default handler alone: written directly
    extra = logging.StreamHandler(io.StringIO())
    logging.getLogger().addHandler(extra)  # another handler: through logging
    try:
        emit(CALL, logging.INFO, event)
    finally:
        logging.getLogger().removeHandler(extra)
    direct, through = stderr.getvalue().splitlines()
    def strip(line):
        return (re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+Z", "T", line))
    assert strip(direct) == strip(through)
    assert extra.stream.getvalue().strip() == "event=call request_id=abc domain=localhost origin=127.0.0.1 " \
        "method=POST path=/api/add service=add status=200 duration_ms=1.5 ok=true"


def test_other_records_carry_the_request_id_during_a_request(configured):
    stderr = configured()
    token = logs.bind_request_id("r-42")
    try:
        logging.getLogger("bastion.test").warning("something %s", "odd")
    finally:
        logs.unbind_request_id(token)
    logging.getLogger("bastion.test").warning("outside")
    inside, outside = stderr.getvalue().splitlines()
    assert re.fullmatch(r"\S+Z WARNING bastion\.test something odd request_id=r-42", inside)
    assert outside.endswith("WARNING bastion.test outside")


def test_log_level_sets_the_bastion_loggers_and_others_stay_at_warning(configured):
    stderr = configured(log_level="warning")
    logging.getLogger("bastion.x").info("hidden")
    logging.getLogger("some.library").info("hidden too")
    logging.getLogger("some.library").warning("shown")
    text = stderr.getvalue()
    assert text.count("\n") == 1 and "shown" in text


def test_logging_sections_and_here(tmp_path, monkeypatch):
    state = LoggingState()
    ini = tmp_path / "bastion.ini"
    ini.write_text("[loggers]\nkeys = root\n[handlers]\nkeys = file\n[formatters]\nkeys = plain\n"
                   "[logger_root]\nlevel = INFO\nhandlers = file\n"
                   "[handler_file]\nclass = FileHandler\nargs = ('%(here)s/out.log', 'a')\nformatter = plain\n"
                   "[formatter_plain]\nformat = %(levelname)-8s [%(request_id)s] %(message)s\n")
    from kernel.core.config import load_config

    try:
        logs.configure_logging(load_config(str(ini)))
        token = logs.bind_request_id("r-7")
        logging.getLogger("bastion.test").info("hello")
        logs.unbind_request_id(token)
        for handler in logging.getLogger().handlers:
            handler.flush()
    finally:
        state.restore()
    assert (tmp_path / "out.log").read_text() == "INFO     [r-7] hello\n"


def test_logging_sections_must_come_together_and_alone():
    with pytest.raises(ConfigError, match=r"\[handlers\]: missing"):
        logs.claim_logging_sections(Config.from_dict({"loggers": {"keys": "root"}, "formatters": {"keys": ""}}))
    with pytest.raises(ConfigError, match="log_format: not used when the file has"):
        logs.claim_logging_sections(Config.from_dict({"bastion": {"log_format": "json"}, "loggers": {"keys": "root"},
                                                      "handlers": {"keys": ""}, "formatters": {"keys": ""}}))
