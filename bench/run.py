"""The benchmark run: ceilings first, then every storage configuration, then the profile.

Phases of one configuration (each on a fresh store and a fresh server):

* **A** — domains ``n10`` (10 todos, get_all), ``a10`` (10 todos, add),
  ``upd`` (one pre-filled todo per update request), and for the scaling
  curve ``n1000`` and ``n100000``; then the login rate.
* **B** — the same calls with 1,000 other domains holding 10 todos each
  (``m10`` for get_all, ``ma10`` for add), to show that nothing scales with
  other tenants' data.
"""

from __future__ import annotations

import itertools
import json
import secrets
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bastion_todo import PAGE_LIMIT

from bench import fill, load, procs
from bench.backends import Backend, Store, backends
from kernel.client import Client
from kernel.testing.servers import GunicornServer, write_config

#: The checkout: the bench's own app modules import from it.
REPO_ROOT = Path(__file__).resolve().parents[1]
USERNAME = "bench"
SKEW = 60  # the default [auth] skew: every run is far shorter, so ts stays valid
#: The login rate: this many users of one domain, logging in in turn over this many connections (one origin).
LOGIN_USERS = 16
LOGIN_CONNECTIONS = 8
LOGIN_DOMAIN = "login.localhost"


def login_users() -> list[str]:
    return [f"login{i:02d}" for i in range(LOGIN_USERS)]


@dataclass
class Plan:
    """How much to measure."""

    quick: bool
    seconds: float
    warm: float
    connections: int = 16
    wrk_threads: int = 2
    workers: int = 2
    threads: int = 4
    sizes: tuple[int, ...] = (10, 1000, 100000)
    other_domains: int = 1000
    only: tuple[str, ...] = ()

    @classmethod
    def make(cls, quick: bool, only: tuple[str, ...] = ()) -> Plan:
        if quick:
            return cls(quick=True, seconds=2, warm=1, sizes=(10, 1000), other_domains=0, only=only)
        return cls(quick=False, seconds=8, warm=1, only=only)


@dataclass
class Outcome:
    """Everything one run produced, for the JSON file and the docs."""

    plan: Plan
    ceilings: list[dict] = field(default_factory=list)
    cases: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    profiles: list[dict] = field(default_factory=list)
    logging: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def password_hash(password: str) -> tuple[str, dict]:
    """Hash the bench user's password with the default [auth] argon2id parameters."""
    from bastion_auth.passwords import argon2_context
    from bastion_auth.settings import AUTH_SCHEMA

    params = {k: AUTH_SCHEMA[k].default for k in ("argon2_memory_cost", "argon2_time_cost", "argon2_parallelism")}
    return argon2_context(*params.values()).hash(password), params


