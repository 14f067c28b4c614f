"""Every storage driver behind 4 real gunicorn workers: racing writers, a replayed call, a backend outage.

Configurations: SQLite (a file), PostgreSQL, Redis alone, PostgreSQL for
records with Redis for state (sessions, nonces, counters), and a Redis
Cluster of 3 masters with a replica each. Each gets its own database, Redis DB
number or key prefix, one gunicorn shared by its tests, and one PostgreSQL, one
Redis server and one Redis Cluster serve the whole run.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
import redis

from kernel.client import Client, Response
from kernel.core import sealing, signing
from kernel.core.errors import VersionConflict
from kernel.testing import GunicornServer, PostgresServer, RedisServer, launched

from .e2e_support import (
    DOMAIN,
    PASSWORD,
    USERNAME,
    Deployment,
    Repeating,
    SignedRequest,
    children,
    freeze_call,
    in_threads,
    poll_until,
    post_all_at_once,
    raw_request,
    sections,
    send_all_at_once,
    timed,
)

pytestmark = pytest.mark.slow

CONFIGURATIONS = ["sqlite", "postgresql", "redis", "mixed", "cluster"]
#: The configurations with a backend server that can go down (a SQLite file has none).
WITH_SERVER = ["postgresql", "redis", "mixed"]
#: Redis DB numbers, so that the Redis-only and the mixed deployment never see each other's keys.
REDIS_DB = {"redis": 1, "mixed": 2}
#: The Cluster's settings: every write acknowledged by a replica (docs/storage-redis.md), a key prefix per deployment.
CLUSTER = {"wait_replicas": 1, "key_prefix": "e2e"}

WRITERS = 8
ADDS_EACH = 25
INCREMENTS_EACH = 10
REPLAYS = 50

#: Timings and conflict counts per configuration, printed at the end of each deployment (pytest -s).
REPORT: dict[str, dict[str, object]] = {}


# -- servers --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def e2e_postgres() -> Iterator[object]:
    """One private PostgreSQL server on 127.0.0.1 for the whole run; each deployment has its own database."""
    with launched(PostgresServer(), "PostgreSQL for the end-to-end tests") as server:
        yield server


@pytest.fixture(scope="session")
def e2e_redis() -> Iterator[object]:
    """One redis-server on 127.0.0.1 for the whole run; each deployment uses its own DB number."""
    with launched(RedisServer(), "redis-server for the end-to-end tests") as server:
        yield server


def _redis_url(server, db: int) -> str:
    return server.url.rsplit("/", 1)[0] + f"/{db}"


def _redis_outage(server):
    """Crash Redis and bring it back with the data it had (it persists nothing by itself)."""

    def stop() -> None:
        # A crash of a Redis without persistence would also forget every session and record; this
        # models a Redis that keeps its data across restarts: a snapshot right before the crash.
        client = redis.Redis.from_url(server.url)
        try:
            client.save()
        finally:
            client.close()
        server.kill()

    return stop, server.start


@pytest.fixture(scope="module")
def deployment(request, tmp_path_factory) -> Iterator[Deployment]:
    """Bastion on 4 gunicorn workers × 4 threads over the storage configuration named by the parameter."""
    name = request.param
    stop = start = None
    if name == "sqlite":
        folder = tmp_path_factory.mktemp("sqlite")
        config = sections(f"sqlite:///{folder}/bastion.sqlite3")
    elif name == "postgresql":
        postgres = request.getfixturevalue("e2e_postgres")
        config = sections(postgres.create_database(f"e2e_{uuid.uuid4().hex[:12]}"))
        stop, start = postgres.stop, postgres.start
    elif name == "redis":
        server = request.getfixturevalue("e2e_redis")
        config = sections(_redis_url(server, REDIS_DB[name]))
        stop, start = _redis_outage(server)
    elif name == "mixed":
        postgres = request.getfixturevalue("e2e_postgres")
        server = request.getfixturevalue("e2e_redis")
        config = sections(postgres.create_database(f"e2e_{uuid.uuid4().hex[:12]}"),
                          state=_redis_url(server, REDIS_DB[name]))
        stop, start = _redis_outage(server)
    elif name == "cluster":
        config = sections(request.getfixturevalue("redis_cluster").url, storage_redis=CLUSTER)
    else:  # pragma: no cover
        raise ValueError(name)
    report = REPORT.setdefault(name, {})
    metrics = tmp_path_factory.mktemp(f"metrics-{name}")
    with timed(report, "gunicorn start s"):
        gunicorn = GunicornServer(config, workers=4, threads=4, env={"PROMETHEUS_MULTIPROC_DIR": str(metrics)})
        gunicorn.start()
    try:
        every_worker_serving(gunicorn, metrics)
        yield Deployment(name, gunicorn, stop, start, report)
    finally:
        gunicorn.close()
        print(f"\n[{name}] {report}")


def every_worker_serving(server: GunicornServer, metrics) -> None:
    """Probe on new connections until each of the 4 workers has answered one (each counts in files of its own pid).

    A worker builds its application after gunicorn starts it: until then the others answer. Whichever test runs
    first must find every worker built, or a backend stopped under a worker still building leaves that worker
    answering 503 until its next attempt (kernel/server/starting.py), which is another test's subject.
    """
    def counted() -> set[int]:
        return {int(path.stem.rsplit("_", 1)[1]) for path in metrics.glob("counter_*.db")}

    poll_until(lambda: len(children(server.process.pid)) == 4 and server_answers(server)
               and counted() >= children(server.process.pid), 60, "every worker answered a probe")


def server_answers(server: GunicornServer) -> bool:
    return raw_request(server.host, server.port, "GET", "/healthz", b"", {"Host": "localhost"}).status == 200


def each(configurations: list[str]):
    """Run a test once per configuration, sharing one deployment per configuration across the module."""
    return pytest.mark.parametrize("deployment", configurations, indirect=True, scope="module")


# -- answers --------------------------------------------------------------------------------------


def _body(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


def assert_unavailable(answer: Response, what: str) -> None:
    """A 503 ServiceUnavailable of docs/protocol.md section 2: retry_after in body and header, no cause."""
    assert answer.status == 503, f"{what}: HTTP {answer.status} {answer.body[:300]!r}"
    body = answer.json()
    assert body["exc"] == "ServiceUnavailable", f"{what}: {body}"
    assert isinstance(body["retry_after"], int) and body["retry_after"] >= 1, f"{what}: {body}"
    assert answer.headers.get("retry-after") == str(body["retry_after"]), f"{what}: {answer.headers}"
    # /healthz says which part failed, "records" and "state", each "ok" or "unavailable"; nothing else.
    assert set(body) - {"records", "state"} == {"exc", "err", "retry_after"}, f"{what}: {body}"
    assert {body.get(part, "unavailable") for part in ("records", "state")} <= {"ok", "unavailable"}, f"{what}: {body}"


def todo_by_id(todos: list[dict], todo_id: str) -> dict:
    matches = [todo for todo in todos if todo["id"] == todo_id]
    assert len(matches) == 1, f"{todo_id}: {len(matches)} stored copies"
    return matches[0]


# -- 1. racing writers ----------------------------------------------------------------------------



@each(CONFIGURATIONS)
def test_workers_starting_together_create_each_user_once(deployment):
    """4 workers ran the [users] bootstrap at the same moment: one record, every worker alive."""
    from kernel.core.config import Config
    from kernel.core.runtime import Runtime

    assert len(deployment.worker_pids()) == 4, deployment.server.log()
    runtime = Runtime(Config.from_dict(deployment.server.sections))
    try:
        users = runtime.records.select("localhost", "User")
    finally:
        runtime.close()
    # Other tests of the module share the deployment and may add users (carol): alice, the bootstrap's, once.
    assert [u.id for u in users].count("alice") == 1, [u.id for u in users]
    # A worker's bootstrap that lost a race would say so outside a call line (other tests' calls may answer 409).
    log = deployment.server.log()
    assert [line for line in log.splitlines() if "VersionConflict" in line and "event=call" not in line] == []
    assert "Traceback" not in log


@each(CONFIGURATIONS)
def test_two_adduser_commands_at_once_create_one_user(deployment, tmp_path):
    import subprocess
    import sys

    from kernel.testing import write_config

    config = write_config(deployment.server.sections, tmp_path)
    command = [sys.executable, "-m", "kernel.cli", "--config", str(config), "adduser", "carol",
               "--domain", "localhost", "--password-stdin"]
    runs = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    outcomes = [run.communicate("carol's password\n", timeout=120) + (run.returncode,) for run in runs]
    codes = sorted(code for _, _, code in outcomes)
    assert codes == [0, 1], outcomes
    assert any("already exists" in err for _, err, code in outcomes if code == 1), outcomes
    listing = subprocess.run([sys.executable, "-m", "kernel.cli", "--config", str(config), "users",
                              "--domain", "localhost"], capture_output=True, text=True, timeout=120)
    assert [line.partition(":")[0] for line in listing.stdout.splitlines()].count("carol@localhost") == 1, listing


@each(CONFIGURATIONS)
def test_racing_writers_lose_no_add_and_no_increment(deployment):
    report = deployment.notes
    tag = uuid.uuid4().hex
    with timed(report, "8 logins s"):
        # One after the other: an account has at most account_max_failures (5) logins in flight at once.
        clients = [deployment.client() for _ in range(WRITERS)]

    def add_many(i: int) -> list[str]:
        return [clients[i].call("add", f"{tag} writer {i} todo {n}")["id"] for n in range(ADDS_EACH)]

    with timed(report, "200 adds s"):
        acknowledged = in_threads(WRITERS, add_many)

    stored = clients[0].call("get_all")
    ours = [todo for todo in stored if todo["text"].startswith(tag)]
    assert sorted(todo["id"] for todo in ours) == sorted(i for ids in acknowledged for i in ids)
    assert all(todo["vsn"] == 1 and todo["done"] is False for todo in ours)
    order = [todo["id"] for todo in ours]
    for ids in acknowledged:  # each writer's adds were sequential: get_all keeps their order
        assert [i for i in order if i in set(ids)] == ids

    counter = clients[0].call("add", "0")
    everyone_has_read = threading.Barrier(WRITERS, timeout=60)

    def increment(i: int) -> int:
        client, conflicts, done = clients[i], 0, 0
        while done < INCREMENTS_EACH:
            todo = todo_by_id(client.call("get_all"), counter["id"])
            if done == 0 and conflicts == 0:
                # Every writer holds the same vsn before anyone writes: 7 of 8 must conflict.
                everyone_has_read.wait()
            try:
                result = client.call("update", todo["id"], todo["vsn"], text=str(int(todo["text"]) + 1))
            except VersionConflict:
                conflicts += 1
                continue
            assert result["vsn"] == todo["vsn"] + 1 and result["text"] == str(int(todo["text"]) + 1)
            done += 1
        return conflicts

    with timed(report, "80 increments s"):
        conflicts = in_threads(WRITERS, increment)
    report["409s"] = sum(conflicts)

    final = todo_by_id(clients[0].call("get_all"), counter["id"])
    increments = WRITERS * INCREMENTS_EACH
    assert final["text"] == str(increments)
    assert final["vsn"] == increments + 1
    assert sum(conflicts) >= WRITERS - 1
    for client in clients:
        client.logout()


# -- 2. one signed call, replayed -----------------------------------------------------------------


@each(CONFIGURATIONS)
def test_a_call_sent_fifty_times_at_once_runs_once(deployment):
    client = deployment.client()
    text = f"replayed {uuid.uuid4().hex}"
    request = freeze_call(client, "add", text)

    with timed(deployment.notes, "50 replays s"):
        answers = send_all_at_once(deployment.server.host, deployment.server.port, request, REPLAYS)

    assert Counter(answer.status for answer in answers) == {200: 1, 401: REPLAYS - 1}
    assert {answer.json().get("exc") for answer in answers if answer.status == 401} == {"ReplayedCall"}
    # The MAC verified for all 50, so every answer, refusals included, is signed (docs/protocol.md 4).
    assert all(request.answer_is_signed(answer) for answer in answers)
    created = next(answer for answer in answers if answer.status == 200).json()["result"]
    assert [todo for todo in client.call("get_all") if todo["text"] == text] == [created]
    client.logout()


@each(CONFIGURATIONS)
def test_a_sealed_call_of_a_version_2_session_sent_fifty_times_at_once_runs_once(deployment):
    """Protocol version 2 on every driver: the session's agreed keys stored and read back by 4 workers, a sealed call
    sent 50 times at once runs once, and every answer is sealed and signed with the session's answer keys."""
    client = Client(deployment.server.url, host=DOMAIN, encrypt=True)
    client.login(USERNAME, PASSWORD)
    assert client.session is not None and client.session.keys is not None
    text = f"sealed {uuid.uuid4().hex}"
    path, ts, nonce = "/api/add", str(int(client.clock() + client.offset)), signing.new_nonce()
    envelope = sealing.seal(client.session.keys.call_enc, json.dumps({"args": [text]}).encode(),
                            sealing.call_aad(ts, nonce, path, client.domain))
    mac = signing.request_mac(client.session.key, ts, nonce, path, client.domain, envelope)
    headers = {"Host": client.host, "Content-Type": sealing.SEALED_TYPE,
               "Authorization": signing.authorization(client.session.sid, ts, nonce, mac)}
    request = SignedRequest(path, envelope, headers, nonce, client.session.answer_key)

    answers = send_all_at_once(deployment.server.host, deployment.server.port, request, REPLAYS)

    assert Counter(answer.status for answer in answers) == {200: 1, 401: REPLAYS - 1}
    assert all(request.answer_is_signed(answer) for answer in answers)
    assert all(answer.headers["content-type"] == sealing.SEALED_TYPE for answer in answers)
    assert text.encode() not in b"".join(answer.body for answer in answers)
    opened = [json.loads(sealing.open_envelope(client.session.keys.answer_enc, answer.body,
                                               sealing.answer_aad(nonce, answer.status))) for answer in answers]
    assert {answer.get("exc") for answer in opened if "exc" in answer} == {"ReplayedCall"}
    created = next(answer["result"] for answer in opened if "result" in answer)
    assert [todo for todo in client.call("get_all") if todo["text"] == text] == [created]
    client.logout()


