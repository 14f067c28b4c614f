"""JSON in and out: one strict reader and one compact writer, for the wire, the drivers and the clients.

The reader refuses what a client could mean in two ways, or what the server
could not give back: a repeated key, ``NaN`` and ``Infinity`` (also a number
too large for a float, such as ``1e400``), text that is not UTF-8 or holds a
lone surrogate escape (``"\\ud800"``), and nesting deeper than
:data:`MAX_DEPTH` levels. Each is a ValueError, which the callers answer as
400 InvalidCall.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

#: The deepest nesting of arrays and objects a body may have.
MAX_DEPTH = 64

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


#: The one JSON writer: compact, UTF-8 text kept as it is (no \u escapes), no NaN or Infinity.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)

try:  # orjson (a dependency; the stdlib serves alike where it cannot be installed) writes bodies and reads stored text
    import orjson as _orjson
except ImportError:  # pragma: no cover - the fallback is tested by forcing it
    _orjson = None

#: orjson writes a subclass of str, int, dict or list, a datetime and a dataclass only through ``default``,
#: which refuses: such a value, like one orjson cannot write, is written by the stdlib writer instead.
_OR_OPTIONS = 0 if _orjson is None else (_orjson.OPT_PASSTHROUGH_SUBCLASS | _orjson.OPT_PASSTHROUGH_DATETIME
                                         | _orjson.OPT_PASSTHROUGH_DATACLASS)
_OR_ERRORS: tuple[type[BaseException], ...] = (TypeError,) if _orjson is None else (TypeError, _orjson.JSONEncodeError)
_OR_STORED_ERRORS: tuple[type[BaseException], ...] = (ValueError,) if _orjson is None else (_orjson.JSONDecodeError,)


def _refuse(value: Any) -> Any:
    raise TypeError("not for orjson")


def dumps_text(value: Any) -> str:
    """Encode a JSON value as compact text (what drivers store); ValueError for NaN or Infinity."""
    return _ENCODER.encode(value)


def dumps(value: Any) -> bytes:
    """Encode a body: compact UTF-8 JSON, no NaN or Infinity.

    With orjson, the body is written by orjson when it can write it exactly
    as this module promises: orjson writes NaN and Infinity as ``null``, so a
    body in which ``null`` appears at all is written again by the stdlib
    writer, which refuses NaN; an integer beyond 64 bits, a lone surrogate, a
    subclass, a datetime or a dataclass makes orjson refuse, and the stdlib
    writer decides. (orjson writes an enum member as its value and a UUID as
    its text, where the stdlib writer would refuse a plain ``Enum`` or a
    ``UUID``: the one difference, and only in what a service returns.)
    """
    if _orjson is not None:
        try:
            body = _orjson.dumps(value, default=_refuse, option=_OR_OPTIONS)
        except _OR_ERRORS:
            pass
        else:
            if b"null" not in body:
                return body
    return _ENCODER.encode(value).encode("utf-8")


def loads_stored(text: str | bytes) -> Any:
    """Decode JSON text a driver wrote with :func:`dumps_text` (never a client's body: that is :func:`loads`).

    orjson where it can read the text, else the stdlib (an integer beyond 64
    bits): the same value either way, for text that :func:`dumps_text` wrote.
    """
    if _orjson is not None:
        try:
            return _orjson.loads(text)
        except _OR_STORED_ERRORS:
            pass
    return json.loads(text)


def loads(body: bytes) -> Any:
    """Decode a body strictly; raise ValueError on anything the module's docstring lists.

    A repeated key is refused rather than resolved: a proxy or filter that keeps
    the first value must never read a different call than we do.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8: {exc.reason}") from None
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None
    # Both checks below walk the value; the cheap tests in front keep them off ordinary bodies.
    if text.count("[") + text.count("{") > MAX_DEPTH:
        _check_depth(value)
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("a string holds a lone surrogate escape, which is not text") from None
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is too large")
    return value


def _check_depth(value: Any) -> None:
    """Raise ValueError if arrays and objects nest deeper than MAX_DEPTH (without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        if depth > MAX_DEPTH:
            raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
        stack.extend((child, depth + 1) for child in item if isinstance(child, (dict, list)))
