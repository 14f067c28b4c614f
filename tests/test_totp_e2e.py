"""Two-step sign-in behind 4 real gunicorn workers, on SQLite, PostgreSQL and Redis: enrolment, a login with a
code, a code replayed in parallel, a recovery code used in parallel, and 40 wrong codes at once against the
account lock.

The server runs on the wall clock, so the codes are computed from it when they are sent: the confirming
code is the current step's, a login's the next step's (accepted within the window whichever side of a step
boundary the server reads its clock), so the two never share a step. Nothing sleeps or asserts on timing.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pyotp
import pytest

from kernel.client import Client
from kernel.testing import GunicornServer

from .e2e_support import DOMAIN, PASSWORD, cheap_hash, post_all_at_once, sections, storage_of

pytestmark = pytest.mark.slow

PARALLEL = 40
USERS = ("rita", "rob", "lou")


@pytest.fixture(scope="module")
def served(request, tmp_path_factory) -> Iterator[GunicornServer]:
    """4 workers × 4 threads, the default limits (bans at weight 10, locks after 5 failures), three users."""
    name = request.param
    storage = storage_of(request, name, tmp_path_factory, "totp", 7)
    config = sections(storage, auth={"abuse_max": 10, "account_max_failures": 5})
    config["users"].update({f"{user}@{DOMAIN}": cheap_hash() for user in USERS})
    if name == "redis":
        config["storage_redis"] = {"key_prefix": f"totp{uuid.uuid4().hex[:8]}"}
    with GunicornServer(config, workers=4, threads=4) as server:
        yield server


def enrol(server: GunicornServer, username: str) -> tuple[str, list[str]]:
    """Enrol a user through the services; return the secret and the recovery codes."""
    client = Client(server.url, host=DOMAIN)
    client.login(username, PASSWORD)
    secret = client.call("totp_begin")["secret"]
    recovery = client.call("totp_confirm", pyotp.TOTP(secret).at(time.time()))
    assert client.call("totp_status")["enabled"] is True
    client.logout()
    return secret, recovery


def next_code(secret: str) -> str:
    return pyotp.TOTP(secret).at(time.time() + 30)


def wrong_code(secret: str) -> str:
    now = time.time()
    near = {pyotp.TOTP(secret).at(now + 30 * step) for step in range(-3, 4)}
    return next(code for code in ("123456", "654321", "111111", "222222", "333333", "444444", "555555")
                if code not in near)


def login(username: str, password: str, code: str | None, source: str) -> tuple[str, bytes, dict[str, str], str]:
    body = {"username": username, "password": password, **({"code": code} if code is not None else {})}
    return "/auth/login", json.dumps(body).encode(), {"Host": DOMAIN, "Content-Type": "application/json"}, source


def outcome(answer) -> str:
    return "ok" if answer.status == 200 else answer.json()["exc"]


CONFIGURATIONS = ["sqlite", "postgresql", "redis"]


@pytest.mark.parametrize("served", CONFIGURATIONS, indirect=True, scope="module")
def test_a_code_logs_in_once_however_many_logins_send_it_at_once(served):
    secret, _ = enrol(served, "rita")
    # The password alone: 401 SecondFactorRequired, no session.
    alone = post_all_at_once(served.host, served.port, [login("rita", PASSWORD, None, "127.0.4.1")])[0]
    assert (alone.status, alone.json()["exc"]) == (401, "SecondFactorRequired") and "sid" not in alone.json()
    code = next_code(secret)
    answers = post_all_at_once(served.host, served.port,
                               [login("rita", PASSWORD, code, f"127.0.4.{i + 2}") for i in range(4)])
    assert sorted(outcome(a) for a in answers) == ["InvalidCredential"] * 3 + ["ok"]
    # The session works.
    winner = next(a for a in answers if a.status == 200)
    assert winner.json()["user"] == {"username": "rita", "domain": DOMAIN}
    # And the code stays used.
    again = post_all_at_once(served.host, served.port, [login("rita", PASSWORD, code, "127.0.4.9")])[0]
    assert outcome(again) == "InvalidCredential"


@pytest.mark.parametrize("served", CONFIGURATIONS, indirect=True, scope="module")
def test_a_recovery_code_logs_in_once_however_many_logins_send_it_at_once(served):
    _, recovery = enrol(served, "rob")
    answers = post_all_at_once(served.host, served.port,
                               [login("rob", PASSWORD, recovery[0], f"127.0.5.{i + 1}") for i in range(4)])
    assert sorted(outcome(a) for a in answers) == ["InvalidCredential"] * 3 + ["ok"]
    client = Client(served.url, host=DOMAIN)
    client.login("rob", PASSWORD, code=recovery[1])
    assert client.call("totp_status")["recovery_codes"] == 8
    client.logout()


@pytest.mark.parametrize("served", CONFIGURATIONS, indirect=True, scope="module")
def test_parallel_wrong_codes_for_one_account_check_at_most_the_limit(served):
    """40 right passwords with wrong codes at once from 40 origins: at most 5 are told wrong, the rest are
    AccountLocked, exactly as 40 wrong passwords are."""
    secret, _ = enrol(served, "lou")
    wrong = wrong_code(secret)
    answers = post_all_at_once(served.host, served.port,
                               [login("lou", PASSWORD, wrong, f"127.0.6.{i + 1}") for i in range(PARALLEL)])
    counts = Counter(outcome(a) for a in answers)
    assert set(counts) <= {"InvalidCredential", "AccountLocked"} and counts["InvalidCredential"] <= 5, counts
    assert counts["AccountLocked"] >= PARALLEL - 5, counts
    # Locked now, for the right password and code too, from anywhere.
    late = post_all_at_once(served.host, served.port, [login("lou", PASSWORD, next_code(secret), "127.0.7.1")])
    assert outcome(late[0]) == "AccountLocked"