# -- 3. the backend goes down and comes back ------------------------------------------------------


@each(WITH_SERVER)
def test_outage_answers_503_and_heals_without_a_restart(deployment):
    report = deployment.notes
    tag = uuid.uuid4().hex
    clients = in_threads(4, lambda i: deployment.client())
    in_threads(4, lambda i: clients[i].call("add", f"{tag} before {i}"))
    counter = clients[0].call("add", "0")
    before = clients[0].call("get_all")
    workers = deployment.worker_pids()
    assert len(workers) == 4

    def attempts(i: int) -> list[tuple[str, Response]]:
        client = clients[i]
        fresh = Client(deployment.server.url, host=DOMAIN)
        return [
            ("add", client.send_signed("/api/add", _body({"args": [f"{tag} during {i}"]}))[0]),
            ("update", client.send_signed("/api/update", _body({"args": [counter["id"], 1],
                                                                "kwargs": {"text": "1"}}))[0]),
            ("get_all", client.send_signed("/api/get_all", b"")[0]),
            ("login", fresh.request("/auth/login", _body({"username": USERNAME, "password": PASSWORD}))),
            ("healthz", deployment.get("/healthz")),
        ]

    # Readers keep calling through the outage: a query cut off mid-flight must be a 503 too, never a 500.
    readers = in_threads(4, lambda i: deployment.client())

    def read(i: int) -> int:
        for what, answer in (("get_all", readers[i].send_signed("/api/get_all", b"")[0]),
                             ("healthz", deployment.get("/healthz"))):
            if answer.status != 200:
                assert_unavailable(answer, f"{what} by reader {i} during the outage")
        return answer.status

    with Repeating(4, read) as reading:
        with timed(report, "outage s"):
            deployment.stop_backend()
            try:
                for round_ in range(2):  # several calls per worker: every worker's pool sees the outage
                    for i, answers in enumerate(in_threads(4, attempts)):
                        for what, answer in answers:
                            assert_unavailable(answer, f"{what} by client {i} in round {round_}")
            finally:
                deployment.start_backend()
        with timed(report, "recovery s"):
            poll_until(lambda: deployment.get("/healthz").status == 200, 30, "/healthz after the restart")
    report["reader answers"] = dict(reading.seen)

    # Every worker serves again at once, nothing half-applied, and gunicorn was never restarted.
    for _ in range(2):
        assert in_threads(4, lambda i: clients[i].call("get_all")) == [before] * 4
    assert all(deployment.get("/healthz").status == 200 for _ in range(8))
    after = in_threads(4, lambda i: clients[i].call("add", f"{tag} after {i}"))
    assert clients[0].call("update", counter["id"], 1, text="1")["vsn"] == 2
    now = [todo["id"] for todo in clients[1].call("get_all")]
    assert now[:len(before)] == [todo["id"] for todo in before]
    assert sorted(now[len(before):]) == sorted(todo["id"] for todo in after)

    # A restart that no call saw: pooled connections died unnoticed, and the next calls still succeed.
    deployment.stop_backend()
    deployment.start_backend()
    assert in_threads(4, lambda i: clients[i].call("get_all")) == [clients[0].call("get_all")] * 4
    assert all(deployment.get("/healthz").status == 200 for _ in range(8))

    assert deployment.server.process.poll() is None
    assert deployment.worker_pids() == workers
    for client in clients + readers:
        client.logout()


