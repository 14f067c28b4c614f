"""Routes a plugin adds without touching Falcon, and the one way every JSON answer is written."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the facade exports Routes: importing kernel must not import Falcon
    import falcon

from kernel.core.context import current
from kernel.core.jsonio import dumps

#: A route's handler: the current request (and the path's fields) in, a JSON value out.
Handler = Callable[..., Any]


def answer(resp: falcon.Response, value: Any, status: int = 200) -> None:
    """Write a JSON answer: the status, ``application/json``, the compact UTF-8 body."""
    resp.status = status
    resp.content_type = "application/json"
    resp.data = dumps(value)


class HandlerResource:
    """A Falcon resource serving one handler for one method."""

    def __init__(self, method: str, handler: Handler, protected: bool, signed: bool, max_body: int | None = None):
        self.handler = handler
        self.protected = protected
        self.signed = signed
        self.max_body = max_body
        setattr(self, "on_" + method.lower(), self._respond)

    def _respond(self, req: falcon.Request, resp: falcon.Response, **params: Any) -> None:
        answer(resp, self.handler(current(), **params))


class Routes:
    """What ``bastion_routes`` receives: add a handler at a path (Falcon's URI templates: ``/items/{id}``)."""

    def __init__(self, app: falcon.App):
        self._app = app

    def post(self, path: str, handler: Handler, *, protected: bool = False, signed: bool = False,
             max_body: int | None = None) -> None:
        """Serve ``POST path``. ``protected``: the checks of docs/protocol.md section 4 run first (steps 2 to
        5); ``signed``: the call is authenticated too (steps 6 to 10) and its answers are signed.

        ``max_body`` (protected routes only) lowers ``[bastion] max_body`` for this route: a body over it is
        413 before it is read, so that a route whose bodies are small (a login's) never reads, hashes or
        parses a mebibyte for whoever sends one. It never raises the server's limit.
        """
        if signed and not protected:
            raise ValueError(f"{path}: a signed route is protected too")
        if max_body is not None and (not protected or type(max_body) is not int or max_body < 1):
            raise ValueError(f"{path}: max_body is a number of bytes, at least 1, of a protected route")
        self._app.add_route(path, HandlerResource("POST", handler, protected, signed, max_body))

    def get(self, path: str, handler: Handler) -> None:
        """Serve ``GET path`` (and HEAD), unprotected: for pages and public data, never for secrets."""
        self._app.add_route(path, HandlerResource("GET", handler, False, False))
