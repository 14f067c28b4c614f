"""``python -m bench.inprocess --before REVISION``: a signed call's CPU in process, this checkout against an earlier one.

What a change to the pipeline saves is a few per cent of a call, less than two served runs minutes apart differ
on a shared machine; in process, with no HTTP and nothing else in the way, it can be seen, if the two codes are
timed under the same load. Each round starts two processes: one runs this checkout's code, the other the code of
``--before`` (checked out in a temporary worktree, first on ``PYTHONPATH``). Each builds Bastion's app as
``bench.interleaved``'s ``in-process`` variant does (SQLite, production settings behind a proxy) and logs in; then
they take turns, one *slice* at a time: ``--calls`` signed calls of the case, timed by the thread's own CPU
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


def child(case: str) -> None:
    """The measured process: build the app, then time a slice of ``N`` calls for each ``N`` read on stdin."""
    from bench import ceiling
    from bench.interleaved import CASES, Interleaved, _environ

    op, todos = CASES[case]
    bench = Interleaved(argparse.Namespace(workers=2, threads=4, connections=1, update_budget=10))
    statuses: list[str] = []

    def start_response(status, headers, exc_info=None):
        statuses.append(status)

    try:
        bastion = bench.bastion("in-process")
        bench.current_case = case
        assert bastion.app is not None  # the in-process variant's target is an app, not a URL
        apps: dict[str, Callable] = {"ceiling": ceiling.create_app(todos), "bastion": bastion.app}
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            calls = int(line)
            figures = {}
            for name, app in apps.items():
                environs = [_environ(signed) for signed in bastion.lines(op, calls)]
                statuses.clear()
                started = time.thread_time()
                for environ in environs:
                    b"".join(app(environ, start_response))
                cost = (time.thread_time() - started) / calls * 1e6
                refused = [status for status in statuses if not status.startswith("200")]
                if refused:
                    raise RuntimeError(f"{name}: {len(refused)} of {calls} calls answered {refused[0]}")
                figures[name] = round(cost, 1)
            print(json.dumps(figures), flush=True)
    finally:
        bench.close()


class Measured:
    """One measured process running the code of ``root``, timing a slice when asked."""

    def __init__(self, root: Path, case: str):
        roots = [root, *sorted(root.glob("plugins/*"))]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, roots))}
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

    folder = Path(tempfile.mkdtemp(prefix="bastion-inprocess-")) / "before"
    subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", "--quiet", str(folder), args.before],
                   check=True)
    samples: list[dict] = []
    started = time.time()
    try:
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
    finally:
        subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(folder)], check=False)

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
        child(sys.argv[2])
        sys.exit(0)
    sys.exit(main())
