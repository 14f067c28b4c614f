"""``python -m bench.interleaved``: a signed call's server CPU against the bare ceiling, pass by pass, in one run.

Every server is started once and kept running; only one is loaded at a time.
A *pass* loads each target in turn (their order rotates from pass to pass),
with a short run of the ceiling before the first and after every one
(ceiling, case, ceiling, case, …, ceiling), all with the same request shape
and connections; a case's ratio is the mean server CPU per request of the
two ceiling runs around it over its own. So load elsewhere on the machine
hits the ceiling and the case alike, and the medians over passes are
comparable from run to run.

The **ceiling** is ``bench/ceiling.py`` (a bare Falcon app that parses the
same JSON body and answers one of the same size) on *plain* gunicorn: the
``gthread`` worker, 2 workers × 4 threads, no Bastion worker, no logging, no
reloader, no settings file. **Bastion** is served as in production behind a
TLS-terminating proxy: ``development = false``, ``reload = off``, the
packaged gunicorn settings and worker, SQLite (WAL), the call line and
security events on, metrics on, every request carrying the proxy's
``X-Forwarded-Proto: https`` from a trusted 127.0.0.1 (the ceiling's
requests carry the same headers). Each **variant** turns one thing off, so
that its difference with ``bastion`` is what that thing costs, measured the
same way (``--variants``): ``no-metrics`` (``[metrics] allow`` empty: nothing
counted, no file written per sample), ``no-call-line`` (``log_level =
warning``: no call line, no info events), ``plain-gthread`` (Bastion's app
on plain gunicorn ``gthread``: no Bastion worker and no packaged settings).
Two variants add instead of removing, for the lists (``get_all`` of 10 and of
1,000 todos): ``v2`` logs in with protocol version 2 (the keys agreed; calls
signed as before, with the agreed call key) and ``sealed`` also seals every
call and every answer (AES-256-GCM, docs/protocol.md section 16): their
difference with ``bastion`` is what the key agreement and the encryption
cost a call; ``in-process-v2`` and ``in-process-sealed`` measure the same
in this process, with no HTTP, beside ``in-process``: the app's own cost,
without the noise of a served call.
The **peers** (``--peers``): Django + DRF and FastAPI, each checked for
correctness before it is timed.

Server CPU is read from ``/proc`` for the server's whole process tree (the
master and its workers) before and after each run; wrk's own CPU is apart.
Results go to ``bench/results/interleaved-<time>.json`` and are printed as a
table (``docs/benchmarks.md`` quotes them, with the command line).
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench import fill, load, procs
from bench.procs import install_signal_handlers, worktree
from bench.report import head
from kernel.testing import free_port
from kernel.testing.servers import GunicornServer, wait_until_serving, write_config

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "bench.localhost"
USERNAME = "bench"
#: The tenant each case calls, and how many todos it holds (the update tenant holds ``--update-budget``).
TENANTS = {"get_all-10": ("n10", 10), "get_all-1000": ("n1000", 1000), "add": ("a10", 10), "update": ("upd", 0)}
PROXY_HEADER = "X-Forwarded-Proto:https"
#: The call shapes measured: (op, todos in the domain).
CASES = {"get_all-10": ("get_all", 10), "get_all-1000": ("get_all", 1000), "add": ("add", 10),
         "update": ("update", 10)}
VARIANTS = ("bastion", "no-metrics", "no-call-line", "plain-gthread", "no-gate", "split-state", "in-process",
            "postgresql", "redis", "v2", "sealed", "in-process-v2", "in-process-sealed")
#: The variants measured for every case; the others (what each part of a served call costs) only for these cases.
EVERY_CASE = ("bastion", "postgresql", "redis")
ACCOUNTING_CASES = ("get_all-10", "add")
#: The variants ``--before``'s code is served as too: every case's, and its app on plain ``gthread`` (which of the two
#: codes' workers makes a difference).
BEFORE_VARIANTS = (*EVERY_CASE, "plain-gthread")
#: The variants of protocol version 2, and the cases they are measured for.
VERSION_2 = ("v2", "sealed", "in-process-v2", "in-process-sealed")
VERSION_2_CASES = ("get_all-10", "get_all-1000")
PEERS = ("django", "fastapi")


@dataclass
class Target:
    """One server under test: how to build its request lines for an op, and what it answers when all goes well."""

    name: str
    url: str
    pid: int
    lines: Callable[[str, int], Iterator[str]]
    ok: Callable[[str], tuple[str, ...]] = lambda op: ("200",)
    cycle: bool = False  # the ceiling replays its lines; signed calls never replay a nonce
    app: Callable | None = None  # in process: the WSGI app called directly, one call at a time, no HTTP
    backend_pids: list[int] = field(default_factory=list)  # PostgreSQL's or Redis's, whose CPU is counted apart
    variant: str = ""
    rps: dict[str, float] = field(default_factory=dict)  # the last measured rate per op, to size the next run


# -- servers ----------------------------------------------------------------------------------------------------------


class PlainGunicorn:
    """gunicorn with its own defaults (no settings file) and the ``gthread`` worker, on a free loopback port."""

    def __init__(self, app: str, workers: int, threads: int, env: dict[str, str], directory: str):
        self.port = free_port("127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port}"
        empty = Path(directory) / "no-settings.py"
        empty.write_text("")
        self.log_path = Path(directory) / f"gunicorn-{self.port}.log"
        command = [sys.executable, "-m", "gunicorn", "-c", str(empty), "-k", "gthread", "-w", str(workers),
                   "--threads", str(threads), "-b", f"127.0.0.1:{self.port}", "--log-level", "warning", app]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, cwd=directory, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env},
                                            start_new_session=True)
        try:
            wait_until_serving("127.0.0.1", self.port, self.process, 120)
        except RuntimeError as exc:
            self.close()
            raise RuntimeError(f"{exc}:\n{self.log_path.read_text(errors='replace')}") from None

    @property
    def pid(self) -> int:
        return self.process.pid

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()


def bastion_sections(storage: str, password_hash: str, variant: str) -> dict:
    """Bastion's production configuration behind a proxy on 127.0.0.1, with ``variant``'s one change."""
    sections: dict[str, dict] = {
        "bastion": {"development": False, "storage": storage, "allowed_hosts": f"*.{HOST}",
                    "trusted_proxies": "127.0.0.1/32"},
        "auth": {"demo_user": False},
        "users": {f"{USERNAME}@{tenant}.{HOST}": password_hash for tenant, _ in TENANTS.values()},
    }
    if variant == "no-metrics":
        sections["metrics"] = {"allow": ""}
    elif variant == "no-call-line":
        sections["bastion"]["log_level"] = "warning"
    elif variant == "no-gate":
        sections["storage_sql"] = {"sqlite_write_gate": False}
    elif variant == "split-state":
        sections["bastion"]["state"] = storage.replace(".sqlite3", "-state.sqlite3")
    return sections


def settings_module(checkout: Path) -> str:
    """gunicorn's settings module of a checkout: ``kernel.server.gunicorn_conf``, or ``kernel.gunicorn_conf`` in a
    checkout from before the kernel's layers (round 2's code, for ``--before``)."""
    if (checkout / "kernel" / "server" / "gunicorn_conf.py").is_file():
        return "python:kernel.server.gunicorn_conf"
    return "python:kernel.gunicorn_conf"


def signed_lines(signer: load.Signer, op: str, bodies: Iterator[bytes], count: int) -> Iterator[str]:
    """Signed calls in replay.lua's header form, each with the proxy's header (its own nonce, a fresh ts)."""
    if signer.sealed:
        yield from sealed_lines(signer, op, bodies, count)
        return
    for line in load.signed_lines(signer, f"/api/{op}", bodies, count):
        host, path, auth, body = line.split("\t", 3)
        yield f"@POST\t{host}\t{path}\tAuthorization:{auth}|{PROXY_HEADER}\t{body}"


def sealed_lines(signer: load.Signer, op: str, bodies: Iterator[bytes], count: int) -> Iterator[str]:
    """Sealed calls (docs/protocol.md section 16): each body sealed with its own IV and the call's associated data,
    the MAC over the envelope, the envelope in the line as ``b64:`` text (replay.lua decodes it once, at start)."""
    from kernel.core import sealing, signing

    path, domain = f"/api/{op}", signer.domain
    ts = str(int(time.time() + signer.offset))
    for _ in range(count):
        nonce = signing.new_nonce()
        envelope = sealing.seal(signer.keys.call_enc, next(bodies), sealing.call_aad(ts, nonce, path, domain))
        auth = signing.authorization(signer.sid, ts, nonce,
                                     signing.request_mac(signer.key, ts, nonce, path, domain, envelope))
        yield (f"@POST\t{signer.host}\t{path}\tAuthorization:{auth}|{PROXY_HEADER}|Content-Type:{sealing.SEALED_TYPE}"
               f"\tb64:{signing.b64url(envelope)}\n")


# -- the run ----------------------------------------------------------------------------------------------------------


class Interleaved:
    """One run: servers started once, passes of ceiling and targets, medians of ratios."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.stack = ExitStack()
        self.tmp = self.stack.enter_context(tempfile.TemporaryDirectory(prefix="bastion-interleaved-"))
        self.password = secrets.token_urlsafe(12)
        from bench.run import password_hash

        self.hash, _ = password_hash(self.password)
        self.samples: list[dict] = []
        self.notes: list[str] = []
        self.update_ids: dict[str, Iterator[str]] = {}  # per store: every target of one store draws on its own
        self.current_case = ""
        self.stores: dict[str, tuple[str, list[int]]] = {}
        self.update_left: dict[str, int] = {}

    def close(self) -> None:
        self.stack.close()

    # -- servers ----------------------------------------------------------

    def ceiling(self, todos: int) -> Target:
        server = PlainGunicorn("bench.ceiling:app", self.args.workers, self.args.threads,
                               {"BENCH_CEILING_TODOS": str(todos)}, tempfile.mkdtemp(dir=self.tmp))
        self.stack.callback(server.close)
        dummy = load.Signer(sid="c" * 32, key=secrets.token_bytes(32), domain=HOST, host=HOST)

        def lines(op: str, count: int) -> Iterator[str]:
            return signed_lines(dummy, op, self.bodies(op), count)

        return Target(f"ceiling-{todos}", server.url, server.pid, lines, cycle=True)

    def bastion(self, variant: str, before: Path | None = None) -> Target:
        """Bastion as ``variant`` serves it; with ``before``, the code of that checkout instead, as ``before``."""
        storage, backend_pids = self.store(variant, before)
        sections = bastion_sections(storage, self.hash, variant)
        if variant == "split-state":
            self.create_schema(sections)
        if variant.startswith("in-process"):
            return self.in_process(sections, storage, variant)
        # The earlier code comes first on the path: its kernel and plugins, the installed distributions' rest.
        roots = [before, *sorted(before.glob("plugins/*"))] if before is not None else [REPO_ROOT]
        if variant == "plain-gthread":
            directory = tempfile.mkdtemp(dir=self.tmp)
            config = write_config(sections, directory)
            server = PlainGunicorn("kernel.wsgi:app", self.args.workers, self.args.threads,
                                   {"BASTION_CONFIG": str(config), "PYTHONPATH": os.pathsep.join(map(str, roots))},
                                   directory)
            self.stack.callback(server.close)
            url, pid = server.url, server.pid
        else:
            gunicorn = GunicornServer(sections, workers=self.args.workers, threads=self.args.threads,
                                      env={"PYTHONPATH": os.pathsep.join(map(str, roots))}, startup_timeout=300,
                                      settings=settings_module(before or REPO_ROOT))
            self.stack.callback(gunicorn.close)
            gunicorn.start()
            url, pid = gunicorn.url, gunicorn.process.pid
        version = 2 if variant in VERSION_2 else 1
        signers = {case: self.login(url, f"{tenant}.{HOST}", version, sealed=variant == "sealed")
                   for case, (tenant, _) in TENANTS.items()}

        def lines(op: str, count: int) -> Iterator[str]:
            return signed_lines(signers[self.current_case], op, self.bodies(op, storage), self.cap(storage, op, count))

        name = variant if before is None else "before" + ("" if variant == "bastion" else f"-{variant}")
        return Target(name, url, pid, lines, backend_pids=backend_pids, variant=variant)

    def in_process(self, sections: dict, storage: str, variant: str = "in-process") -> Target:
        """Bastion's app in this process, its calls made one at a time with no HTTP: the app's own cost."""
        from kernel.client import Client
        from kernel.core.config import load_config
        from kernel.core.runtime import Runtime
        from kernel.http.app import create_app

        directory = tempfile.mkdtemp(dir=self.tmp)
        runtime = Runtime(load_config(write_config(sections, directory))).start()
        self.stack.callback(runtime.close)
        inner = create_app(runtime)

        def app(environ, start_response):  # behind the proxy, as the served targets are
            environ["HTTP_X_FORWARDED_PROTO"] = "https"
            return inner(environ, start_response)

        signers = {}
        for case, (tenant, _) in TENANTS.items():
            client = Client(app=app, host=f"{tenant}.{HOST}", version=2 if variant in VERSION_2 else 1)
            client.login(USERNAME, self.password)
            assert client.session is not None
            signers[case] = load.Signer(sid=client.session.sid, key=client.session.key, domain=client.domain,
                                        host=client.domain, offset=client.offset, keys=client.session.keys,
                                        sealed=variant.endswith("sealed"))

        def lines(op: str, count: int) -> Iterator[str]:
            return signed_lines(signers[self.current_case], op, self.bodies(op, storage), self.cap(storage, op, count))

        return Target(variant, "", 0, lines, app=app, variant=variant)

    def login(self, url: str, domain: str, version: int = 1, sealed: bool = False) -> load.Signer:
        from kernel.core import sealing

        pair = sealing.KeyPair() if version == 2 else None
        payload = {"username": USERNAME, "password": self.password}
        if pair is not None:
            payload["public_key"] = pair.public
        body = json.dumps(payload).encode()
        connection = http.client.HTTPConnection(url.split("://", 1)[1], timeout=60)
        try:
            connection.request("POST", "/auth/login", body=body, headers={
                "Host": domain, "Content-Type": "application/json", "X-Forwarded-Proto": "https"})
            response = connection.getresponse()
            answer = json.loads(response.read())
        finally:
            connection.close()
        if response.status != 200:
            raise RuntimeError(f"the bench user's login answered {response.status}: {answer}")
        from kernel.core.signing import b64url_decode

        offset = answer["server_time"] - time.time()
        if pair is None:
            return load.Signer(sid=answer["sid"], key=b64url_decode(answer["key"]), domain=domain, host=domain,
                               offset=offset)
        keys = sealing.derive_keys(pair.agree(answer["public_key"]), answer["sid"], domain, pair.public,
                                   answer["public_key"])
        return load.Signer(sid=answer["sid"], key=keys.call_mac, domain=domain, host=domain, offset=offset, keys=keys,
                           sealed=sealed)

    def peer(self, name: str) -> Target | None:
        """A peer, filled, served, logged in and checked; None (with a note) when it cannot run here."""
        from bench.peers import drf

        module = drf
        if name == "fastapi":
            try:
                from bench.peers import fastapi as module  # type: ignore[no-redef]
            except ImportError as exc:
                self.notes.append(f"fastapi peer skipped: {exc}")
                return None
        why = module.available()
        if why:
            self.notes.append(f"{name} peer skipped: {why}")
            print(f"  skip {name}: {why}", flush=True)
            return None
        updates = self.args.update_budget
        db = Path(self.tmp) / f"{name}-{secrets.token_hex(4)}.sqlite3"
        ids = module.fill(db, [("upd", updates + 1), ("a10", 10), ("n10", 10), ("n1000", 1000)], self.password,
                          REPO_ROOT)
        if name == "django":
            server = GunicornServer({"bastion": {"development": True, "storage": "sqlite:///unused.sqlite3"}},
                                    workers=self.args.workers, threads=self.args.threads, app=module.APP,
                                    env={"PYTHONPATH": str(REPO_ROOT), **module.environment(db)}, startup_timeout=300)
            self.stack.callback(server.close)
            server.start()
            url, pid = server.url, server.process.pid
        else:
            peer = module.Server(db, workers=self.args.workers, repo_root=REPO_ROOT, startup_timeout=300)
            self.stack.callback(peer.close)
            peer.start()
            url, pid = peer.url, peer.process.pid
        module.check(url, module.login(url, "a10", self.password), 10, module.login(url, "upd", self.password),
                     ids["upd"][1])
        print(f"  {name}: list/create/update answer as expected", flush=True)
        sessions = {"get_all-10": "n10", "get_all-1000": "n1000", "add": "a10", "update": "upd"}
        logged = {case: module.login(url, user, self.password) for case, user in sessions.items()}
        first, last = ids["upd"]
        update_ids = iter(range(first, last))
        left = [last - first]

        def lines(op: str, count: int) -> Iterator[str]:
            if op == "update":  # each update names a todo of its own: no more lines than todos left
                count = min(count, left[0])
                left[0] -= count
            return module.lines(logged[self.current_case], op, count, update_ids)

        return Target(name, url, pid, lines, ok=lambda op: ("201",) if op == "add" else ("200",))

    # -- requests ---------------------------------------------------------

    def checkout(self, revision: str) -> Path:
        """The code of ``revision``, checked out in a folder of this run (removed with it)."""
        return self.stack.enter_context(worktree(REPO_ROOT, revision, Path(self.tmp) / "before"))

    def cap(self, storage: str, op: str, count: int) -> int:
        """No more updates than todos left to name in ``storage`` (each update names a todo of its own)."""
        if op != "update":
            return count
        count = min(count, self.update_left[storage])
        self.update_left[storage] -= count
        return count

    def bodies(self, op: str, storage: str = "") -> Iterator[bytes]:
        if op == "get_all":
            return itertools.repeat(b"{}")
        if op == "add":
            return itertools.repeat(b'{"args":["buy oat milk"]}')
        ids = self.update_ids[storage] if storage else itertools.repeat("u0000000")
        return (json.dumps({"args": [i, 1], "kwargs": {"done": True}}, separators=(",", ":")).encode() for i in ids)

    # -- measuring --------------------------------------------------------

    def run_once(self, target: Target, op: str, seconds: float) -> load.RunResult:
        if target.app is not None:
            return self.run_in_process(target, op, seconds)
        count = 2000 if target.cycle else int(max(target.rps.get(op, 1500), 800) * seconds * 1.8) + 800
        path = load.write_lines(target.lines(op, count), self.tmp)
        switches = procs.context_switches(target.pid)
        try:
            # wrk needs a connection per thread: one connection (calls one after another) runs one thread.
            result = load.run_wrk(target.url, path, seconds, connections=self.args.connections,
                                  threads=min(2, self.args.connections),
                                  cycle=target.cycle, server_pid=target.pid,
                                  worker_pids=lambda: procs.children(target.pid), backend_pids=target.backend_pids,
                                  ok=target.ok(op))
        finally:
            path.unlink(missing_ok=True)
        # Threads that exited during the run (none should) take their switches with them: a lower bound.
        after = procs.context_switches(target.pid)
        if result.requests:
            result.voluntary_switches_per_req = round((after[0] - switches[0]) / result.requests, 2)
            result.involuntary_switches_per_req = round((after[1] - switches[1]) / result.requests, 2)
        if result.rps:
            target.rps[op] = result.rps
        return result

    def run_in_process(self, target: Target, op: str, seconds: float) -> load.RunResult:
        """Call the app in this process, one request at a time, for ``seconds``: CPU per call from process_time."""
        requests = [_environ(line) for line in target.lines(op, int(target.rps.get(op, 2000) * seconds) + 100)]
        statuses: dict[str, int] = {}
        latencies = []

        def start_response(status, headers, exc_info=None):
            statuses[status[:3]] = statuses.get(status[:3], 0) + 1

        cpu, wall = time.process_time(), time.perf_counter()
        for environ in requests:
            began = time.perf_counter()
            b"".join(target.app(environ, start_response))
            latencies.append(time.perf_counter() - began)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        n = len(requests)
        latencies.sort()
        at = lambda q: round(latencies[min(n - 1, int(q * n))] * 1000, 3)  # noqa: E731
        non200 = sum(v for k, v in statuses.items() if k != "200")
        target.rps[op] = n / wall
        return load.RunResult(
            requests=n, seconds=round(wall, 3), rps=round(n / wall, 1), p50_ms=at(0.5), p90_ms=at(0.9),
            p99_ms=at(0.99), mean_ms=round(wall / n * 1000, 3), max_ms=at(1.0), statuses=statuses, non200=non200,
            socket_errors={}, exhausted=0, loaded=n, server_cpu_s=round(cpu, 2),
            server_cpu_us_per_req=round(cpu / n * 1e6, 1), server_cpu_cores=round(cpu / wall, 2), backend_cpu_s=0.0,
            backend_cpu_us_per_req=0.0, wrk_cpu_s=0.0, wrk_cpu_cores=0.0)

    def measure(self, case: str, ceiling: Target, targets: list[Target]) -> None:
        op, todos = CASES[case]
        self.current_case = case
        for target in [ceiling, *targets]:  # warm every server once for this call shape, unrecorded
            self.run_once(target, op, self.args.warm)
        for n in range(self.args.passes):
            order = targets[n % len(targets):] + targets[:n % len(targets)] if targets else []
            before = self.run_once(ceiling, op, self.args.ceiling_seconds)
            self._sample(case, n, ceiling.name, before, before.server_cpu_us_per_req)
            for target in order:  # ceiling, case, ceiling, case, …: each case between two ceiling runs
                result = self.run_once(target, op, self.args.seconds)
                after = self.run_once(ceiling, op, self.args.ceiling_seconds)
                self._sample(case, n, ceiling.name, after, after.server_cpu_us_per_req)
                self._sample(case, n, target.name, result,
                             (before.server_cpu_us_per_req + after.server_cpu_us_per_req) / 2)
                before = after

    def _sample(self, case: str, n: int, name: str, result: load.RunResult, ceiling_cpu: float) -> None:
        """Record one run; its ratio is to ``ceiling_cpu``, the mean of the ceiling runs just before and after it."""
        if not result.requests:
            self.notes.append(f"{case} pass {n} {name}: no request was answered (not counted)")
            print(f"  {case:13} pass {n} {name:14} no request answered: not counted", flush=True)
            return
        ratio = ceiling_cpu / result.server_cpu_us_per_req if result.server_cpu_us_per_req else 0.0
        self.samples.append({"case": case, "pass": n, "target": name, "result": result.to_dict(),
                             "ceiling_cpu_us_per_req": round(ceiling_cpu, 1), "ratio": round(ratio, 4)})
        flag = "" if result.valid else f"  (not all 200: {result.statuses}, exhausted {result.exhausted})"
        print(f"  {case:13} pass {n} {name:14} {result.rps:8.1f} req/s  cpu {result.server_cpu_us_per_req:7.0f} "
              f"us/req  ceiling {ratio:6.1%}  p99 {result.p99_ms:7.2f} ms{flag}", flush=True)

    # -- the whole run ------------------------------------------------------

    def run(self) -> dict:
        args = self.args
        started = time.monotonic()
        ceilings = {10: self.ceiling(10), 1000: self.ceiling(1000)}
        targets = [self.bastion(variant) for variant in args.variants]
        if args.before:
            checkout = self.checkout(args.before)
            targets += [self.bastion(variant, checkout) for variant in args.variants if variant in BEFORE_VARIANTS]
        targets += [t for t in (self.peer(name) for name in args.peers) if t is not None]
        print(f"  {len(targets)} targets and 2 ceilings serving after {time.monotonic() - started:.0f} s", flush=True)
        for case in args.cases:
            _, todos = CASES[case]
            chosen = [t for t in targets if (t.variant in VERSION_2 and case in VERSION_2_CASES) or (
                t.variant not in VERSION_2 and (case in ACCOUNTING_CASES or not t.variant or t.variant in EVERY_CASE))
                or (t.variant == "in-process" and case in VERSION_2_CASES)]
            self.measure(case, ceilings[1000 if todos == 1000 else 10], chosen)
        return {"commit": head(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "seconds": round(time.monotonic() - started), "args": vars(args), "notes": self.notes,
                "load": os.getloadavg(), "samples": self.samples, "summary": summarize(self.samples)}

    def create_schema(self, sections: dict) -> None:
        """Create (or upgrade) the schema of every SQLite file ``sections`` names, as development mode does."""
        from kernel.core.config import load_config
        from kernel.core.runtime import Runtime

        development = {**sections, "bastion": {**sections["bastion"], "development": True}}
        Runtime(load_config(write_config(development, tempfile.mkdtemp(dir=self.tmp)))).close()

    def store(self, variant: str, before: Path | None = None) -> tuple[str, list[int]]:
        """The storage URL a variant serves, filled with a tenant per case (``TENANTS``), and its backend's pids.

        Every SQLite variant serves one file (filled once); ``postgresql`` and ``redis`` start a server of their
        own (``bench/backends.py``), filled the same way. The code of ``--before`` serves stores of its own (a
        file, a server), its schema made and its todos filled by that code: an earlier revision may keep an
        older schema, which this code's stores would have upgraded past.
        """
        name = variant if variant in ("postgresql", "redis") else "sqlite"
        key = name if before is None else f"before-{name}"
        if key in self.stores:
            return self.stores[key]
        from bench.backends import Backend

        if name == "sqlite":
            storage, pids = f"sqlite:///{Path(self.tmp) / (key + '.sqlite3')}", []
        else:
            store = Backend(name, name, True).start()
            self.stack.callback(store.stop)
            storage, pids = store.storage, list(store.backend_pids)
        sections = bastion_sections(storage, self.hash, "bastion")
        sections["bastion"]["development"] = True  # creates the schema (production checks it)
        config = write_config(sections, tempfile.mkdtemp(dir=self.tmp))
        plan = [(f"{tenant}.{HOST}", todos or self.args.update_budget, "t" if todos else "u")
                for tenant, todos in TENANTS.values()]
        checkout = before or REPO_ROOT  # its kernel first on the path, and its bench.fill
        roots = [checkout, *sorted(checkout.glob("plugins/*"))]
        subprocess.run([sys.executable, "-c", FILL_SCRIPT, str(config), json.dumps(plan)], cwd=checkout, check=True,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(map(str, roots))})
        self.update_ids[storage] = (fill.todo_id("u", i) for i in range(self.args.update_budget))
        self.update_left[storage] = self.args.update_budget
        self.stores[key] = storage, pids
        return storage, pids


