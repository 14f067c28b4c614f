"""The Django + DRF peer (``bench/peers/django_todo``): fill, serve, log in, build the requests, check it.

Its users are the bench's domains (``n10``, ``a10``, ``upd``, ``n1000``, …), each owning the same todos
as the Bastion domain of that name; every request carries the session cookie and the CSRF token that one
login gave. Todos are written by ``bulk_create`` before gunicorn starts (the same worker configuration as
Bastion's SQLite case: the packaged gunicorn settings, 2 workers × 4 threads).
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path

APP = "bench.peers.django_todo.wsgi:application"
HOST = "peer.localhost"


def available() -> str | None:
    """None when the peer can run; else why not."""
    missing = [m for m in ("django", "rest_framework") if importlib.util.find_spec(m) is None]
    if missing:
        return f"{', '.join(missing)} not installed (`pip install -e '.[bench]'`, or `make bench`)"
    return None


def environment(db: Path) -> dict[str, str]:
    return {"DJANGO_SETTINGS_MODULE": "bench.peers.django_todo.settings", "BENCH_PEER_DB": str(db)}


def fill(db: Path, plan: list[tuple[str, int]], password: str, repo_root: Path) -> dict[str, list[int]]:
    """Create the schema, one user per plan entry and its todos; return each user's ``[first, last]`` id."""
    plan_path = db.with_suffix(".plan.json")
    plan_path.write_text(json.dumps(plan))
    out = subprocess.run([sys.executable, "-m", "bench.peers.django_todo.setup", str(db), str(plan_path), password],
                         cwd=repo_root, capture_output=True, text=True, check=False,
                         env={**_os_environ(), "PYTHONPATH": str(repo_root)})
    if out.returncode:
        raise RuntimeError(f"the Django peer's set-up failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _os_environ() -> dict[str, str]:
    import os

    return dict(os.environ)


@dataclass
class PeerSession:
    """The session cookie and CSRF token of one login."""

    cookie: str
    csrftoken: str

    def headers(self, unsafe: bool) -> str:
        """The request headers, in replay.lua's ``Name:value|Name:value`` form."""
        parts = [f"Cookie:{self.cookie}"]
        if unsafe:
            parts.append(f"X-CSRFToken:{self.csrftoken}")
        return "|".join(parts)


def _request(url: str, method: str, path: str, body: bytes | None, headers: dict[str, str]):
    host_port = url.split("://", 1)[1]
    connection = http.client.HTTPConnection(host_port, timeout=60)
    try:
        connection.request(method, path, body=body, headers={"Host": HOST, "Content-Type": "application/json",
                                                              **headers})
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


def _cookies(headers, jar: SimpleCookie) -> None:
    for name, value in headers:
        if name.lower() == "set-cookie":
            jar.load(value)


def login(url: str, username: str, password: str) -> PeerSession:
    """GET the CSRF cookie, then log in with it (Django rotates the token at login: the new one is kept)."""
    jar: SimpleCookie = SimpleCookie()
    status, headers, _ = _request(url, "GET", "/api/csrf/", None, {})
    _cookies(headers, jar)
    if status != 200 or "csrftoken" not in jar:
        raise RuntimeError(f"the Django peer gave no CSRF cookie ({status})")
    body = json.dumps({"username": username, "password": password}).encode()
    status, headers, answer = _request(url, "POST", "/api/login/", body,
                                       {"Cookie": f"csrftoken={jar['csrftoken'].value}",
                                        "X-CSRFToken": jar["csrftoken"].value})
    _cookies(headers, jar)
    if status != 200 or "sessionid" not in jar:
        raise RuntimeError(f"the Django peer's login answered {status}: {answer[:200]!r}")
    return PeerSession(cookie=f"csrftoken={jar['csrftoken'].value}; sessionid={jar['sessionid'].value}",
                       csrftoken=jar["csrftoken"].value)


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
    else:
        headers = session.headers(True)
        for _ in range(count):
            yield f'@PATCH\t{HOST}\t/api/todos/{next(update_ids)}/\t{headers}\t{{"done":true,"vsn":1}}\n'


def check(url: str, session: PeerSession, todos: int, updater: PeerSession, update_id: int) -> None:
    """The peer answers list, create and update as the Bastion todo does (raises otherwise); ``updater`` owns
    todo ``update_id``, which ``session`` may not touch (404)."""
    cookie = {"Cookie": session.cookie, "X-CSRFToken": session.csrftoken}
    status, _, body = _request(url, "GET", "/api/todos/", None, cookie)
    listed = json.loads(body)
    if status != 200 or len(listed) != todos or set(listed[0]) != {"id", "vsn", "text", "done"}:
        raise RuntimeError(f"peer list: {status} {body[:200]!r}")
    status, _, body = _request(url, "POST", "/api/todos/", b'{"text":"check"}', cookie)
    if status != 201 or json.loads(body)["vsn"] != 1:
        raise RuntimeError(f"peer create: {status} {body[:200]!r}")
    status, _, body = _request(url, "POST", "/api/todos/", b'{"text":"check"}', {"Cookie": session.cookie})
    if status != 403:
        raise RuntimeError(f"peer create without the CSRF token answered {status}, not 403")
    status, _, body = _request(url, "PATCH", f"/api/todos/{update_id}/", b'{"done":true,"vsn":1}', cookie)
    if status != 404:
        raise RuntimeError(f"peer update of another user's todo answered {status}, not 404")
    cookie = {"Cookie": updater.cookie, "X-CSRFToken": updater.csrftoken}
    status, _, body = _request(url, "PATCH", f"/api/todos/{update_id}/", b'{"done":true,"vsn":1}', cookie)
    if status != 200 or json.loads(body)["vsn"] != 2:
        raise RuntimeError(f"peer update: {status} {body[:200]!r}")
    status, _, body = _request(url, "PATCH", f"/api/todos/{update_id}/", b'{"done":false,"vsn":1}', cookie)
    if status != 409:
        raise RuntimeError(f"peer update of a stale version answered {status}, not 409")