def test_a_hung_postgresql_answers_503_within_the_timeout_and_no_worker_is_stuck(e2e_postgres):
    """PostgreSQL frozen (SIGSTOP) under 4 workers: every call and /healthz answer 503 within the timeouts, then heal."""
    config = sections(e2e_postgres.create_database(f"hung_{uuid.uuid4().hex[:12]}"),
                      storage_sql={"statement_timeout": 1, "pool_timeout": 1, "connect_timeout": 1})
    with GunicornServer(config, workers=4, threads=4) as server:
        deployment = Deployment("hung postgresql", server)
        clients = in_threads(8, lambda i: deployment.client())
        workers = deployment.worker_pids()

        def attempt(i: int) -> list[tuple[str, Response, float]]:
            client, answers = clients[i], []
            for what, send in (("add", lambda: client.send_signed("/api/add", _body({"args": [f"hung {i}"]}))[0]),
                               ("get_all", lambda: client.send_signed("/api/get_all", b"")[0]),
                               ("healthz", lambda: deployment.get("/healthz"))):
                started = time.monotonic()
                answer = send()
                answers.append((what, answer, time.monotonic() - started))
            return answers

        e2e_postgres.pause()
        try:
            results = in_threads(8, attempt)  # 8 callers at once on 4 workers × 4 threads
        finally:
            e2e_postgres.resume()
        for i, answers in enumerate(results):
            for what, answer, took in answers:
                assert_unavailable(answer, f"{what} by client {i} while PostgreSQL hung")
                assert took < 5, f"{what} by client {i}: {took:.1f} s"  # 1 s timeouts, plus a second of grace
        # PostgreSQL works through the connections given up meanwhile; a new one may wait a moment (connect_timeout 1 s).

        def everyone_served() -> bool:
            calls = in_threads(8, lambda i: clients[i].send_signed("/api/get_all", b"")[0])
            return all(answer.status == 200 for answer in calls + [deployment.get("/healthz") for _ in range(8)])

        poll_until(everyone_served, 30, "every client and /healthz after PostgreSQL resumed")
        assert deployment.worker_pids() == workers  # gunicorn never had to replace a worker
        assert "Traceback" not in server.log()
        assert e2e_postgres.password not in server.log()


