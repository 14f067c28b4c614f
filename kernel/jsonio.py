"""JSON in and out of the wire: one strict reader and one compact writer for everyone."""

from __future__ import annotations

import json
from typing import Any


def dumps(value: Any) -> bytes:
    """Encode a body: compact UTF-8 JSON, no NaN or Infinity."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def loads(body: bytes) -> Any:
    """Decode a body strictly; raise ValueError on bad UTF-8, a repeated key, NaN or Infinity.

    A repeated key is refused rather than resolved: a proxy or filter that keeps
    the first value must never read a different call than we do.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8: {exc.reason}") from None
    return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")
