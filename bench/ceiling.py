"""The ceiling: a bare Falcon app doing the unavoidable part of a Bastion call.

It parses the same JSON body and answers a JSON body of the same shape and
size (``{"result": [...N todos...]}`` for get_all, one todo for add and
update, a login-sized object for /auth/login), encoded per request as Bastion
does — no auth, no storage, no middleware. It is served by gunicorn with the
same configuration as the case it is compared with; ``BENCH_CEILING_TODOS``
sets N. ``GET /healthz`` answers for the launcher's readiness check.
"""

from __future__ import annotations

import json
import os

import falcon


def _dumps(value) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _todo(i: int) -> dict:
    return {"id": f"t{i:07d}", "vsn": 1, "text": f"todo {i}", "done": False}


class Api:
    def __init__(self, todos: int):
        self.todos = [_todo(i) for i in range(todos)]

    def on_post(self, req: falcon.Request, resp: falcon.Response, service: str) -> None:
        body = req.bounded_stream.read(req.content_length or 0)
        payload = json.loads(body) if body else {}
        if service == "get_all":
            result = self.todos
        else:
            args = payload.get("args") or []
            result = {**_todo(0), "text": args[0] if args and isinstance(args[0], str) else "todo"}
        resp.content_type = falcon.MEDIA_JSON
        resp.data = _dumps({"result": result})


class Login:
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        payload = json.loads(req.bounded_stream.read(req.content_length or 0))
        resp.content_type = falcon.MEDIA_JSON
        resp.data = _dumps({"sid": "x" * 32, "key": "k" * 43, "expires": 1767225600, "server_time": 1767222000.25,
                            "user": {"username": payload.get("username"), "domain": "localhost"}})


class Health:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = _dumps({"status": "ok"})


def create_app(todos: int) -> falcon.App:
    """The ceiling app answering get_all with ``todos`` todos."""
    app = falcon.App()
    app.add_route("/api/{service}", Api(todos))
    app.add_route("/auth/login", Login())
    app.add_route("/healthz", Health())
    return app


app = create_app(int(os.environ.get("BENCH_CEILING_TODOS", "10")))