def test_a_worker_that_starts_during_an_outage_answers_503_until_the_storage_is_back(e2e_postgres):
    """A worker replaced while PostgreSQL is down must not count as a failed boot (gunicorn would stop the server)."""
    import os
    import signal

    config = sections(e2e_postgres.create_database(f"reboot_{uuid.uuid4().hex[:12]}"))
    with GunicornServer(config, workers=1) as server:
        deployment = Deployment("worker started during an outage", server)
        client = deployment.client()
        [old] = deployment.worker_pids()
        e2e_postgres.stop()
        try:
            os.kill(old, signal.SIGKILL)  # a crash; gunicorn starts another worker, which cannot open the storage
            poll_until(lambda: deployment.worker_pids() - {old}, 30, "a new worker")
            poll_until(lambda: "answering 503 until" in server.log(), 60, "the new worker's start")
            assert_unavailable(deployment.get("/healthz"), "/healthz of the new worker")
            assert_unavailable(client.send_signed("/api/get_all", b"")[0], "a call to the new worker")
        finally:
            e2e_postgres.start()
        poll_until(lambda: deployment.get("/healthz").status == 200, 30, "/healthz once PostgreSQL is back")
        assert client.call("get_all") == []  # the session, made before, lives in PostgreSQL
        assert server.process.poll() is None and "Worker failed to boot" not in server.log()