#: Run by a checkout's own code (``python -c FILL_SCRIPT config plan``): open the runtime of the INI file (in
#: development mode, so the schema is made) and fill its records by the plan. An earlier revision's modules may sit
#: where round 2 kept them (``kernel.config``, ``kernel.runtime``) rather than in ``kernel.core``.
FILL_SCRIPT = """
import json, sys
try:
    from kernel.core.config import load_config
    from kernel.core.runtime import Runtime
except ImportError:
    from kernel.config import load_config
    from kernel.runtime import Runtime
from bench import fill
runtime = Runtime(load_config(sys.argv[1]))
try:
    fill.fill_plan(runtime.records, [tuple(step) for step in json.loads(sys.argv[2])])
finally:
    runtime.close()
"""


def _environ(line: str) -> dict:
    """A WSGI environ for one request line of :func:`signed_lines` (``@POST host path headers body``)."""
    import io

    _, host, path, headers, body = line.rstrip("\n").split("\t", 4)
    from kernel.core.signing import b64url_decode

    data = b64url_decode(body[4:]) if body.startswith("b64:") else body.encode()
    environ = {"REQUEST_METHOD": "POST", "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "", "RAW_URI": path,
               "SERVER_NAME": host, "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
               "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(data),
               "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
               "wsgi.run_once": False, "HTTP_HOST": host, "CONTENT_TYPE": "application/json",
               "CONTENT_LENGTH": str(len(data))}
    for header in headers.split("|"):
        name, _, value = header.partition(":")
        key = name.upper().replace("-", "_")
        environ[key if key == "CONTENT_TYPE" else "HTTP_" + key] = value
    return environ


