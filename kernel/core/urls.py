"""Storage URLs: one parser of their scheme and one redaction, for the kernel and every driver."""

from __future__ import annotations

import re

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
#: A query parameter that holds a password.
_SECRET_PARAM = re.compile(r"([?&](?:password|passwd|pass|pw|secret|token|sslpassword)=)[^&#]*", re.IGNORECASE)


class StorageURL(str):
    """A storage URL (``sqlite:///var/bastion.sqlite3``, ``redis://:pw@host/0``): a string that knows
    its scheme and how to show itself without its password.

    It *is* the string it was given, so a driver may treat it as one.
    """

    __slots__ = ()

    @property
    def scheme(self) -> str:
        """The scheme, lower-cased (``postgresql+psycopg``, ``mem``), or '' when there is none."""
        match = _SCHEME.match(self.strip())
        return match.group(1).lower() if match else ""

    @property
    def redacted(self) -> str:
        """The URL with every password (user information or query parameter) replaced by ``***``."""
        return redact(self)

    def __repr__(self) -> str:
        return f"StorageURL({self.redacted!r})"


#: Anything that looks like a URL inside a longer text.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def scrub(text: str) -> str:
    """Redact every URL found in a text (a traced hook call, a message): see :func:`redact`."""
    return _URL_IN_TEXT.sub(lambda match: redact(match.group(0)), text) if "://" in text else text


def redact(url: str) -> str:
    """Hide the passwords of a URL, for messages and logs.

    The password of ``scheme://user:password@host`` is everything between the
    user's ``:`` and the last ``@``, whatever it holds: a password pasted
    unencoded (``/``, ``#``, ``?`` and ``@`` are common in generated ones)
    never shows, at the price of hiding the host too when a later part of the
    URL holds an ``@``. Query parameters named like a password are hidden too.
    """
    start = url.find("://") + 3
    at = url.rfind("@")
    if start >= 3 and at > start and url[start] != "/":
        colon = url.find(":", start, at)
        if colon >= 0:
            url = url[:colon + 1] + "***" + url[at:]
    return _SECRET_PARAM.sub(r"\1***", url)