@each(["cluster"])
def test_a_cluster_master_killed_mid_load_fails_over_and_loses_no_acknowledged_write(deployment, redis_cluster):
    """SIGKILL the master of the tenant's slot while 4 writers add todos: 503s meanwhile, then service again.

    With ``wait_replicas = 1`` a write is acknowledged only once the replica has it, so the replica that
    takes over holds every acknowledged todo; until the killed node is back as its replica, the new
    master's writes cannot be acknowledged (503 too). Bastion is never restarted.
    """
    report = deployment.notes
    tag = uuid.uuid4().hex
    clients = in_threads(4, lambda i: deployment.client())
    workers = deployment.worker_pids()
    acknowledged: list[list[str]] = [[] for _ in clients]
    refused = Counter()
    phase = {"now": "before"}

    def write(i: int) -> str:
        answer = clients[i].send_signed("/api/add", _body({"args": [f"{tag} {i} {len(acknowledged[i])}"]}))[0]
        if answer.status == 200:
            acknowledged[i].append(answer.json()["result"]["id"])
        else:
            assert_unavailable(answer, f"an add by writer {i} {phase['now']} the failover")
            refused[phase["now"]] += 1
        return f"{phase['now']} {answer.status}"

    def acks() -> int:
        return sum(len(ids) for ids in acknowledged)

    master = redis_cluster.master_of(f"{CLUSTER['key_prefix']}:{{{DOMAIN}}}:seq")
    with Repeating(4, write) as writing:
        poll_until(lambda: acks() >= 20, 60, "20 acknowledged adds before the kill")
        phase["now"] = "during"
        with timed(report, "failover s"):
            redis_cluster.fail_over(master)  # SIGKILL, then wait until the replica serves the slot
        with timed(report, "replica back s"):
            master.start()  # the killed node comes back empty and becomes the new master's replica
            redis_cluster.wait_healthy()
        phase["now"] = "after"
        before_recovery = acks()
        with timed(report, "recovery s"):
            poll_until(lambda: acks() >= before_recovery + 20, 60, "20 acknowledged adds after the failover")
    report["answers"] = dict(writing.seen)

    assert refused["during"] > 0, writing.seen  # the calls on the lost master answered 503 meanwhile
    stored = {todo["id"] for todo in clients[0].call("get_all") if todo["text"].startswith(tag)}
    lost = [todo_id for ids in acknowledged for todo_id in ids if todo_id not in stored]
    assert lost == [], f"{len(lost)} acknowledged adds lost of {acks()}"
    assert deployment.server.process.poll() is None and deployment.worker_pids() == workers
    assert all(deployment.get("/healthz").status == 200 for _ in range(8))
    for client in clients:
        client.logout()


