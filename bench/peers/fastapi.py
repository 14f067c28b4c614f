"""The FastAPI peer (``bench/peers/fastapi_todo``): fill, serve, log in, build the requests, check it.

Its users are the bench's domains (``n10``, ``a10``, ``upd``, ``n1000``, …), each owning the same todos as the
Bastion domain of that name, as the Django peer's do. A login is the OAuth2 password flow: a form POST to
``/api/login/access-token`` that answers a JWT; every request then carries ``Authorization: Bearer <jwt>``, and
the server loads the user from the database by it. Todos are written by bulk inserts before gunicorn starts.

Served by gunicorn with uvicorn workers (``uvicorn_worker.UvicornWorker``, 2 by default), not with Bastion's
packaged gunicorn settings: :func:`serve_command` is the command line, :class:`Server` runs it.

``python -m bench.peers.fastapi`` fills a database in a temporary folder, serves it on a free port, runs
:func:`check` and the first request line of each operation, prints OK and stops the server.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kernel.testing.servers import GunicornServer

APP = "bench.peers.fastapi_todo.main:app"
HOST = "peer.localhost"
#: gunicorn's settings for the peer: the uvicorn worker class, no access log, no control socket.
GUNICORN_CONF = "python:bench.peers.fastapi_todo.gunicorn_conf"
REPO_ROOT = Path(__file__).resolve().parents[2]

_MODULES = ("fastapi", "uvicorn", "uvicorn_worker", "jwt", "pwdlib", "argon2", "multipart", "sqlalchemy")


def available() -> str | None:
    """None when the peer can run; else why not."""
    missing = [m for m in _MODULES if importlib.util.find_spec(m) is None]
    if missing:
        return f"{', '.join(missing)} not installed (`pip install -e '.[bench]'`, or `make bench`)"
    return None


def environment(db: Path) -> dict[str, str]:
    return {"BENCH_PEER_DB": str(db)}


def serve_command(port: int, workers: int = 2, host: str = "127.0.0.1") -> list[str]:
    """gunicorn's command line serving the peer with ``workers`` uvicorn workers on ``host:port``; run it with
    :func:`environment`'s variables and the repository root on ``PYTHONPATH``."""
    return [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONF, "--worker-class", "uvicorn_worker.UvicornWorker",
            "--workers", str(workers), "--bind", f"{host}:{port}", APP]


