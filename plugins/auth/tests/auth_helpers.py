"""Helpers of the auth plugin's tests (imported by conftest.py and the test modules).

Every app runs on the ``fake_clock`` fixture (kernel.testing), so expiry, bans
and locks move with ``fake_clock.advance`` and nothing sleeps. Passwords are
hashed with cheap argon2id parameters except where the real defaults are the
point of the test.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import falcon.testing
from passlib.hash import argon2

from kernel import Config, VersionConflict, current, hookimpl, service
from kernel.testing import (
    Client,
    authorization,
    get_plugin_manager,
    macs_equal,
    new_nonce,
    parse_server_authorization,
    request_mac,
    response_mac,
)

DATA = Path(__file__).parent / "data"
VECTORS = json.loads((DATA / "protocol-vectors.json").read_text(encoding="utf-8"))["vectors"]

#: Cheap argon2id for tests; the defaults are tested on their own.
CHEAP_AUTH = {"argon2_memory_cost": 64, "argon2_time_cost": 1}
PASSWORD = "correct horse battery"


def cheap_hash(password: str, memory_cost: int = 64, rounds: int = 1) -> str:
    """An argon2id hash with the given (cheap) parameters."""
    return argon2.using(type="ID", memory_cost=memory_cost, rounds=rounds).hash(password)


ALICE_HASH = cheap_hash(PASSWORD)


# -- services the signed calls reach -----------------------------------------

@service
def echo(x: str, n: int = 1) -> dict:
    """Return its arguments, the caller and the domain."""
    return {"x": x, "n": n, "user": current().user, "domain": current().domain}


@service
def boom() -> None:
    """Fail unexpectedly (500)."""
    raise RuntimeError("secret detail that must not leak")


@service
def whoami() -> dict:
    """The origin and scheme the server resolved for this call."""
    return {"origin": current().origin, "scheme": current().scheme}


@service("add")
def vector_add(text: str) -> dict:
    """The todo of the first protocol vector."""
    return {"id": "3f2c9a", "vsn": 1, "text": text, "done": False}


@service("get_all")
def vector_get_all() -> list:
    """The empty list of the second vector."""
    return []


@service("update")
def vector_update(id: str, vsn: int, text=None, done=None) -> dict:
    """The version conflict of the third vector."""
    raise VersionConflict("record changed")


class ServicesPlugin:
    """Registers the test services."""

    @hookimpl
    def bastion_services(self):
        return [echo, boom, whoami, vector_add, vector_get_all, vector_update]


class DenyPlugin:
    """Denies every service whose name starts with ``secret`` (403 Forbidden)."""

    @hookimpl
    def bastion_has_permission(self, session, service):
        return not service.startswith("secret")


class SharedDriverPlugin:
    """Serves ``shared://`` with one ``mem://`` driver, so that several runtimes share a store."""

    def __init__(self, clock):
        # The storage_mem plugin opens the driver, as it would for a runtime on mem://.
        pm = get_plugin_manager(only=["storage_mem"], trace=False)
        self.driver = pm.hook.bastion_storage_driver(url="mem://", settings=None, config=Config.from_dict({}), clock=clock)

    @hookimpl
    def bastion_storage_driver(self, url):
        return self.driver if url.startswith("shared://") else None



def send(app, path: str, body: bytes = b"", headers: Mapping[str, str] | None = None, *, host: str = "localhost",
         remote_addr: str = "127.0.0.1", method: str = "POST", json_type: bool = True, **kwargs):
    """One raw request through falcon.testing; JSON content type when there is a body."""
    # a list of pairs keeps repeated headers (falcon.testing joins them with commas, as WSGI servers do)
    all_headers = list(headers.items() if isinstance(headers, Mapping) else headers or [])
    if body and json_type and "content-type" not in {name.lower() for name, _ in all_headers}:
        all_headers.append(("Content-Type", "application/json"))
    return falcon.testing.simulate_request(app, method, path, body=body, headers=all_headers, host=host,
                                           remote_addr=remote_addr, **kwargs)


def sign(client: Client, path: str, body: bytes = b"", *, ts: str | None = None, nonce: str | None = None,
         domain: str | None = None, sid: str | None = None) -> tuple[dict[str, str], str]:
    """The Authorization header of a call by a logged-in client; return (headers, nonce)."""
    ts = ts or str(int(client.clock() + client.offset))
    nonce = nonce or new_nonce()
    mac = request_mac(client.session.key, ts, nonce, path, domain or client.domain, body)
    return {"Authorization": authorization(sid or client.session.sid, ts, nonce, mac)}, nonce


def error_of(result) -> str:
    """The ``exc`` of an answer."""
    return result.json["exc"]


def login_body(username: str = "alice", password: str = PASSWORD, **extra) -> bytes:
    """A login body."""
    return json.dumps({"username": username, "password": password, **extra}).encode()


def auth_of(app):
    """The auth plugin's per-runtime object."""
    from bastion_auth.plugin import get_auth

    return get_auth(app.runtime)


def assert_error(result, status: int, exc: str) -> dict:
    """Check a docs/protocol.md section 2 answer; return its body."""
    body = result.json
    assert (result.status_code, body.get("exc")) == (status, exc), body
    assert isinstance(body["err"], list) and all(isinstance(m, str) for m in body["err"])
    return body


def is_signed(result, key: bytes, nonce: str) -> bool:
    """Whether a falcon.testing result carries the right Server-Authorization."""
    mac = parse_server_authorization(result.headers.get("Server-Authorization"))
    return mac is not None and macs_equal(mac, response_mac(key, nonce, result.status_code, result.content))
