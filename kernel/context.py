"""The current request, carried in a context variable.

Services read who is calling and for which tenant from here, never from stack
frames::

    from kernel.context import current
    current().domain      # 'alpha.localhost'
    current().user        # 'alice', or None before authentication
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from kernel.runtime import Runtime

#: Signs a response: called with (status, body bytes), returns extra headers.
ResponseSigner = Callable[[int, bytes], Mapping[str, str]]


@dataclass
class Request:
    """A framework-independent view of one request.

    ``domain`` is the tenant (PROTOCOL.md section 1), ``origin`` the client
    address (section 7), ``scheme`` ``http`` or ``https``. ``headers`` is the
    WSGI environ (or any mapping of ``HTTP_*`` names); read it with
    :meth:`header`. ``session`` is set once a plugin has
    authenticated the call; ``signer`` once its MAC verified, so that every
    later answer is signed.
    """

    runtime: Runtime
    domain: str
    origin: str = ""
    scheme: str = "http"
    method: str = "POST"
    path: str = "/"
    query: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    session: Any = None
    signer: ResponseSigner | None = None
    #: Whether the matched route is protected (``/api/*``, ``/auth/*``): its refusals are weighed.
    protected: bool = False
    #: Scratch space plugins share across the hooks of one request, keyed by plugin.
    notes: dict[str, Any] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        """Return one header's value by case-insensitive name, or None."""
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        return self.headers.get(key)

    @property
    def user(self) -> str | None:
        """The authenticated username, or None."""
        return getattr(self.session, "username", None)


_current: contextvars.ContextVar[Request] = contextvars.ContextVar("bastion_request")


def current() -> Request:
    """Return the current request; raise LookupError outside of one."""
    try:
        return _current.get()
    except LookupError:
        raise LookupError("no Bastion request is active (use Runtime.bind() outside HTTP)") from None


def get() -> Request | None:
    """Return the current request, or None outside of one."""
    return _current.get(None)


@contextlib.contextmanager
def activate(request: Request) -> Iterator[Request]:
    """Make ``request`` the current one for the duration of the block."""
    token = _current.set(request)
    try:
        yield request
    finally:
        _current.reset(token)


def set_current(request: Request) -> contextvars.Token:
    """Make ``request`` current until :func:`reset` with the returned token."""
    return _current.set(request)


def reset(token: contextvars.Token) -> None:
    """Undo :func:`set_current`."""
    _current.reset(token)
