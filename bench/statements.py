"""Statements (SQL) and round trips (Redis) per signed call, counted at the database client, per driver.

``python -m bench.statements [--calls N] [--only sqlite postgresql redis mixed]``

The app is built in this process (as in ``bench/profile.py``) and called
through plain WSGI; every statement the driver hands to sqlite3 (counted by
SQLite's own trace callback, so ``BEGIN`` and ``COMMIT`` count too), every
psycopg ``execute`` and ``commit``, and every Redis round trip
(``Wire._round_trip``: one command, one pipeline or one script) is counted
while N signed calls of each kind run one after the other with one session.
A session's idle expiry slides at most once a second, so the slide shows as
a fraction of a statement per call. The run also counts the state rows or
keys left after the calls (``--calls`` signed calls, each with its own nonce):
they stay bounded by the live sessions and the nonces of the skew window.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import sqlite3
import sqlite3.dbapi2  # what SQLAlchemy's pysqlite dialect loads
import sys
import tempfile
import time

from bench import fill, load
from bench.backends import backends
from bench.profile import _call_all, _requests
from bench.run import Bench, Plan
from kernel.client import Client
from kernel.testing.servers import write_config

OPS = ("get_all", "add", "update")


class Counter:
    """Counts statements per kind of call, and what they were (their first word)."""

    def __init__(self):
        self.total = 0
        self.words: collections.Counter[str] = collections.Counter()

    def hit(self, what: str) -> None:
        self.total += 1
        self.words[what] += 1


@contextlib.contextmanager
def counting(counter: Counter):
    """Count every statement of sqlite3, psycopg and the Redis wire while the block runs (and for the
    connections it opens)."""
    patches = []
    real_connect = sqlite3.connect

    def connect(*args, **kwargs):
        connection = real_connect(*args, **kwargs)
        connection.set_trace_callback(lambda text: counter.hit(" ".join(text.split()[:2]).upper()))
        return connection



    sqlite3.connect = sqlite3.dbapi2.connect = connect
    patches.append(lambda: (setattr(sqlite3, "connect", real_connect), setattr(sqlite3.dbapi2, "connect", real_connect)))
    try:
        import psycopg

        real_execute, real_commit = psycopg.Cursor.execute, psycopg.Connection.commit

        def execute(self, query, *args, **kwargs):
            counter.hit(" ".join(str(query).split()[:2]).upper())
            return real_execute(self, query, *args, **kwargs)

        def commit(self):
            counter.hit("COMMIT")
            return real_commit(self)

        psycopg.Cursor.execute, psycopg.Connection.commit = execute, commit
        patches.append(lambda: (setattr(psycopg.Cursor, "execute", real_execute),
                                setattr(psycopg.Connection, "commit", real_commit)))
    except ImportError:
        pass
    try:
        from bastion_storage_redis.wire import Wire

        real_round_trip = Wire._round_trip

        def round_trip(self, pack, read):
            counter.hit("redis")
            return real_round_trip(self, pack, read)

        Wire._round_trip = round_trip
        patches.append(lambda: setattr(Wire, "_round_trip", real_round_trip))
    except ImportError:
        pass
    try:
        yield counter
    finally:
        for undo in reversed(patches):
            undo()


def state_rows(runtime) -> int | None:
    """State rows (SQL) or keys (Redis) the state store holds, or None when it cannot say cheaply."""
    state = runtime.state
    for name in ("state_count", "key_count"):
        if hasattr(state, name):
            return getattr(state, name)()
    return None


def measure(backend, calls: int, bench: Bench) -> dict:
    from kernel.core.config import load_config
    from kernel.core.runtime import Runtime
    from kernel.http.app import create_app
    from kernel.ops.metrics import Metrics

    store = backend.start()
    try:
        domains = ["n10.localhost", "a10.localhost", "upd.localhost"]
        sections = bench.sections(store, domains)
        directory = tempfile.mkdtemp(dir=bench.tmp)
        counter = Counter()
        with counting(counter):
            config = load_config(write_config(sections, directory))
            app = create_app(Runtime(config, metrics=Metrics.from_config(config)).start())
            try:
                fill.fill_plan(app.runtime.records, [("n10.localhost", 10, "t"), ("a10.localhost", 10, "t"),
                                                     ("upd.localhost", calls, "u")])
                out = {"backend": backend.name, "label": backend.label, "calls": calls, "ops": {}}
                for op, domain in zip(OPS, domains, strict=True):
                    client = Client(app=app, host=domain)
                    client.login("bench", bench.password)
                    signer = load.Signer(sid=client.session.sid, key=client.session.key, domain=domain, host=domain)
                    environs = _requests(signer, op, calls)
                    counter.total, counter.words = 0, collections.Counter()
                    started = time.perf_counter()
                    bad = _call_all(app, environs)
                    elapsed = time.perf_counter() - started
                    out["ops"][op] = {"statements_per_call": round(counter.total / calls, 2),
                                      "by_kind": {k: round(v / calls, 2) for k, v in counter.words.most_common()},
                                      "non200": bad, "us_per_call": round(elapsed / calls * 1e6, 1)}
                out["state_rows_after"] = state_rows(app.runtime)
                out["signed_calls"] = calls * len(OPS)
            finally:
                app.runtime.close()
        return out
    finally:
        store.stop()


class Clock:
    """A clock the bounded run moves by hand."""

    def __init__(self):
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def bounded(url: str, calls: int, sessions: int = 10, rate: float = 200.0) -> dict:
    """The state traffic of ``calls`` signed calls, on the SQL driver's state store with a clock moved by hand:
    ``sessions`` sessions each sending ``rate / sessions`` calls a (simulated) second, each call reading the
    session, recording its nonce (``add(..., if_live=session)``, TTL 2 × skew + 1 = 121 s) and sliding the
    session once a second, as bastion_auth does. Returns the rows held at the end, and the bound: the live
    sessions, plus the nonces of the last 121 s, plus what the adaptive purge may leave behind (one interval
    of writes, ``PURGE_INTERVAL`` s, or ``PURGE_EVERY`` writes, whichever comes first)."""
    from bastion_storage_sql import SqlDriver
    from bastion_storage_sql.state import PURGE_EVERY, PURGE_INTERVAL

    clock = Clock()
    driver = SqlDriver(url, clock=clock)
    domain, nonce_ttl, idle = "bounded.localhost", 121, 1800
    try:
        for s in range(sessions):
            driver.set(domain, f"session:s{s}", {"u": f"user{s}", "i": clock.now + idle}, idle * 2)
        last_slide = [clock.now] * sessions
        peak = 0
        for call in range(calls):
            s = call % sessions
            session = f"session:s{s}"
            driver.get_many(domain, ["abuse:127.0.0.1", session])
            assert driver.add(domain, f"nonce:s{s}:{call}", 1, nonce_ttl, if_live=session)
            if clock.now - last_slide[s] >= 1:
                driver.replace(domain, session, {"u": f"user{s}", "i": clock.now + idle}, idle * 2)
                last_slide[s] = clock.now
            clock.now += 1 / rate
            if call % 1000 == 999:
                peak = max(peak, driver.state_count())
        held = driver.state_count()
        window = min(calls, int(nonce_ttl * rate))
        slack = min(int(PURGE_INTERVAL * rate), PURGE_EVERY)
        return {"calls": calls, "simulated_s": round(calls / rate), "held": held, "peak": peak,
                "bound": sessions + window + slack, "sessions": sessions, "nonces_in_window": window}
    finally:
        driver.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.statements", description=__doc__)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--only", nargs="*", default=("sqlite", "postgresql", "redis", "mixed"))
    parser.add_argument("--bounded", type=int, default=0, metavar="N",
                        help="instead: the state rows held after N signed calls' state traffic (SQL drivers)")
    args = parser.parse_args(argv)
    if args.bounded:
        return main_bounded(args)
    bench = Bench(Plan.make(True))
    try:
        for backend in backends():
            if backend.name not in args.only or not backend.available or backend.in_process:
                continue
            result = measure(backend, args.calls, bench)
            print(f"{backend.label}: state rows/keys after {result['signed_calls']} signed calls: "
                  f"{result['state_rows_after']}")
            for op, figures in result["ops"].items():
                print(f"  {op:8} {figures['statements_per_call']:5.2f} per call  {figures['by_kind']}"
                      f"  ({figures['us_per_call']:.0f} us/call, non-200 {figures['non200']})", flush=True)
    finally:
        bench.close()
    return 0


def main_bounded(args) -> int:
    bench = Bench(Plan.make(True))
    try:
        for backend in backends():
            if backend.name not in args.only or not backend.available or backend.name not in ("sqlite", "postgresql"):
                continue
            store = backend.start()
            try:
                started = time.monotonic()
                result = bounded(store.storage, args.bounded)
            finally:
                store.stop()
            print(f"{backend.label}: {result['held']} state rows after {result['calls']:,} signed calls "
                  f"({result['simulated_s']} s simulated; peak {result['peak']}); bound {result['bound']} "
                  f"= {result['sessions']} sessions + {result['nonces_in_window']} nonces of the last 121 s + purge "
                  f"slack; {'within' if result['held'] <= result['bound'] else 'OVER'} "
                  f"({time.monotonic() - started:.0f} s)", flush=True)
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
