"""A password change racing calls of the user's other session, on two real gunicorn workers.

Connections are pinned to workers (which worker holds a kept-alive
connection is read from /proc), so that ``change_password`` runs on one
worker while the other session's calls run, several at once, on the other.
Every call either runs before the change completes or is refused
(UnknownSession) and runs nothing; none sent after the change answered ever
runs with the old session. On SQLite, PostgreSQL and Redis: the storages
several workers share.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from kernel.client import Client, Response
from kernel.core.errors import InvalidCredential
from kernel.testing import GunicornServer

from .e2e_support import (
    DOMAIN,
    PASSWORD,
    USERNAME,
    children,
    connections_per_worker,
    freeze_call,
    sections,
    send_on,
    worker_serving,
)

pytestmark = pytest.mark.slow

ROUNDS = 4
CALLERS = 3  # threads calling with the other session, each on its own connection to the other worker
AFTER = 3  # calls each thread makes once the change has answered


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "redis"])
def server(request, tmp_path_factory) -> Iterator[GunicornServer]:
    """Bastion on 2 gunicorn workers sharing one storage."""
    if request.param == "sqlite":
        storage = f"sqlite:///{tmp_path_factory.mktemp('race')}/bastion.sqlite3"
    elif request.param == "postgresql":
        storage = request.getfixturevalue("postgres_server").create_database(f"race_{uuid.uuid4().hex[:10]}")
    else:
        storage = request.getfixturevalue("redis_server").url.rsplit("/", 1)[0] + "/5"
    with GunicornServer(sections(storage), workers=2, threads=4) as gunicorn:
        yield gunicorn


@dataclass
class Outcome:
    sent: float
    received: float
    text: str
    answer: Response
    signed: bool


def test_a_password_change_and_a_call_on_two_workers(server):
    workers = children(server.process.pid)
    assert len(workers) == 2, server.log()
    password = PASSWORD
    for round_ in range(ROUNDS):
        # The change on one worker, the calls on the other; the other way round at the next round.
        change_worker, call_worker = sorted(workers)[round_ % 2], sorted(workers)[1 - round_ % 2]
        password = race_once(server, workers, change_worker, call_worker, f"round {round_}", password)
    assert "Traceback" not in server.log()


def race_once(server: GunicornServer, workers: set[int], change_worker: int, call_worker: int, tag: str,
              password: str) -> str:
    """One session changes the password on ``change_worker`` while another calls on ``call_worker``; return
    the new password."""
    changer = Client(server.url, host=DOMAIN)
    changer.login(USERNAME, password)
    other = Client(server.url, host=DOMAIN)
    other.login(USERNAME, password)
    new_password = f"the password after {tag}"

    pinned = connections_per_worker(server.host, server.port, workers, each=CALLERS)
    change_conn, call_conns = pinned[change_worker][0], pinned[call_worker]
    outcomes: list[list[Outcome]] = [[] for _ in range(CALLERS)]
    first_success = [threading.Event() for _ in range(CALLERS)]
    changed_at: list[float] = []  # when the change's answer was received
    lock = threading.Lock()

    def call(i: int) -> None:
        after = n = 0
        while after < AFTER:
            text = f"{tag} caller {i} call {n}"
            n += 1
            request = freeze_call(other, "add", text)
            sent = time.monotonic()
            answer = send_on(call_conns[i], request)
            received = time.monotonic()
            outcomes[i].append(Outcome(sent, received, text, answer, request.answer_is_signed(answer)))
            if answer.status == 200:
                first_success[i].set()
            with lock:
                if changed_at and sent > changed_at[0]:
                    after += 1

    threads = [threading.Thread(target=call, args=(i,)) for i in range(CALLERS)]
    for thread in threads:
        thread.start()
    try:
        for event in first_success:  # every caller is calling before the change starts
            assert event.wait(30), "a caller never got through"
        assert worker_serving(change_conn, server.port, workers) == change_worker
        change = freeze_call(changer, "change_password", password, new_password)
        change_sent = time.monotonic()
        answer = send_on(change_conn, change)
        with lock:
            changed_at.append(time.monotonic())
        assert answer.status == 200 and answer.json() == {"result": True}, answer.body
        assert change.answer_is_signed(answer)
    finally:
        for thread in threads:
            thread.join(60)
    assert {worker_serving(conn, server.port, workers) for conn in call_conns} == {call_worker}

    ran, refused = set(), set()
    for calls in outcomes:
        for outcome in calls:
            status, body = outcome.answer.status, outcome.answer.json()
            if status == 200:
                assert outcome.signed, body
                # A call that ran was sent before the change answered: never after it, with the old session.
                assert outcome.sent < changed_at[0], (tag, outcome.text)
                ran.add(outcome.text)
            else:
                assert (status, body["exc"]) == (401, "UnknownSession"), body
                # Refused only once the change had begun.
                assert outcome.received > change_sent, (tag, outcome.text)
                refused.add(outcome.text)
    overlapping = [o for calls in outcomes for o in calls if o.sent < changed_at[0] and o.received > change_sent]
    print(f"{tag}: {len(ran)} ran, {len(refused)} refused, {len(overlapping)} overlapping the change "
          f"({sum(o.answer.status == 200 for o in overlapping)} of them ran)")
    # Every caller saw the change, and each of its calls after it was refused.
    for calls in outcomes:
        assert calls[-1].answer.status == 401
        assert sum(o.sent > changed_at[0] for o in calls) >= AFTER
    # What ran is stored; what was refused ran nothing.
    stored = {todo["text"] for todo in changer.call("get_all") if todo["text"].startswith(f"{tag} ")}
    assert stored == ran and not (stored & refused)

    # The calling session stays, on the other worker too; the old password is gone, the new one works.
    assert send_on(call_conns[0], freeze_call(changer, "sessions")).status == 200
    assert [s["current"] for s in changer.call("sessions")] == [True]
    with pytest.raises(InvalidCredential):
        Client(server.url, host=DOMAIN).login(USERNAME, password)
    Client(server.url, host=DOMAIN).login(USERNAME, new_password)
    for conns in pinned.values():
        for conn in conns:
            conn.close()
    return new_password
