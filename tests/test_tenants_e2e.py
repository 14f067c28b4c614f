"""Settings per tenant behind 4 real gunicorn workers, on SQLite, PostgreSQL and Redis.

Two tenants of one server, ``alpha.localhost`` (``[auth:alpha.localhost]``) and ``beta.localhost`` (through the
wildcard ``[auth:*.localhost]``), with different ``idle_timeout``, ``max_active_sessions`` and ``abuse_max``, and
``localhost`` on ``[auth]``: each behaves by its own settings, whichever worker answers, and each limit holds under
concurrent requests as ``[auth]``'s does. Each test comes from a loopback address of its own, so that no test's
refusals weigh on another's origin, in whatever order they run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from kernel.client import Client
from kernel.core.errors import ExpiredSession, MaxActiveSessions
from kernel.testing import GunicornServer

from .e2e_support import PASSWORD, cheap_hash, post_all_at_once, raw_request, sections, storage_of

pytestmark = pytest.mark.slow

ALPHA, BETA, BASE = "alpha.localhost", "beta.localhost", "localhost"
#: The tenants' limits: alpha's section names every one; beta has the wildcard's; localhost has [auth]'s
#: (the deployment's: abuse_max 0, since the other end-to-end tests' requests all come from 127.0.0.1).
LIMITS = {
    ALPHA: {"idle_timeout": 2, "max_active_sessions": 1, "abuse_max": 3},
    BETA: {"idle_timeout": 600, "max_active_sessions": 2, "abuse_max": 5},
    BASE: {"idle_timeout": 1800, "max_active_sessions": 0, "abuse_max": 0},
}
USERS = ("alice", "carol", "dave")
CONFIGURATIONS = ["sqlite", "postgresql", "redis"]
#: A Redis DB number of this module's own.
REDIS_DB = 7


@pytest.fixture(scope="module")
def tenants_server(request, tmp_path_factory) -> Iterator[GunicornServer]:
    """Bastion on 4 gunicorn workers × 4 threads over the storage named by the parameter, with the tenants."""
    name = request.param
    storage = storage_of(request, name, tmp_path_factory, "tenants", REDIS_DB)
    config = sections(storage, users={f"{user}@{host}": cheap_hash() for user in USERS for host in LIMITS})
    config["auth:*.localhost"] = dict(LIMITS[BETA])
    config["auth:alpha.localhost"] = dict(LIMITS[ALPHA])
    with GunicornServer(config, workers=4, threads=4) as server:
        yield server


def each():
    return pytest.mark.parametrize("tenants_server", CONFIGURATIONS, indirect=True, scope="module")


def client(server: GunicornServer, host: str, origin: str) -> Client:
    return Client(server.url, host=host, source_address=origin)


def login_answer(server: GunicornServer, host: str, user: str, origin: str) -> dict:
    """The raw answer of one login (its ``expires`` and ``server_time``)."""
    body = json.dumps({"username": user, "password": PASSWORD}).encode()
    answer = raw_request(server.host, server.port, "POST", "/auth/login", body,
                         {"Host": host, "Content-Type": "application/json"})
    assert answer.status == 200, answer.body
    return answer.json()


@each()
def test_each_tenant_ends_sessions_after_its_own_idle_timeout(tenants_server):
    origin = "127.0.0.11"
    for host, limits in LIMITS.items():
        answer = login_answer(tenants_server, host, "alice", origin)
        assert limits["idle_timeout"] - 1 < answer["expires"] - answer["server_time"] <= limits["idle_timeout"]
    clients = {host: client(tenants_server, host, origin) for host in LIMITS}
    for c in clients.values():
        c.login("alice", PASSWORD, force=True)  # alpha allows one session: this one ends the raw login's
    time.sleep(LIMITS[ALPHA]["idle_timeout"] + 1)  # a lower bound: alpha's session has ended, whatever the load
    with pytest.raises(ExpiredSession):
        clients[ALPHA].call("echo", "x")
    for host in (BETA, BASE):
        assert clients[host].call("sessions")  # alive: a list of the user's sessions


@each()
def test_each_tenant_has_its_own_maximum_of_sessions_one_login_at_a_time_and_all_at_once(tenants_server):
    origin = "127.0.0.12"

    def sequential(host: str) -> int:
        opened = 0
        for _ in range(3):
            try:
                client(tenants_server, host, origin).login("carol", PASSWORD)
            except MaxActiveSessions:
                return opened
            opened += 1
        return opened

    assert [sequential(host) for host in LIMITS] == [1, 2, 3]
    # 8 logins of one user at once, in a tenant where it has no session: at most its maximum keep theirs
    body = json.dumps({"username": "dave", "password": PASSWORD}).encode()
    for host in (ALPHA, BETA):
        answers = post_all_at_once(tenants_server.host, tenants_server.port, [
            ("/auth/login", body, {"Host": host, "Content-Type": "application/json"}, origin)] * 8)
        statuses = sorted(answer.status for answer in answers)
        # 409 MaxActiveSessions; 429 for the logins beyond abuse_max running at once from one origin
        assert set(statuses) <= {200, 409, 429}, statuses
        assert statuses.count(200) <= LIMITS[host]["max_active_sessions"], (host, statuses)


@each()
def test_each_tenant_bans_an_origin_at_its_own_abuse_max(tenants_server):
    origin = "127.0.0.13"

    def unsigned(host: str) -> int:
        conn_answer = _post(tenants_server, host, "/api/echo", b"", origin)
        return conn_answer.status

    for host in (ALPHA, BETA):
        maximum = LIMITS[host]["abuse_max"]
        assert [unsigned(host) for _ in range(maximum)] == [401] * maximum  # the last one bans
        assert unsigned(host) == 429, host
    assert [unsigned(BASE) for _ in range(12)] == [401] * 12  # [auth]: abuse_max 0, never


@each()
def test_concurrent_failed_logins_check_at_most_the_tenants_abuse_max_passwords(tenants_server):
    """Every login takes its place in its origin's window atomically: at most ``abuse_max`` passwords are checked."""
    for host, origin in ((ALPHA, "127.0.0.14"), (BETA, "127.0.0.15")):
        requests = [("/auth/login", json.dumps({"username": f"nobody{i}", "password": "wrong password"}).encode(),
                     {"Host": host, "Content-Type": "application/json"}, origin) for i in range(12)]
        statuses = sorted(answer.status for answer in post_all_at_once(tenants_server.host, tenants_server.port,
                                                                       requests))
        assert set(statuses) <= {401, 429}, statuses
        assert 1 <= statuses.count(401) <= LIMITS[host]["abuse_max"], (host, statuses)


def _post(server: GunicornServer, host: str, path: str, body: bytes, origin: str):
    import http.client

    from kernel.client import Response

    conn = http.client.HTTPConnection(server.host, server.port, timeout=30, source_address=(origin, 0))
    try:
        conn.request("POST", path, body=body or None, headers={"Host": host})
        answer = conn.getresponse()
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read())
    finally:
        conn.close()
