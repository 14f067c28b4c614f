"""``python -m bench.inprocess --before REVISION``: a signed call's CPU in process, this checkout against an earlier one.

What a change to the pipeline saves is a few per cent of a call, less than two served runs minutes apart differ
on a shared machine; in process, with no HTTP and nothing else in the way, it can be seen, if the two codes are
timed under the same load. Each round starts two processes: one runs this checkout's code, the other the code of
``--before`` (checked out in a temporary worktree, first on ``PYTHONPATH``). Each builds Bastion's app as
``bench.interleaved``'s ``in-process`` variant does (SQLite, production settings behind a proxy), fills its tenant
and logs in, with no more of the measured checkout than its kernel, its plugins and its ``bench/fill.py``, so that
any revision since round 2 (``163da6a``, with the kernel's modules where they were then) can be the one compared
with; then they take turns, one *slice* at a time: ``--calls`` signed calls of the case, timed by the thread's own CPU
(``time.thread_time()``), after as many calls of the bare ceiling's app (the same code in both). The other process
waits on its pipe meanwhile, so the two never run at once, and which goes first alternates. A slice of one code and
the next slice of the other ran within a fraction of a second of each other, under the same load: the figure
compared is the ratio of the two, slice pair by slice pair, as a median over every pair of every round, with the
middle half of the pairs' ratios as its spread. The signed lines of a slice are made just before it (their
timestamps must pass the skew), untimed. The ceiling's call is too small (~30 µs) to correct for load by; its µs
say how busy the machine was. Every slice's figures are kept in ``bench/results/inprocess-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


#: The call shapes (op, todos in the tenant) and the bench user, as ``bench.interleaved`` has them.
CASES = {"get_all-10": ("get_all", 10), "get_all-1000": ("get_all", 1000), "add": ("add", 10),
         "update": ("update", 10)}
HOST = "inprocess.bench.localhost"
USERNAME = "bench"
#: Todos filled for the updates of a case (each update names one of its own, at version 1); a measured process
#: takes another number from ``BENCH_UPDATE_BUDGET`` (bench.instructions fills only what it updates).
UPDATE_BUDGET = 100_000


def child(case: str, folder: str) -> None:
    """The measured process: build the app in ``folder`` (its stores and configuration files), then time a slice
    of ``N`` calls for each ``N`` read on stdin.

    It runs with the measured checkout first on the path, and imports of it only what every revision since
    round 2 has: the kernel (its modules in ``kernel.core`` and ``kernel.http``, or where round 2 kept them),
    ``kernel.client``, ``kernel.testing.write_config`` and ``bench.fill``. The ceiling's app and the signing of
    the calls are this file's and ``bench/ceiling.py``'s, the same in both processes. Bastion is configured as
    ``bench.interleaved``'s ``in-process`` variant: SQLite, production settings behind a proxy.
    """
    import base64
    import hashlib
    import hmac
    import importlib.util
    import io
    import secrets

    try:
        from kernel.core.config import load_config
        from kernel.core.runtime import Runtime
        from kernel.http.app import create_app
    except ImportError:  # the layout before the kernel's layers (round 2)
        from kernel.app import create_app  # type: ignore[no-redef]
        from kernel.config import load_config  # type: ignore[no-redef]
        from kernel.runtime import Runtime  # type: ignore[no-redef]
    from passlib.hash import argon2

    from bench import fill
    from kernel.client import Client
    from kernel.testing import write_config

    spec = importlib.util.spec_from_file_location("bench_ceiling", Path(__file__).with_name("ceiling.py"))
    assert spec is not None and spec.loader is not None
    ceiling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ceiling)

    op, todos = CASES[case]
    budget = int(os.environ.get("BENCH_UPDATE_BUDGET", UPDATE_BUDGET))
    password = secrets.token_urlsafe(12)
    sections = {"bastion": {"development": True, "storage": f"sqlite:///{folder}/bastion.sqlite3",
                            "allowed_hosts": HOST, "trusted_proxies": "127.0.0.1/32"},
                "auth": {"demo_user": False},
                "users": {f"{USERNAME}@{HOST}": argon2.using(rounds=1, memory_cost=1024, parallelism=1).hash(password)}}
    runtime = Runtime(load_config(write_config(sections, tempfile.mkdtemp(dir=folder))))
    try:  # the schema made as development mode makes it, then the tenant's todos
        fill.fill(runtime.records, HOST, budget if op == "update" else todos, "u" if op == "update" else "t")
    finally:
        runtime.close()
    sections["bastion"]["development"] = False
    runtime = Runtime(load_config(write_config(sections, tempfile.mkdtemp(dir=folder)))).start()
    inner = create_app(runtime)

    def bastion(environ, start_response):  # behind the proxy, as the served targets are
        environ["HTTP_X_FORWARDED_PROTO"] = "https"
        return inner(environ, start_response)

    client = Client(app=bastion, host=HOST)
    client.login(USERNAME, password)
    assert client.session is not None
    sid, key, offset = client.session.sid, client.session.key, client.offset or 0
    updates = (fill.todo_id("u", i) for i in range(budget))

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    def body() -> bytes:
        if op == "get_all":
            return b"{}"
        if op == "add":
            return b'{"args":["buy oat milk"]}'
        return json.dumps({"args": [next(updates), 1], "kwargs": {"done": True}}, separators=(",", ":")).encode()

    def environs(calls: int) -> list[dict]:
        """Signed calls (protocol version 1), each with its own nonce and the current ts, as WSGI environs."""
        ts, path, made = str(int(time.time() + offset)), f"/api/{op}", []
        for _ in range(calls):
            data, nonce = body(), b64(secrets.token_bytes(16))
            text = "\n".join(("bastion-hmac-v1", ts, nonce, "POST", path, HOST, b64(hashlib.sha256(data).digest())))
            mac = b64(hmac.new(key, text.encode(), hashlib.sha256).digest())
            made.append({"REQUEST_METHOD": "POST", "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "",
                         "RAW_URI": path, "SERVER_NAME": HOST, "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
                         "REMOTE_ADDR": "127.0.0.1", "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
                         "wsgi.input": io.BytesIO(data), "wsgi.errors": sys.stderr, "wsgi.multithread": True,
                         "wsgi.multiprocess": False, "wsgi.run_once": False, "HTTP_HOST": HOST,
                         "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(data)),
                         "HTTP_AUTHORIZATION": f'Bastion-HMAC sid="{sid}", ts="{ts}", nonce="{nonce}", mac="{mac}"'})
        return made

    statuses: list[str] = []

    def start_response(status, headers, exc_info=None):
        statuses.append(status)

    try:
        apps: dict[str, Callable] = {"ceiling": ceiling.create_app(todos), "bastion": bastion}
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            # "N": a slice of N calls of each app; "N bastion", "N ceiling": of that one; "N none": only the signed
            # lines of N calls made (what bench.instructions counts apart from the calls).
            count, *only = line.split()
            calls = int(count)
            figures = {}
            if only == ["none"]:
                environs(calls)
            for name, app in apps.items():
                if only and name not in only:
                    continue
                made = environs(calls)
                statuses.clear()
                started = time.thread_time()
                for environ in made:
                    b"".join(app(environ, start_response))
                cost = (time.thread_time() - started) / calls * 1e6
                refused = [status for status in statuses if not status.startswith("200")]
                if refused:
                    raise RuntimeError(f"{name}: {len(refused)} of {calls} calls answered {refused[0]}")
                figures[name] = round(cost, 1)
            print(json.dumps(figures), flush=True)
    finally:
        runtime.close()


def measured_environment(root: Path, **extra: str) -> dict[str, str]:
    """The environment of a measured process running the code of ``root``: it and its plugins first on the path."""
    roots = [root, *sorted(root.glob("plugins/*"))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, roots)), **extra}


class Measured:
    """One measured process running the code of ``root``, timing a slice when asked."""

    def __init__(self, root: Path, case: str):
        env = measured_environment(root)
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", case], env=env,
                                        cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._answer()  # built and logged in

    def _answer(self) -> dict:
        assert self.process.stdout is not None
        while True:
            line = self.process.stdout.readline()
            if not line:
                self.process.wait(timeout=60)
                raise RuntimeError(f"the measured process ended (exit {self.process.returncode}); its errors are "
                                   "above")
            if line.startswith("{"):  # anything else is what the app's set-up printed
                return json.loads(line)

    def slice(self, calls: int) -> dict:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{calls}\n")
        self.process.stdin.flush()
        return self._answer()

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def quartiles(values: list[float]) -> tuple[float, float]:
    """The first and third quartiles (the middle half of ``values``)."""
    if len(values) < 4:
        return min(values), max(values)
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inprocess", description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", metavar="REVISION", required=True, help="the git revision to compare with")
    parser.add_argument("--cases", nargs="*", default=["get_all-10", "add"], choices=["get_all-10", "get_all-1000",
                                                                                      "add", "update"])
    parser.add_argument("--rounds", type=int, default=2, help="pairs of processes per case")
    parser.add_argument("--slices", type=int, default=20, help="slices of each code per round, taking turns")
    parser.add_argument("--calls", type=int, default=300, help="calls per slice")
    args = parser.parse_args(argv)
    from bench.procs import install_signal_handlers, worktree  # here: a measured process may see an older bench

    install_signal_handlers()

    samples: list[dict] = []
    started = time.time()
    with worktree(REPO_ROOT, args.before) as folder:
        for case in args.cases:
            for number in range(1, args.rounds + 1):
                codes = {"after": Measured(REPO_ROOT, case), "before": Measured(folder, case)}
                try:
                    for measured in codes.values():
                        measured.slice(args.calls)  # warm: the first calls of a process pay for its imports' caches
                    for index in range(args.slices):
                        order = ["after", "before"] if index % 2 == 0 else ["before", "after"]
                        figures = {name: codes[name].slice(args.calls) for name in order}
                        ratio = figures["after"]["bastion"] / figures["before"]["bastion"]
                        samples.append({"case": case, "round": number, "slice": index + 1, "first": order[0],
                                        "after": figures["after"], "before": figures["before"],
                                        "after_over_before": round(ratio, 4)})
                finally:
                    for measured in codes.values():
                        measured.close()
                mine = [s for s in samples if s["case"] == case and s["round"] == number]
                print(f"{case:11s} round {number}: Bastion after "
                      f"{statistics.median(s['after']['bastion'] for s in mine):7.1f} µs, before "
                      f"{statistics.median(s['before']['bastion'] for s in mine):7.1f} µs, after / before "
                      f"{statistics.median(s['after_over_before'] for s in mine):.3f} (median of {len(mine)} "
                      f"slice pairs)", flush=True)

    print(f"\nin process, slices of {args.calls} calls, {args.slices} slice pairs in each of {args.rounds} rounds "
          f"(before = {args.before})\n")
    print("| case | Bastion µs per call, before (median) | after (median) | after / before, slice pair by slice pair "
          "(median, middle half) | ceiling µs (load) |")
    print("|---|---:|---:|---:|---:|")
    summary = []
    for case in args.cases:
        mine = [s for s in samples if s["case"] == case]
        ratios = [s["after_over_before"] for s in mine]
        low, high = quartiles(ratios)
        row = {"case": case, "before_us": statistics.median(s["before"]["bastion"] for s in mine),
               "after_us": statistics.median(s["after"]["bastion"] for s in mine),
               "after_over_before": round(statistics.median(ratios), 3), "q1": round(low, 3), "q3": round(high, 3),
               "pairs": len(ratios),
               "ceiling_us": statistics.median(s[code]["ceiling"] for s in mine for code in ("after", "before"))}
        summary.append(row)
        print(f"| {case} | {row['before_us']:.0f} | {row['after_us']:.0f} | {row['after_over_before']:.3f} "
              f"({row['q1']:.3f}–{row['q3']:.3f}) | {row['ceiling_us']:.0f} |")
    results = REPO_ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    path = results / f"inprocess-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"args": vars(args), "started": started, "seconds": round(time.time() - started),
                                "load": list(os.getloadavg()), "samples": samples, "summary": summary}, indent=1))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.path[0] = os.getcwd()  # the measured checkout (the script's own folder is not a package root)
        with tempfile.TemporaryDirectory(prefix="bastion-inprocess-child-") as place:
            child(sys.argv[2], place)
        sys.exit(0)
    sys.exit(main())