class Bench:
    """One benchmark run; every server it starts is stopped by :meth:`close`."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.out = Outcome(plan)
        self.stack = ExitStack()
        self.tmp = self.stack.enter_context(tempfile.TemporaryDirectory(prefix="bastion-bench-"))
        self.password = secrets.token_urlsafe(12)
        self.hash, self.argon2 = password_hash(self.password)
        self.ceiling: dict[tuple, load.RunResult] = {}

    def close(self) -> None:
        self.stack.close()

    # -- servers ----------------------------------------------------------

    def sections(self, store: Store, domains: list[str], extra: dict | None = None) -> dict:
        bastion = {"development": True, "storage": store.storage}
        if store.state:
            bastion["state"] = store.state
        users = {f"{USERNAME}@{d}": self.hash for d in domains}
        users.update({f"{name}@{LOGIN_DOMAIN}": self.hash for name in login_users()})
        sections = {"bastion": bastion, "auth": {"skew": SKEW, "demo_user": False}, "users": users}
        for name, values in store.sections.items():
            sections.setdefault(name, {}).update(values)
        for name, values in (extra or {}).items():
            sections.setdefault(name, {}).update(values)
        return sections

    def gunicorn(self, sections: dict, workers: int, app: str = "kernel.wsgi:app",
                 env: dict | None = None) -> GunicornServer:
        server = GunicornServer(sections, workers=workers, threads=self.plan.threads, app=app,
                                env={"PYTHONPATH": str(REPO_ROOT), **(env or {})}, startup_timeout=300)
        self.stack.callback(server.close)
        server.start()
        return server

    def stop(self, server: GunicornServer) -> None:
        server.close()

    # -- measuring --------------------------------------------------------

    def wrk(self, server: GunicornServer, lines, seconds: float, cycle: bool, backend_pids=(),
            ok: tuple[str, ...] = ("200",), connections: int | None = None) -> load.RunResult:
        path = load.write_lines(lines, self.tmp)
        try:
            pid = server.process.pid
            return load.run_wrk(server.url, path, seconds, connections=connections or self.plan.connections,
                                threads=self.plan.wrk_threads, cycle=cycle, server_pid=pid,
                                worker_pids=lambda: procs.children(pid), backend_pids=list(backend_pids), ok=ok)
        finally:
            path.unlink(missing_ok=True)
            self.wait_idle(server, backend_pids)

    @staticmethod
    def wait_idle(server: GunicornServer, backend_pids=(), limit_s: float = 60.0) -> None:
        """Wait until the server and its backend (redis-server running a select script, PostgreSQL) stop
        computing answers to requests wrk gave up on (big get_all)."""
        roots = [server.process.pid, *backend_pids]

        def spent(before: list[procs.CpuSnapshot]) -> tuple[float, list[procs.CpuSnapshot]]:
            after = [procs.CpuSnapshot.take(root) for root in roots]
            return sum(a.since(b) for a, b in zip(after, before, strict=True)), after

        deadline = time.monotonic() + limit_s
        before = [procs.CpuSnapshot.take(root) for root in roots]
        while time.monotonic() < deadline:
            time.sleep(0.25)  # sampling CPU use: there is no event to wait on
            seconds, before = spent(before)
            if seconds < 0.25 * 0.1:  # under a tenth of a core
                return

    def count(self, ceiling: load.RunResult, seconds: float) -> int:
        """Requests to pre-sign: more than the ceiling could take in that time (Bastion is slower)."""
        return min(int(ceiling.rps * seconds * 1.3) + 300, 600_000)

    @staticmethod
    def bodies(op: str, prefix: str = "u", start: int = 0, todos: int = 0):
        if op == "get_all":
            if todos > PAGE_LIMIT:  # the last full page of a big domain, as the UI reads it: after todo todos - 1,001
                page = {"args": [fill.todo_id("t", todos - PAGE_LIMIT - 1), PAGE_LIMIT]}
                return itertools.repeat(json.dumps(page).encode())
            return itertools.repeat(b"{}")
        if op == "add":
            return itertools.repeat(b'{"args":["buy oat milk"]}')
        return (json.dumps({"args": [fill.todo_id(prefix, i), 1], "kwargs": {"done": True}},
                           separators=(",", ":")).encode() for i in itertools.count(start))

    # -- ceilings ---------------------------------------------------------

    def ceilings(self, workers: int, sizes: tuple[int, ...], login: bool) -> None:
        """Measure the bare Falcon app for every call shape, with ``workers`` workers."""
        # gunicorn.conf.py runs one worker for mem://; any other URL keeps the count (the app ignores it).
        storage = "mem://" if workers == 1 else "sqlite:///ceiling-does-not-open-it.sqlite3"
        dummy = load.Signer(sid="c" * 32, key=secrets.token_bytes(32), domain="n10.localhost", host="n10.localhost")
        for todos in sizes:
            # A bigger domain is read a page at a time (the 100,000-todo case): the ceiling answers the same page.
            page = (workers, "get_all", min(todos, PAGE_LIMIT))
            if todos > PAGE_LIMIT and page in self.ceiling:
                self.ceiling[(workers, "get_all", todos)] = self.ceiling[page]
                continue
            server = self.gunicorn({"bastion": {"development": True, "storage": storage}}, workers,
                                   app="bench.ceiling:app", env={"BENCH_CEILING_TODOS": str(page[2])})
            ops = ["get_all"] + (["add", "update"] + (["login"] if login else []) if todos == sizes[0] else [])
            for op in ops:
                if op == "login":
                    body = json.dumps({"username": USERNAME, "password": self.password}).encode()
                    mk = lambda n, body=body: load.plain_lines("n10.localhost", "/auth/login", body, n)  # noqa: E731
                else:
                    mk = lambda n, op=op: load.signed_lines(dummy, f"/api/{op}", self.bodies(op), n)  # noqa: E731
                self.wrk(server, mk(500), self.plan.warm, cycle=True)
                result = self.wrk(server, mk(5000), self.plan.seconds, cycle=True)
                key = (workers, op, todos if op == "get_all" else 0)
                self.ceiling[key] = result
                self.out.ceilings.append({"workers": workers, "threads": self.plan.threads, "op": op,
                                          "todos": key[2], "result": result.to_dict()})
                print(f"  ceiling w={workers} {op:8} n={key[2]:<6} {result.rps:9.1f} req/s  "
                      f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  "
                      f"cpu {result.server_cpu_us_per_req:7.0f} us/req  wrk {result.wrk_cpu_cores:.2f} cores",
                      flush=True)
            self.stop(server)

    # -- cases ------------------------------------------------------------

    def login(self, server: GunicornServer, domain: str) -> load.Signer:
        client = Client(server.url, host=domain)
        client.login(USERNAME, self.password)
        return load.Signer(sid=client.session.sid, key=client.session.key, domain=client.domain, host=domain,
                           offset=client.offset)

    def signed(self, backend: Backend, server: GunicornServer, store: Store, workers: int, op: str, domain: str,
               todos: int, group: str, other_domains: int = 0, update_start: int = 0) -> None:
        ceiling = self.ceiling[(workers, op, todos if op == "get_all" else 0)]
        signer = self.login(server, domain)
        bodies = self.bodies(op, start=update_start, todos=todos)
        warm = None
        if todos <= 1000:  # the smaller cases already warmed the workers; a 100,000-todo warm-up would take long
            warm = self.wrk(server, load.signed_lines(signer, f"/api/{op}", bodies,
                                                      self.count(ceiling, self.plan.warm)), self.plan.warm, cycle=False)
        lines = load.signed_lines(signer, f"/api/{op}", bodies, self.count(ceiling, self.plan.seconds))
        result = self.wrk(server, lines, self.plan.seconds, cycle=False, backend_pids=store.backend_pids)
        self.record(backend, workers, op, todos, group, other_domains, result, ceiling, warm)

    def record(self, backend: Backend, workers: int, op: str, todos: int, group: str, other_domains: int,
               result: load.RunResult, ceiling: load.RunResult, warm: load.RunResult | None = None,
               connections: int | None = None) -> None:
        case = {"group": group, "backend": backend.name, "label": backend.label, "op": op, "todos": todos,
                "other_domains": other_domains, "workers": workers, "threads": self.plan.threads,
                "connections": connections or self.plan.connections, "result": result.to_dict(),
                "ceiling_rps": ceiling.rps, "ceiling_cpu_us_per_req": ceiling.server_cpu_us_per_req,
                "ceiling_p99_ms": ceiling.p99_ms,
                "ratio": round(result.rps / ceiling.rps, 3) if ceiling.rps else None,
                # CPU per request is far less sensitive than req/s to other jobs on a shared machine
                "cpu_ratio": (round(ceiling.server_cpu_us_per_req / result.server_cpu_us_per_req, 3)
                              if result.server_cpu_us_per_req else None),
                "warmup_non200": warm.non200 if warm else 0}
        self.out.cases.append(case)
        flag = "" if result.valid else f"  !! statuses {result.statuses} exhausted {result.exhausted} " \
                                       f"socket {result.socket_errors}"
        print(f"  {backend.name:10} {op:8} n={todos:<6} dom+{other_domains:<5} {result.rps:9.1f} req/s "
              f"({case['ratio'] or 0:6.1%} of {ceiling.rps:.0f})  p50 {result.p50_ms:7.2f} ms  "
              f"p99 {result.p99_ms:8.2f} ms  cpu {result.server_cpu_us_per_req:7.0f} us/req"
              f"{flag}", flush=True)

    def login_rate(self, backend: Backend, server: GunicornServer, store: Store, workers: int) -> None:
        """Logins of :data:`LOGIN_USERS` distinct users from one origin, at :data:`LOGIN_CONNECTIONS`
        connections: under the in-flight limits (docs/security.md: at most ``abuse_max`` = 10 attempts of an
        origin, ``account_max_failures`` = 5 of an account), so that it measures the login rate, not the
        limits (every answer must be 200)."""
        ceiling = self.ceiling[(workers, "login", 0)]
        bodies = [json.dumps({"username": name, "password": self.password}).encode() for name in login_users()]

        def lines():
            for i in range(2000):
                yield from load.plain_lines(LOGIN_DOMAIN, "/auth/login", bodies[i % len(bodies)], 1)

        result = self.wrk(server, lines(), self.plan.seconds, cycle=True, backend_pids=store.backend_pids,
                          connections=LOGIN_CONNECTIONS)
        self.record(backend, workers, "login", 0, "login", 0, result, ceiling, connections=LOGIN_CONNECTIONS)

    # -- a configuration ----------------------------------------------------

    def start_phase(self, backend: Backend, domains: list[str], plan: list[tuple[str, int, str]],
                    workers: int, extra: dict | None = None) -> tuple[Store, GunicornServer]:
        store = backend.start()
        self.stack.callback(store.stop)
        sections = self.sections(store, domains, extra)
        started = time.monotonic()
        env = {}
        app = "kernel.wsgi:app"
        if backend.in_process:
            plan_path = Path(self.tmp) / f"plan-{secrets.token_hex(4)}.json"
            plan_path.write_text(json.dumps(plan))
            env[fill.PLAN_ENV] = str(plan_path)
            app = "bench.memapp:app"
        else:
            from kernel.core.config import load_config
            from kernel.core.runtime import Runtime

            directory = tempfile.mkdtemp(dir=self.tmp)
            runtime = Runtime(load_config(write_config(sections, directory)))  # to fill the storage: nothing counted
            try:
                fill.fill_plan(runtime.records, plan)
            finally:
                runtime.close()
        server = self.gunicorn(sections, workers, app=app, env=env)
        total = sum(n for _, n, _ in plan)
        print(f"  {backend.name}: filled {total} todos in {len(plan)} domains and started in "
              f"{time.monotonic() - started:.1f} s", flush=True)
        return store, server

    def configuration(self, backend: Backend, scaling: bool, login: bool) -> None:
        plan = self.plan
        workers = 1 if backend.in_process else plan.workers
        update_ceiling = self.ceiling[(workers, "update", 0)]
        n_update = self.count(update_ceiling, plan.warm) + self.count(update_ceiling, plan.seconds)
        sizes = plan.sizes if scaling else plan.sizes[:1]
        fill_a = [("n10.localhost", 10, "t"), ("a10.localhost", 10, "t"), ("upd.localhost", n_update, "u")]
        fill_a += [(f"n{n}.localhost", n, "t") for n in sizes[1:]]
        store, server = self.start_phase(backend, [d for d, _, _ in fill_a], fill_a, workers)
        self.signed(backend, server, store, workers, "get_all", "n10.localhost", 10, "base")
        self.signed(backend, server, store, workers, "add", "a10.localhost", 10, "base")
        self.signed(backend, server, store, workers, "update", "upd.localhost", 10, "base")
        for n in sizes[1:]:
            self.signed(backend, server, store, workers, "get_all", f"n{n}.localhost", n, "scale")
            self.signed(backend, server, store, workers, "add", f"n{n}.localhost", n, "scale")
        if login:
            self.login_rate(backend, server, store, workers)
        self.stop(server)
        store.stop()
        if scaling and plan.other_domains:
            fill_b = [("m10.localhost", 10, "t"), ("ma10.localhost", 10, "t")]
            fill_b += [(f"d{j:04d}.localhost", 10, "t") for j in range(plan.other_domains)]
            store, server = self.start_phase(backend, ["m10.localhost", "ma10.localhost"], fill_b, workers)
            self.signed(backend, server, store, workers, "get_all", "m10.localhost", 10, "domains",
                        other_domains=plan.other_domains)
            self.signed(backend, server, store, workers, "add", "ma10.localhost", 10, "domains",
                        other_domains=plan.other_domains)
            self.stop(server)
            store.stop()

    # -- the peer -----------------------------------------------------------

    def peer(self) -> None:
        """The Django + DRF peer (bench/peers/): get_all of 10 and 1,000 todos, add and update, served like
        Bastion's SQLite case and replayed by wrk against the same ceilings."""
        from bench.peers import drf

        why = drf.available()
        label = "Django + DRF (SQLite, WAL)"
        if why:
            self.out.skipped.append({"backend": "django", "label": label, "why": why})
            print(f"  skip django peer: {why}", flush=True)
            return
        plan, workers = self.plan, self.plan.workers
        update_ceiling = self.ceiling[(workers, "update", 0)]
        n_update = self.count(update_ceiling, plan.warm) + self.count(update_ceiling, plan.seconds)
        sizes = [n for n in plan.sizes if n <= 1000]
        users = [("upd", n_update + 1), ("a10", 10)] + [(f"n{n}", n) for n in sizes]
        db = Path(self.tmp) / f"peer-{secrets.token_hex(4)}.sqlite3"
        started = time.monotonic()
        ids = drf.fill(db, users, self.password, REPO_ROOT)
        sections = {"bastion": {"development": True, "storage": "sqlite:///peer-does-not-open-it.sqlite3"}}
        server = self.gunicorn(sections, workers, app=drf.APP, env=drf.environment(db))
        print(f"  django: filled {sum(n for _, n in users)} todos and started in {time.monotonic() - started:.1f} s",
              flush=True)
        backend = Backend(name="django", label=label, available=True)
        try:
            # Correctness first: list, create, update, a stale update (409), a create without CSRF (403).
            checker = drf.login(server.url, "a10", self.password)
            drf.check(server.url, checker, 10, drf.login(server.url, "upd", self.password), ids["upd"][1])
            print("  django: list/create/update answer as expected (CSRF and versions checked)", flush=True)
            update_ids = iter(range(ids["upd"][0], ids["upd"][1]))
            cases = [("get_all", "n10", 10, "base"), ("add", "a10", 10, "base"), ("update", "upd", 10, "base")]
            cases += [("get_all", f"n{n}", n, "scale") for n in sizes[1:]]
            for op, user, todos, group in cases:
                ceiling = self.ceiling[(workers, op, todos if op == "get_all" else 0)]
                session = drf.login(server.url, user, self.password)
                ok = ("201",) if op == "add" else ("200",)
                warm = self.wrk(server, drf.lines(session, op, self.count(ceiling, plan.warm), update_ids),
                                plan.warm, cycle=False, ok=ok)
                result = self.wrk(server, drf.lines(session, op, self.count(ceiling, plan.seconds), update_ids),
                                  plan.seconds, cycle=False, ok=ok)
                self.record(backend, workers, op, todos, group, 0, result, ceiling, warm)
        finally:
            self.stop(server)

    # -- the whole run ------------------------------------------------------

    def run(self) -> Outcome:
        plan = self.plan
        chosen = []
        for backend in backends():
            if plan.only and backend.name not in plan.only:
                continue
            if not backend.available:
                self.out.skipped.append({"backend": backend.name, "label": backend.label, "why": backend.note})
                print(f"  skip {backend.name}: {backend.note}", flush=True)
                continue
            chosen.append(backend)
        if plan.quick:
            # quick: mem:// and the first persistent store (SQLite, else Redis, ...)
            persistent = [b for b in chosen if not b.in_process][:1]
            for b in chosen:
                if not b.in_process and b not in persistent:
                    self.out.skipped.append({"backend": b.name, "label": b.label, "why": "not run in --quick"})
            chosen = [b for b in chosen if b.in_process] + persistent
        login_backend = next((b for b in chosen if not b.in_process), chosen[0] if chosen else None)
        peer = not plan.only or "django" in plan.only
        worker_counts = sorted({1 if b.in_process else plan.workers for b in chosen} | ({plan.workers} if peer else set()))
        print(f"ceilings (bare Falcon, {plan.seconds:g} s runs, {plan.connections} connections)", flush=True)
        for workers in worker_counts:
            login = login_backend is not None and (1 if login_backend.in_process else plan.workers) == workers
            self.ceilings(workers, plan.sizes, login)
        for backend in chosen:
            print(f"{backend.label}", flush=True)
            try:
                # The other SQLite configurations: the signed calls only (their scaling is the one-file case's).
                self.configuration(backend, scaling=backend.name not in ("sqlite-split", "sqlite-nogate"),
                                   login=backend is login_backend)
            except Exception as exc:  # one broken configuration must not lose the others' figures
                print(f"  FAILED {backend.name}: {exc}", flush=True)
                self.out.skipped.append({"backend": backend.name, "label": backend.label,
                                         "why": f"failed during the run: {str(exc).splitlines()[0][:200]}"})
        if peer:
            print("Django + DRF peer (SQLite, WAL)", flush=True)
            try:
                self.peer()
            except Exception as exc:
                print(f"  FAILED django peer: {exc}", flush=True)
                self.out.skipped.append({"backend": "django", "label": "Django + DRF (SQLite, WAL)",
                                         "why": f"failed during the run: {str(exc).splitlines()[0][:200]}"})
        self.logging_cost(chosen)
        return self.out

    def logging_cost(self, chosen: list[Backend]) -> None:
        """The call line's and the metrics' cost (bench/logcost.py): served A/B runs on SQLite (the shipped
        default), and in process on SQLite and, in the full run, mem:// (where a call costs least, so the
        share is largest)."""
        from bench import logcost

        wanted = {"sqlite": True} if self.plan.quick else {"sqlite": True, "mem": False}
        for backend in chosen:
            if backend.name not in wanted:
                continue
            try:
                self.out.logging.append(logcost.measure(self, backend, serve=wanted[backend.name]))
            except Exception as exc:
                print(f"  logging cost FAILED {backend.name}: {exc}", flush=True)
                self.out.notes.append(f"logging cost on {backend.label} failed: {str(exc).splitlines()[0][:200]}")


