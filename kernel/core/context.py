"""The current request: a read-only view, carried in a context variable.

Services and plugins read who is calling and for which tenant from here::

    from kernel import current
    current().domain      # 'alpha.localhost'
    current().user        # 'alice', or None before authentication
    current().roles       # frozenset({'editor'}): the caller's roles, empty before authentication

Only the kernel writes a request's fields (the names with an underscore);
plugins read the properties. A request carries its own fields and nothing
else: not the runtime, not a driver, not another plugin's state.

This module owns the kernel's only ambient state, three context variables,
each bound for one request (or one ``Runtime.bind`` block) and unbound after:

* the current :class:`Request` (:func:`current`, :func:`activate`);
* the request id every log line of the request carries (:func:`bind_request_id`);
* the storage scope ``storage()`` works on (:func:`bind_scope`: the runtime's
  records driver and models, and the request's domain).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kernel.core.store import StorageScope


class Request:
    """One request, as the kernel has read it.

    ``domain`` is the tenant (docs/protocol.md section 1), ``origin`` the
    client address (section 7), ``scheme`` ``http`` or ``https``, ``path``
    the target's path exactly as sent (the signed one), ``query`` its query
    string (None when the target had no ``?``). ``session`` is what the
    authenticator returned once a signed call passed step 10, else None;
    ``user`` is its ``username``; ``roles`` are what the authenticator read
    of the caller's roles with it.
    """

    __slots__ = ("_domain", "_origin", "_scheme", "_method", "_path", "_query", "_authority", "_headers", "_body",
                 "_session", "_roles", "_protected", "__weakref__")

    def __init__(self, domain: str, *, origin: str = "", scheme: str = "http", method: str = "POST",
                 path: str = "/", query: str | None = None, headers: Mapping[str, str] | None = None,
                 body: bytes = b"", session: Any = None, roles: Iterable[str] = ()):
        self._domain = domain
        self._origin = origin
        self._scheme = scheme
        self._method = method
        self._path = path
        self._query = query
        self._authority: str | None = None
        self._headers: Mapping[str, str] = headers if headers is not None else {}
        self._body = body
        self._session = session
        self._roles: frozenset[str] = frozenset(roles)
        self._protected = False

    @property
    def domain(self) -> str:
        """The tenant: the host of the request, lowercased, without port or trailing dot."""
        return self._domain

    @property
    def origin(self) -> str:
        """The client's address (behind trusted proxies, the one they name)."""
        return self._origin

    @property
    def scheme(self) -> str:
        """``http`` or ``https`` (behind trusted proxies, the one they name)."""
        return self._scheme

    @property
    def method(self) -> str:
        """The HTTP method."""
        return self._method

    @property
    def path(self) -> str:
        """The target's path exactly as sent."""
        return self._path

    @property
    def query(self) -> str | None:
        """The target's query string; None when there was no ``?``."""
        return self._query

    @property
    def body(self) -> bytes:
        """The body's bytes (read by the kernel for protected routes; empty otherwise)."""
        return self._body

    @property
    def session(self) -> Any:
        """The authenticated session, or None."""
        return self._session

    @property
    def user(self) -> str | None:
        """The authenticated username, or None."""
        return getattr(self._session, "username", None)

    @property
    def roles(self) -> frozenset[str]:
        """The authenticated caller's roles; empty before authentication or without any.

        The kernel sets them once, from the authenticator's answer
        (``Authentication.roles``): reading them reads nothing. With the auth
        plugin they are the user's roles as stored with the user, read as
        part of authenticating each call, so a change of roles counts from
        the user's next call.
        """
        return self._roles

    @property
    def protected(self) -> bool:
        """Whether the route the request matched is protected (``/api/*``, ``/auth/*``)."""
        return self._protected

    def header(self, name: str) -> str | None:
        """Return one header's value by case-insensitive name, or None."""
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        return self._headers.get(key)

    def __repr__(self) -> str:
        return f"<Request {self._method} {self._domain}{self._path} from {self._origin or '?'}>"


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


# -- request ids ---------------------------------------------------------------------------------------------------

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("bastion_request_id", default=None)


def bind_request_id(request_id: str | None) -> contextvars.Token:
    """Make ``request_id`` the current one until :func:`unbind_request_id` with the returned token."""
    return _request_id.set(request_id)


def unbind_request_id(token: contextvars.Token) -> None:
    """Undo :func:`bind_request_id`."""
    _request_id.reset(token)


def current_request_id() -> str | None:
    """The id of the request being served, or None."""
    return _request_id.get()


# -- the storage scope ---------------------------------------------------------------------------------------------

_scope: contextvars.ContextVar[StorageScope] = contextvars.ContextVar("bastion_storage")


def bind_scope(scope: StorageScope) -> contextvars.Token:
    """Make ``scope`` what ``storage()`` works on until :func:`unbind_scope` with the returned token."""
    return _scope.set(scope)


def unbind_scope(token: contextvars.Token) -> None:
    """Undo :func:`bind_scope`."""
    _scope.reset(token)


def current_scope() -> StorageScope | None:
    """The storage scope bound for the current request or ``Runtime.bind`` block, or None."""
    return _scope.get(None)
