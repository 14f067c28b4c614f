"""The ``/auth/login`` and ``/auth/logout`` routes."""

from __future__ import annotations

import falcon

from kernel.app import dumps


class LoginResource:
    """``POST /auth/login``: PROTOCOL.md section 3."""

    protected = True

    def __init__(self, get_auth):
        self.get_auth = get_auth

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Log in and answer the session."""
        resp.content_type = falcon.MEDIA_JSON
        resp.data = dumps(self.get_auth().login(req.context.request))


class LogoutResource:
    """``POST /auth/logout``: PROTOCOL.md section 5, signed like a call (the kernel authenticates it)."""

    protected = True
    signed = True

    def __init__(self, get_auth):
        self.get_auth = get_auth

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """End the session."""
        resp.content_type = falcon.MEDIA_JSON
        resp.data = dumps({"result": self.get_auth().logout(req.context.request.session)})
