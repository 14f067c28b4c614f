"""The request target: one canonical form, or 404 NotFound (see docs/protocol.md, "Request targets").

A router that forgives ``//api/x`` or ``/./api/x`` while a check looks at the
raw string is how a request reaches a resource without the checks meant for
it. So the kernel reads the target exactly as sent and refuses every form
that another component could read differently:

* the path starts with one ``/`` and has no empty segment (``//``) except a
  trailing one (folders of static files), and no ``.`` or ``..`` segment;
* a percent-escape is two hex digits and stands for a byte that must be
  escaped: never an unreserved character (``%61`` for ``a``, ``%2E`` for a
  dot), ``/``, ``\\``, NUL or another control character; the decoded path is
  valid UTF-8; a raw ``\\`` is refused too;
* no fragment (``#``);
* an absolute-form target (``http://host/path``, RFC 9112 section 3.2.2)
  names the host: its authority replaces the ``Host`` header, and its path
  follows the same rules.

A path that breaks a rule names no resource: 404 NotFound, before routing,
whatever the path. A target of another form (``*``, another scheme, a
fragment, a host with user information) is a malformed request: 400 InvalidCall.

The signed path of PROTOCOL section 4 is :attr:`Target.path`, as sent.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from kernel.core.errors import InvalidCall, NotFound

_ABSOLUTE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)", re.DOTALL)
_ESCAPE = re.compile(r"%(..)?", re.DOTALL)
_HEX = re.compile(r"[0-9A-Fa-f]{2}")
#: Bytes whose escape is not canonical: unreserved characters (RFC 3986 section 2.3), '/' and '\'.
_MUST_NOT_ESCAPE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~/\\")


@dataclass(frozen=True, slots=True)
class Target:
    """A request target: ``path`` as sent, ``query`` (None when there was no ``?``), ``authority``
    (the host of an absolute-form target, else None)."""

    path: str
    query: str | None = None
    authority: str | None = None


def parse_target(environ: Mapping[str, str]) -> Target:
    """Return the request's target from a WSGI environ; raise InvalidCall if it is not canonical."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if not raw:
        return _reconstructed(environ)
    authority = None
    if not raw.startswith("/"):
        match = _ABSOLUTE.fullmatch(raw)
        if match is None or match.group(1).lower() not in ("http", "https"):
            raise InvalidCall("the request target must be a path such as /api/add")
        authority, raw = match.group(2), match.group(3)
        if not authority or "@" in authority:
            raise InvalidCall("the request target names no valid host")
        if not raw.startswith("/"):
            raw = "/" + raw  # "http://host" and "http://host?q" have the path "/"
    if "#" in raw:
        raise InvalidCall("a request target has no fragment")
    path, sep, query = raw.partition("?")
    check_path(path)
    if not sep and environ.get("QUERY_STRING"):
        sep, query = "?", environ["QUERY_STRING"]  # a raw target that was given without its query
    return Target(path, query if sep else None, authority)


def check_path(path: str) -> None:
    """Raise NotFound unless ``path`` is in the one canonical form (see the module's docstring)."""
    if not path.startswith("/"):
        raise NotFound("the request path must start with /")
    segments = path[1:].split("/")
    for i, segment in enumerate(segments):
        if not segment and i != len(segments) - 1:
            raise NotFound("the request path has an empty segment (//)")
        if segment in (".", ".."):
            raise NotFound("the request path has a . or .. segment")
    if "\\" in path:
        raise NotFound("the request path has a backslash")
    if "%" not in path:
        return
    for match in _ESCAPE.finditer(path):
        digits = match.group(1)
        if digits is None or not _HEX.fullmatch(digits):
            raise NotFound("the request path has a malformed percent-escape")
        byte = int(digits, 16)
        if byte in _MUST_NOT_ESCAPE or byte < 0x20 or byte == 0x7F:
            raise NotFound("the request path escapes a character that must be sent as it is, or a control character")
    try:
        urllib.parse.unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise NotFound("the request path is not UTF-8 once decoded") from None


def _reconstructed(environ: Mapping[str, str]) -> Target:
    """A server that keeps no raw target: PATH_INFO is decoded, so encode it back the canonical way.

    (A client that sent ``%61`` for ``a`` then fails verification instead of passing as another path.)
    """
    decoded = (environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")).encode("latin-1")
    path = urllib.parse.quote(decoded, safe="/;=,:@!$&'()*+~-._")
    check_path(path)
    query = environ.get("QUERY_STRING") or None
    return Target(path, query)
