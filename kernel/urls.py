"""Storage URLs: one parser of their scheme and one redaction, for the kernel and every driver."""

from __future__ import annotations

import re

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
#: ``scheme://user:password@host``: the password is what lies between the first ':' and the last '@'.
_USERINFO_PASSWORD = re.compile(r"(://[^/?#@:]*):[^/?#]*@(?=[^@]*$)")
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


def redact(url: str) -> str:
    """Hide the passwords of a URL, for messages and logs."""
    url = _USERINFO_PASSWORD.sub(r"\1:***@", url, count=1)
    return _SECRET_PARAM.sub(r"\1***", url)