# -- 4. limits under concurrency --------------------------------------------------------------------

#: The configurations whose state is shared by 4 worker processes.
SHARED_STATE = ["sqlite", "postgresql", "redis", "cluster"]
PARALLEL = 40


@pytest.fixture(scope="module")
def limited(request, tmp_path_factory) -> Iterator[GunicornServer]:
    """4 workers with the protocol's default limits (bans at weight 10, locks after 5 failures)."""
    name = request.param
    if name == "sqlite":
        storage = f"sqlite:///{tmp_path_factory.mktemp('limits')}/bastion.sqlite3"
    elif name == "postgresql":
        storage = request.getfixturevalue("e2e_postgres").create_database(f"limits_{uuid.uuid4().hex[:12]}")
    elif name == "cluster":
        storage = request.getfixturevalue("redis_cluster").url
    else:
        storage = _redis_url(request.getfixturevalue("e2e_redis"), 3)
    config = sections(storage, auth={"abuse_max": 10, "account_max_failures": 5,
                                     # a password check of a few milliseconds: a wide check-then-act window
                                     "argon2_memory_cost": 4096})
    if name == "cluster":
        config["storage_redis"] = {**CLUSTER, "key_prefix": "limits"}
    with GunicornServer(config, workers=4, threads=4) as server:
        yield server