def summarize(samples: list[dict]) -> list[dict]:
    """Per case and target: median server CPU per request, median ratio to the ceiling, and their spread."""
    rows = []
    keys = dict.fromkeys((s["case"], s["target"]) for s in samples)
    for case, target in keys:
        mine = [s for s in samples if s["case"] == case and s["target"] == target]
        cpu = [s["result"]["server_cpu_us_per_req"] for s in mine]
        ratio = [s["ratio"] for s in mine]
        rows.append({"case": case, "target": target, "passes": len(mine),
                     "cpu_us_per_req": round(statistics.median(cpu), 1), "cpu_min": min(cpu), "cpu_max": max(cpu),
                     "ratio": round(statistics.median(ratio), 4), "ratio_min": min(ratio), "ratio_max": max(ratio),
                     "rps": round(statistics.median(s["result"]["rps"] for s in mine), 1),
                     "p99_ms": round(statistics.median(s["result"]["p99_ms"] for s in mine), 2),
                     "switches_per_req": round(statistics.median(
                         s["result"].get("voluntary_switches_per_req", 0) for s in mine), 2),
                     "preempted_per_req": round(statistics.median(
                         s["result"].get("involuntary_switches_per_req", 0) for s in mine), 2),
                     "valid": all(s["result"]["valid"] for s in mine), "problems": _problems(mine)})
    return rows


