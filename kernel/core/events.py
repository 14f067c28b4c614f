"""Structured events: a name and fields, written as one line (``event key=value ...`` or JSON members).

The security events (``bastion.security``, :meth:`kernel.Runtime.security_event`) and the call line
(``bastion.call``) are :class:`Event` messages. This module holds the event and how each of its values is written so
that no value can forge a field or a line; writing lines (handlers, formatters, configuration) is the operations
layer's (:mod:`kernel.ops.logs`).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from kernel.core.context import current_request_id

#: One line per request.
CALL = logging.getLogger("bastion.call")
#: One line per security event.
SECURITY = logging.getLogger("bastion.security")

#: Longest client-supplied text (a path, a username) written into a field, in characters.
MAX_FIELD = 256

# ---------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------


class Event:
    """The message of a structured line: an event name, its request id and its fields (None values left out).

    ``str(event)`` is the ``event key=value ...`` text, computed only when a
    handler formats the record.
    """

    __slots__ = ("name", "request_id", "fields")

    def __init__(self, name: str, fields: Mapping[str, Any], request_id: str | None = None):
        self.name = name
        self.request_id = request_id
        self.fields = fields

    def items(self) -> list[tuple[str, Any]]:
        """``event``, ``request_id`` and the fields, in order, without the empty ones."""
        out: list[tuple[str, Any]] = [("event", self.name)]
        if self.request_id:
            out.append(("request_id", self.request_id))
        out.extend((k, v) for k, v in self.fields.items() if v is not None)
        return out

    def __str__(self) -> str:
        # On every call line's path: one pass, the common types first, and the text of a string value kept (the
        # same domains, origins, paths and users come back call after call; the memo is emptied when full).
        parts = ["event=" + self.name]
        if self.request_id:
            parts.append("request_id=" + self.request_id)
        parts.extend(f"{key}={text}" for key, text in self._texts(_TEXT_MEMO, _text_string, text_value, False))
        return " ".join(parts)

    def json_members(self) -> str:
        """``"event":...,"request_id":...`` and the fields, as JSON object members (ASCII only), for the JSON line.

        Written by hand for the same reason as the text: strings' JSON kept, numbers as Python writes them
        (finite), anything else through the JSON encoder.
        """
        parts = ['"event":' + _json_string(self.name)]
        if self.request_id:
            parts.append('"request_id":' + _json_string(self.request_id))
        parts.extend(f'"{key}":{text}' for key, text in self._texts(_JSON_MEMO, _json_string, _JSON.encode, True))
        return ",".join(parts)

    def _texts(self, memo: dict[str, str], string: Callable[[str], str], other: Callable[[Any], str],
               finite: bool) -> Iterator[tuple[str, str]]:
        """Each field that has a value, with its text: ``string`` of a string (kept in ``memo``), a number as
        Python writes it (only a finite one when ``finite``), ``other`` of anything else."""
        for key, value in self.fields.items():
            if value is None:
                continue
            kind = type(value)
            if kind is str:
                text = memo.get(value)
                if text is None:
                    text = string(value)
                    if len(memo) >= _TEXT_MEMO_SIZE:
                        memo.clear()
                    memo[value] = text
            elif kind is int or (kind is float and (not finite or math.isfinite(value))):
                text = repr(value)
            else:
                text = other(value)
            yield key, text

    def data(self, head: dict[str, Any]) -> dict[str, Any]:
        """``head`` with ``event``, ``request_id`` and the fields added (the JSON line's object)."""
        head["event"] = self.name
        if self.request_id:
            head["request_id"] = self.request_id
        for key, value in self.fields.items():
            if value is not None:
                head[key] = value
        return head

    def __repr__(self) -> str:
        return f"Event({self.name!r}, {dict(self.fields)!r})"


#: Values written bare in text lines; anything else is quoted and escaped as a JSON string.
_BARE = re.compile(r"[A-Za-z0-9_.:/@+*,\[\]-]+")
_BARE_MATCH = _BARE.fullmatch
#: Texts of string values already written (see :meth:`Event.__str__`), and how many are kept at most.
_TEXT_MEMO: dict[str, str] = {}
_TEXT_MEMO_SIZE = 4096
#: The same for the JSON lines.
_JSON_MEMO: dict[str, str] = {}
_json_string = json.encoder.encode_basestring_ascii
#: A string as a JSON string, ASCII only.
json_string = _json_string
_JSON = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), default=str)
_ASCII = json.JSONEncoder(ensure_ascii=True)


def _text_string(value: str) -> str:
    """A string field in a text line: bare when it is safe, else quoted (what :func:`text_value` writes)."""
    return value if _BARE_MATCH(value) else _ASCII.encode(value)


def text_value(value: Any) -> str:
    """One field's value in a text line: bare when it is safe, else a quoted JSON string (no new line, no control
    character, ASCII only), so that no value can forge a field or a line."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return _text_string(str(value))


def clip(text: str | None, limit: int = MAX_FIELD) -> str | None:
    """A client-supplied text, cut to ``limit`` characters (marked with an ellipsis)."""
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + "…"


def log_event(logger: logging.Logger, level: int, name: str, fields: Mapping[str, Any],
              request_id: str | None = None) -> None:
    """Write one structured line through :mod:`logging` (``request_id`` defaults to the current request's)."""
    if logger.isEnabledFor(level):
        event = Event(name, fields, request_id or current_request_id())
        logger.handle(logger.makeRecord(logger.name, level, "(event)", 0, event, (), None))
