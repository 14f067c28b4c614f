"""JSON in and out: one strict reader and one compact writer, for the wire, the drivers and the clients.

The reader refuses what a client could mean in two ways, or what the server
could not give back: a repeated key, ``NaN`` and ``Infinity`` (also a number
too large for a float, such as ``1e400``), text that is not UTF-8 or holds a
lone surrogate escape (``"\\ud800"``), and nesting deeper than
:data:`MAX_DEPTH` levels (or the fewer a caller allows). Each is a
ValueError, which the callers answer as 400 InvalidCall.

What the reader costs grows with the body only, never faster, and a body
nested too deep costs no object at all: its nesting is read from the bytes
before they are parsed (:func:`nesting_within`), by byte operations and one
regular expression, so that a client with no session cannot make the server
build and walk hundreds of thousands of containers to be told 400.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable
from types import ModuleType
from typing import Any

#: The deepest nesting of arrays and objects a body may have.
MAX_DEPTH = 64

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
#: Every escape but a lone surrogate: a surrogate pair, any other ``\uXXXX``, or a one-character escape.
#: Matched from left to right, an escaped backslash is consumed whole, so the JSON text ``"\\ud800"`` holds no
#: escape of a surrogate; whatever ``\u`` is left once these are removed starts a lone surrogate.
_NOT_LONE = re.compile(r"\\(?:u(?:[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
                       r"|(?![dD][89a-fA-F])[0-9a-fA-F]{4})|[^u])")
#: ``[`` and ``{`` become ``(``, ``]`` and ``}`` become ``)``; every other byte goes (see :func:`nesting_within`).
_BRACKETS = bytes.maketrans(b"[]{}", b"()()")
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")


#: The one JSON writer: compact, UTF-8 text kept as it is (no \u escapes), no NaN or Infinity.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)

_orjson: ModuleType | None
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


def loads_stored_all(texts: Iterable[str | bytes]) -> list[Any]:
    """:func:`loads_stored` of each text, in one list (a select's rows: one call for them all, not one each)."""
    texts = list(texts)
    if _orjson is not None:
        try:
            return [_orjson.loads(text) for text in texts]
        except _OR_STORED_ERRORS:
            pass  # one the stdlib reads: each through loads_stored
    return [loads_stored(text) for text in texts]


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


def loads(body: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """Decode a body strictly; raise ValueError on anything the module's docstring lists.

    ``max_depth`` lowers the nesting allowed (1: one flat array or object,
    as a login body is); a body nested deeper is refused before it is parsed.
    A repeated key is refused rather than resolved: a proxy or filter that
    keeps the first value must never read a different call than we do.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8: {exc.reason}") from None
    if not nesting_within(body, max_depth):
        raise ValueError(f"nested deeper than {max_depth} level{'s' if max_depth != 1 else ''}")
    try:
        value = _STRICT.decode(text)
    except RecursionError:  # not reached once the nesting was read; kept so that no body can ever be a 500
        raise ValueError(f"nested deeper than {max_depth} levels") from None
    if "\\u" in text and _SURROGATE_ESCAPE.search(text) and "\\u" in _NOT_LONE.sub("", text):
        raise ValueError("a string holds a lone surrogate escape, which is not text")
    return value


def nesting_within(body: bytes, max_depth: int = MAX_DEPTH) -> bool:
    """Whether the arrays and objects of a JSON body nest at most ``max_depth`` levels, read from its bytes.

    Exact for valid JSON (for any other body the parser refuses what this
    lets through). The strings go first: their escaped backslashes and
    quotes, then every other segment between quotes; the brackets left are
    the body's structure, which must match :func:`_nested_at_most` (a
    regular expression of possessive groups, so it never backtracks). Every
    step is a pass over the bytes in C, and none builds a container: a
    mebibyte costs milliseconds, where parsing it can cost hundreds.
    """
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return True
    if b"\\" in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = b"".join(body.split(b'"')[0::2]).translate(_BRACKETS, _NOT_BRACKETS)
    if len(structure) <= 2 * max_depth:  # at most max_depth containers outside the strings
        return True
    return _nested_at_most(max_depth).fullmatch(structure) is not None


@functools.lru_cache(maxsize=8)
def _nested_at_most(depth: int) -> re.Pattern[bytes]:
    """A pattern matching a sequence of balanced ``(`` ``)`` groups nested at most ``depth`` levels."""
    group = rb"\(\)"
    for _ in range(depth - 1):
        group = rb"\((?:" + group + rb")*+\)"
    return re.compile(rb"(?:" + group + rb")*+")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return out


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is too large")
    return value


#: The strict decoder of :func:`loads`: made once (``json.loads`` with hooks makes a decoder per call).
_STRICT = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constant, parse_float=_finite)