def _problems(samples: list[dict]) -> list[str]:
    """What made a target's runs not all valid, in words (an empty list when every run was)."""
    return list(dict.fromkeys(problem for s in samples for problem in s["result"]["problems"]))


def table(summary: list[dict]) -> str:
    """The summary as a Markdown table."""
    out = ["| case | server | passes | server CPU µs/request (median, min–max) | of the ceiling (median, min–max) "
           "| req/s | p99 ms | context switches per request (blocked / preempted) |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in summary:
        out.append(f"| {row['case']} | {row['target']} | {row['passes']} | {row['cpu_us_per_req']:.0f} "
                   f"({row['cpu_min']:.0f}–{row['cpu_max']:.0f}) | {row['ratio']:.0%} ({row['ratio_min']:.0%}–"
                   f"{row['ratio_max']:.0%}) | {row['rps']:.0f} | {row['p99_ms']:.1f} | {row['switches_per_req']:.1f} / "
                   f"{row['preempted_per_req']:.1f} |"
                   + ("" if row["valid"] else f" ({'; '.join(row.get('problems') or ['not every run valid'])})"))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.interleaved", description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=3, help="passes per case (the medians are over them)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of each measured run")
    parser.add_argument("--ceiling-seconds", type=float, default=2.0,
                        help="seconds of each ceiling run (one before and one after every case run)")
    parser.add_argument("--warm", type=float, default=1.0, help="seconds of each server's unrecorded warm-up")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=list(PEERS))
    parser.add_argument("--before", metavar="REVISION", default="",
                        help="also serve the code of this git revision (bastion, postgresql, redis), interleaved: the "
                             "table before and after in one run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--update-budget", type=int, default=150_000,
                        help="todos filled for updates (each update names a new one; every target draws on them)")
    args = parser.parse_args(argv)
    install_signal_handlers()
    bench = Interleaved(args)
    try:
        outcome = bench.run()
    except KeyboardInterrupt:
        print("\ninterrupted: every server is being stopped", file=sys.stderr)
        return 130
    finally:
        bench.close()
    results = REPO_ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    path = results / f"interleaved-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(outcome, indent=1))
    print("\n" + table(outcome["summary"]))
    print(f"\nresults: {path}\ntook {outcome['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
