"""In-process profile of the signed-call path (cProfile), per storage configuration.

The app is built in this process and called through plain WSGI (no sockets,
no gunicorn), so the profile shows only Bastion's own work per call: header
parsing, session load, MAC, nonce, session slide, service, storage, JSON and
response signing. The bare Falcon ceiling is timed the same way for a
noise-free ratio. Full profiles go to ``bench/results/<stamp>-profile-*.txt``.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

from bench import ceiling, fill, load
from bench.backends import backends
from kernel.client import Client
from kernel.testing.servers import write_config

#: The checkout this bench runs from: its files are named relative to it in the profiles.
REPOSITORY = Path(__file__).resolve().parent.parent

RESULTS = Path(__file__).with_name("results")

#: Functions whose cumulative time is reported as a share of the call (file suffix, function name).
WATCH = [
    ("bastion_auth/core.py", "authenticate", "authenticate (steps 6-10)"),
    ("bastion_auth/sessions.py", "load", "session load"),
    ("bastion_auth/sessions.py", "touch", "session slide (touch)"),
    ("bastion_auth/abuse.py", "check", "abuse ban check"),
    ("kernel/core/signing.py", "parse_authorization", "parse Authorization"),
    ("kernel/core/signing.py", "request_mac", "request MAC"),
    ("kernel/core/signing.py", "response_mac", "response MAC"),
    ("kernel/core/services.py", "__call__", "service (bind + run)"),
    ("kernel/core/store.py", "commit", "unit of work commit"),
    ("kernel/core/store.py", "select", "unit of work select"),
    ("kernel/http/app.py", "dumps", "response JSON encode"),
    ("kernel/http/app.py", "parse_call", "request JSON parse"),
    ("copy.py", "deepcopy", "copy.deepcopy"),
]
#: Calls that are one round trip to the backend each.
ROUND_TRIPS = [
    ("bastion_storage_redis/wire.py", "execute"),
    ("bastion_storage_redis/wire.py", "pipeline"),  # one round trip for the whole pipeline
    ("bastion_storage_redis/wire.py", "eval"),
    ("~", "<method 'execute' of 'sqlite3.Cursor' objects>"),
    ("~", "<method 'execute' of 'sqlite3.Connection' objects>"),
    ("psycopg/cursor.py", "execute"),
]


def _environ(host: str, path: str, auth: str, body: bytes) -> dict:
    return {"REQUEST_METHOD": "POST", "SCRIPT_NAME": "", "PATH_INFO": path, "RAW_URI": path, "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_HOST": host, "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
            "HTTP_AUTHORIZATION": auth, "REMOTE_ADDR": "127.0.0.1", "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr, "wsgi.url_scheme": "http", "wsgi.version": (1, 0),
            "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False}


def _requests(signer: load.Signer, op: str, n: int) -> list[dict]:
    from bench.run import Bench

    out = []
    for line in load.signed_lines(signer, f"/api/{op}", Bench.bodies(op), n):
        host, path, auth, body = line.rstrip("\n").split("\t")
        out.append(_environ(host, path, auth, body.encode()))
    return out


def _call_all(app, environs: list[dict]) -> int:
    bad = 0
    status = []

    def start_response(s, headers, exc_info=None):
        status.append(s)

    for env in environs:
        status.clear()
        b"".join(app(env, start_response))
        if not status[0].startswith("200"):
            bad += 1
    return bad


def _stat_rows(stats: pstats.Stats, n: int) -> tuple[list[dict], dict, dict]:
    total = stats.total_tt or 1e-9
    rows, watch, trips = [], {}, {}
    for (filename, line, func), (_, nc, tt, ct, _) in stats.stats.items():
        for suffix, name, label in WATCH:
            if filename.endswith(suffix) and func == name:
                watch[label] = watch.get(label, 0.0) + ct
        for suffix, name in ROUND_TRIPS:
            if (filename.endswith(suffix) or filename == suffix) and func == name:
                trips[f"{Path(filename).name}:{name}"] = round(nc / n, 2)
        rows.append({"where": f"{_short(filename)}:{line}({func})", "ncalls_per_req": round(nc / n, 2),
                     "tottime_us": round(tt / n * 1e6, 1), "cumtime_us": round(ct / n * 1e6, 1),
                     "tottime_share": round(tt / total, 3)})
    rows.sort(key=lambda r: -r["tottime_us"])
    watch = {k: {"us_per_call": round(v / n * 1e6, 1), "share": round(v / total, 3)} for k, v in watch.items()}
    return rows[:25], watch, trips


def _short(filename: str) -> str:
    for marker in ("site-packages/", str(REPOSITORY) + "/", "lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def per_call(app, make, n: int, clock=time.perf_counter) -> float:
    """µs of ``clock`` per call of ``n`` requests made by ``make(n)``; RuntimeError if any does not answer 200."""
    environs = make(n)
    start = clock()
    bad = _call_all(app, environs)
    elapsed = clock() - start
    if bad:
        raise RuntimeError(f"{bad} of {n} calls did not answer 200")
    return elapsed / n * 1e6


def profile_backend(bench, backend, calls: int, stamp: str) -> list[dict]:
    """Profile get_all (10 todos) and add on one configuration, in process."""
    from kernel.core.config import load_config
    from kernel.core.runtime import Runtime
    from kernel.http.app import create_app
    from kernel.ops.metrics import Metrics

    store = backend.start()
    out = []
    try:
        domain = "n10.localhost"
        sections = bench.sections(store, [domain])
        directory = tempfile.mkdtemp(dir=bench.tmp)
        config = load_config(write_config(sections, directory))
        app = create_app(Runtime(config, metrics=Metrics.from_config(config)).start())
        try:
            fill.fill(app.runtime.records, domain, 10)
            client = Client(app=app, host=domain)
            client.login("bench", bench.password)
            signer = load.Signer(sid=client.session.sid, key=client.session.key, domain=domain, host=domain)
            bare = ceiling.create_app(10)
            for op in ("get_all", "add"):
                make = lambda n, op=op: _requests(signer, op, n)  # noqa: E731
                per_call(app, make, min(200, calls))  # warm up
                bastion_us = per_call(app, make, calls)
                ceiling_us = per_call(bare, make, calls)
                environs = make(calls)
                profiler = cProfile.Profile()
                profiler.enable()
                bad = _call_all(app, environs)
                profiler.disable()
                stats = pstats.Stats(profiler)
                rows, watch, trips = _stat_rows(stats, calls)
                text = io.StringIO()
                pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(40)
                pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(40)
                RESULTS.mkdir(exist_ok=True)
                path = RESULTS / f"{stamp}-profile-{backend.name}-{op}.txt"
                path.write_text(text.getvalue().replace(str(Path.cwd()) + "/", ""))
                out.append({"backend": backend.name, "label": backend.label, "op": op, "calls": calls,
                            "non200": bad, "bastion_us_per_call": round(bastion_us, 1),
                            "ceiling_us_per_call": round(ceiling_us, 1),
                            "ratio": round(ceiling_us / bastion_us, 3), "watch": watch,
                            "round_trips_per_call": trips, "top": rows, "file": path.name})
                print(f"  profile {backend.name:8} {op:8} {bastion_us:8.0f} us/call in process "
                      f"(ceiling {ceiling_us:.0f} us, {ceiling_us / bastion_us:.0%})  round trips {trips}",
                      flush=True)
        finally:
            app.runtime.close()
    finally:
        store.stop()
    return out


def profile_all(bench, quick: bool, commit: str = "") -> list[dict]:
    """Profile mem://, SQLite, PostgreSQL and Redis (those available); files named after the run's ``commit``."""
    from bench.report import stamp

    print("profile (in process, cProfile)", flush=True)
    calls = 200 if quick else 1000
    out = []
    for backend in backends():
        if backend.name in ("mem", "sqlite", "postgresql", "redis") and backend.available:
            if bench.plan.only and backend.name not in bench.plan.only:
                continue
            try:
                out.extend(profile_backend(bench, backend, calls, stamp(bench.plan.quick, bench.plan.only, commit)))
            except Exception as exc:
                print(f"  profile {backend.name} failed: {exc}", flush=True)
    return out


__all__ = ["profile_all"]