def _login(username: str, password: str) -> tuple[str, bytes, dict[str, str]]:
    return "/auth/login", _body({"username": username, "password": password}), {
        "Host": DOMAIN, "Content-Type": "application/json"}


@pytest.mark.parametrize("limited", SHARED_STATE, indirect=True, scope="module")
def test_parallel_wrong_passwords_for_one_account_check_at_most_the_limit(limited):
    """40 wrong passwords at once from 40 origins: at most 5 are checked, the rest are AccountLocked."""
    requests = [(*_login("alice", f"wrong {i}"), f"127.0.1.{i + 1}") for i in range(PARALLEL)]
    answers = post_all_at_once(limited.host, limited.port, requests)
    counts = Counter(answer.json()["exc"] for answer in answers)
    assert set(counts) <= {"InvalidCredential", "AccountLocked"} and counts["InvalidCredential"] <= 5, counts
    # Locked now, whatever the password, from anywhere.
    late = post_all_at_once(limited.host, limited.port, [(*_login("alice", PASSWORD), "127.0.2.1")])
    assert late[0].json()["exc"] == "AccountLocked"


@pytest.mark.parametrize("limited", SHARED_STATE, indirect=True, scope="module")
def test_parallel_failed_logins_from_one_origin_check_at_most_the_ban_weight(limited):
    """40 failed logins at once from one origin (40 accounts): at most 10 are checked, the rest are Abusive."""
    requests = [(*_login(f"user{i}", "wrong password"), "127.0.3.1") for i in range(PARALLEL)]
    answers = post_all_at_once(limited.host, limited.port, requests)
    counts = Counter(answer.json()["exc"] for answer in answers)
    assert set(counts) <= {"InvalidCredential", "Abusive"} and counts["InvalidCredential"] <= 10, counts
    assert post_all_at_once(limited.host, limited.port, [(*_login("alice", PASSWORD), "127.0.3.1")])[0].status == 429


@each(CONFIGURATIONS)
def test_an_id_with_nul_is_not_found_on_every_driver(deployment):
    client = deployment.client()
    todo = client.call("add", "kept")
    for service, args in (("update", ["a\u0000b", 1]), ("remove", ["a\u0000b", 1]),
                          ("update", [todo["id"] + "\u0000", 1])):
        answer = client.send_signed(f"/api/{service}", _body({"args": args}))[0]
        assert (answer.status, answer.json()["exc"]) == (404, "RecordNotFound"), (service, answer.body)
    assert todo in client.call("get_all")
    client.logout()