def fill(db: Path, plan: list[tuple[str, int]], password: str, repo_root: Path) -> dict[str, list[int]]:
    """Create the schema, one user per plan entry and its todos; return each user's ``[first, last]`` id."""
    plan_path = db.with_suffix(".plan.json")
    plan_path.write_text(json.dumps(plan))
    out = subprocess.run([sys.executable, "-m", "bench.peers.fastapi_todo.setup", str(db), str(plan_path), password],
                         cwd=repo_root, capture_output=True, text=True, check=False,
                         env={**os.environ, "PYTHONPATH": str(repo_root)})
    if out.returncode:
        raise RuntimeError(f"the FastAPI peer's set-up failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


class Server(GunicornServer):
    """gunicorn serving the peer on ``host`` and a free port (:func:`serve_command`), in a folder of its own:
    ``kernel.testing.servers.GunicornServer`` (``url``, ``process``, :meth:`start`, :meth:`close`, :meth:`log`)
    with the peer's command line and environment instead of Bastion's."""

    def __init__(self, db: Path, workers: int = 2, host: str = "127.0.0.1", repo_root: Path = REPO_ROOT,
                 startup_timeout: float = 120.0):
        super().__init__({}, workers=workers, env={**environment(db), "PYTHONPATH": str(repo_root)}, host=host,
                         app=APP, startup_timeout=startup_timeout)

    def command(self) -> list[str]:
        return serve_command(self.port, self.workers, self.host)


@dataclass
class PeerSession:
    """The access token (a JWT) of one login."""

    token: str

    def headers(self, unsafe: bool) -> str:
        """The request headers, in replay.lua's ``Name:value|Name:value`` form (the same for every method:
        a bearer token needs no CSRF token)."""
        return f"Authorization:Bearer {self.token}"

    @property
    def authorization(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def _request(url: str, method: str, path: str, body: bytes | None, headers: dict[str, str],
             content_type: str = "application/json"):
    host_port = url.split("://", 1)[1]
    connection = http.client.HTTPConnection(host_port, timeout=60)
    try:
        connection.request(method, path, body=body, headers={"Host": HOST, "Content-Type": content_type, **headers})
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


def login(url: str, username: str, password: str) -> PeerSession:
    """The OAuth2 password flow: a form POST answering ``{"access_token": …, "token_type": "bearer"}``."""
    form = urllib.parse.urlencode({"grant_type": "password", "username": username, "password": password}).encode()
    status, _, answer = _request(url, "POST", "/api/login/access-token", form, {},
                                 content_type="application/x-www-form-urlencoded")
    if status != 200:
        raise RuntimeError(f"the FastAPI peer's login answered {status}: {answer[:200]!r}")
    token = json.loads(answer)
    if token.get("token_type") != "bearer" or not token.get("access_token"):
        raise RuntimeError(f"the FastAPI peer's login gave no bearer token: {answer[:200]!r}")
    return PeerSession(token=token["access_token"])


def lines(session: PeerSession, op: str, count: int, update_ids: Iterator[int] | None = None) -> Iterator[str]:
    """Request lines for replay.lua: list (GET), create (POST) or update (PATCH of a different todo each)."""
    if op == "get_all":
        line = f"@GET\t{HOST}\t/api/todos/\t{session.headers(False)}\t\n"
        for _ in range(count):
            yield line
    elif op == "add":
        line = f'@POST\t{HOST}\t/api/todos/\t{session.headers(True)}\t{{"text":"buy oat milk"}}\n'
        for _ in range(count):
            yield line
    elif op == "update":
        if update_ids is None:
            raise ValueError("update lines need update_ids")
        headers = session.headers(True)
        for _ in range(count):
            yield f'@PATCH\t{HOST}\t/api/todos/{next(update_ids)}\t{headers}\t{{"done":true,"vsn":1}}\n'
    else:
        raise ValueError(f"unknown operation {op!r}")


def check(url: str, session: PeerSession, todos: int, updater: PeerSession, update_id: int) -> None:
    """The peer answers list, create and update as the Bastion todo does (raises otherwise); ``updater`` owns
    todo ``update_id``, which ``session`` may not touch (404). Without a token, or with a forged one, 401."""
    auth = session.authorization
    status, _, body = _request(url, "GET", "/api/todos/", None, auth)
    listed = json.loads(body) if status == 200 else None
    if (status != 200 or not isinstance(listed, list) or len(listed) != todos
            or (listed and set(listed[0]) != {"id", "vsn", "text", "done"})):
        raise RuntimeError(f"peer list: {status} {body[:200]!r}")
    status, _, body = _request(url, "POST", "/api/todos/", b'{"text":"check"}', auth)
    if status != 201 or json.loads(body)["vsn"] != 1:
        raise RuntimeError(f"peer create: {status} {body[:200]!r}")
    for method, path, payload in (("GET", "/api/todos/", None), ("POST", "/api/todos/", b'{"text":"check"}'),
                                  ("PATCH", f"/api/todos/{update_id}", b'{"done":true,"vsn":1}')):
        status, _, body = _request(url, method, path, payload, {})
        if status != 401:
            raise RuntimeError(f"peer {method} {path} without a token answered {status}, not 401")
    forged = session.token[:-4] + ("AAAA" if not session.token.endswith("AAAA") else "BBBB")
    status, _, body = _request(url, "GET", "/api/todos/", None, {"Authorization": f"Bearer {forged}"})
    if status != 401:
        raise RuntimeError(f"peer list with a forged token answered {status}, not 401")
    status, _, body = _request(url, "PATCH", f"/api/todos/{update_id}", b'{"done":true,"vsn":1}', auth)
    if status != 404:
        raise RuntimeError(f"peer update of another user's todo answered {status}, not 404")
    auth = updater.authorization
    status, _, body = _request(url, "PATCH", f"/api/todos/{update_id}", b'{"done":true,"vsn":1}', auth)
    answer = json.loads(body) if status == 200 else {}
    if status != 200 or answer.get("vsn") != 2 or answer.get("done") is not True or answer.get("id") != update_id:
        raise RuntimeError(f"peer update: {status} {body[:200]!r}")
    status, _, body = _request(url, "PATCH", f"/api/todos/{update_id}", b'{"done":false,"vsn":1}', auth)
    if status != 409:
        raise RuntimeError(f"peer update of a stale version answered {status}, not 409")


def _replay(url: str, line: str) -> int:
    """Send one of :func:`lines`' request lines as replay.lua would; return the status."""
    method, host, target, header_text, body = line.rstrip("\n")[1:].split("\t", 4)
    headers = dict(part.split(":", 1) for part in header_text.split("|") if part)
    status, _, _ = _request(url, method, target, body.encode() or None, {"Host": host, **headers})
    return status


def main() -> int:
    why = available()
    if why:
        print(f"skip: {why}", file=sys.stderr)
        return 2
    password = "peer-" + os.urandom(8).hex()
    with tempfile.TemporaryDirectory(prefix="bench-fastapi-smoke-") as tmp:
        db = Path(tmp) / "peer.sqlite3"
        ids = fill(db, [("upd", 5), ("a10", 10), ("n10", 10)], password, REPO_ROOT)
        with Server(db, workers=2) as server:
            check(server.url, login(server.url, "a10", password), 10, login(server.url, "upd", password),
                  ids["upd"][1])
            update_ids = iter(range(ids["upd"][0], ids["upd"][1]))
            for op, user, ok in (("get_all", "n10", 200), ("add", "a10", 201), ("update", "upd", 200)):
                line = next(lines(login(server.url, user, password), op, 1, update_ids))
                status = _replay(server.url, line)
                if status != ok:
                    raise RuntimeError(f"peer {op} request line answered {status}, not {ok}:\n{server.log()[-2000:]}")
            print(f"OK: the FastAPI peer at {server.url} (gunicorn, 2 uvicorn workers) answers list, create, update, "
                  "stale update 409, another user's todo 404, no or forged token 401, and one request line per op")
    return 0


if __name__ == "__main__":
    sys.exit(main())
