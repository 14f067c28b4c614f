"""``python -m bench.inprocess --before REVISION``: a signed call's CPU in process, this checkout against an earlier one.

What a change to the pipeline saves is a few per cent of a call, less than two served runs minutes apart differ
on a shared machine; in process, with no HTTP and nothing else in the way, it can be seen. Each round starts two
fresh processes one after the other (which goes first alternates round by round): one runs this checkout's code,
the other the code of ``--before`` (checked out in a temporary worktree, first on ``PYTHONPATH``). Each process
builds Bastion's app as ``bench.interleaved``'s ``in-process`` variant does (SQLite, production settings behind
a proxy), logs in, and times ``--calls`` signed calls of the case three times, each right after as many calls of
the bare ceiling's app (the same code in both processes), by the thread's own CPU (``time.thread_time()``); the
best of the three is kept. The figure compared is, round by round, the after process's Bastion µs over the
before process's (two processes a minute apart at most): its median over the rounds, with its range. The ceiling's
call is too small (~30 µs) to correct for load by, so its µs are printed only to show how busy the machine was.
Every process's figures are printed and kept in ``bench/results/inprocess-<time>.json``.
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


def child(case: str, calls: int) -> dict:
    """In the measured process: the best of three timings of the case and of the ceiling, µs of CPU per call."""
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
        best = {name: float("inf") for name in apps}
        for _ in range(3):
            for name, app in apps.items():
                environs = [_environ(line) for line in bastion.lines(op, calls)]
                statuses.clear()
                started = time.thread_time()
                for environ in environs:
                    b"".join(app(environ, start_response))
                cost = (time.thread_time() - started) / calls * 1e6
                refused = [status for status in statuses if not status.startswith("200")]
                if refused:
                    raise RuntimeError(f"{name}: {len(refused)} of {calls} calls answered {refused[0]}")
                best[name] = min(best[name], cost)
        return {name: round(cost, 1) for name, cost in best.items()}
    finally:
        bench.close()


def measure(root: Path, case: str, calls: int) -> dict:
    """One measured process running the code of ``root``."""
    roots = [root, *sorted(root.glob("plugins/*"))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, roots))}
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", case, str(calls)], env=env,
                         capture_output=True, text=True, cwd=root, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"the measured process failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inprocess", description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", metavar="REVISION", required=True, help="the git revision to compare with")
    parser.add_argument("--cases", nargs="*", default=["get_all-10", "add"], choices=["get_all-10", "get_all-1000",
                                                                                      "add", "update"])
    parser.add_argument("--rounds", type=int, default=4, help="pairs of processes per case")
    parser.add_argument("--calls", type=int, default=1000, help="calls per timing")
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="bastion-inprocess-")) / "before"
    subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", "--quiet", str(folder), args.before],
                   check=True)
    samples: list[dict] = []
    started = time.time()
    try:
        for case in args.cases:
            for number in range(args.rounds):
                order = [("after", REPO_ROOT), ("before", folder)]
                for name, root in order if number % 2 == 0 else order[::-1]:
                    figures = measure(root, case, args.calls)
                    ratio = figures["bastion"] / figures["ceiling"]
                    samples.append({"case": case, "round": number + 1, "code": name, **figures,
                                    "times_the_ceiling": round(ratio, 2)})
                    print(f"{case:11s} round {number + 1} {name:6s} Bastion {figures['bastion']:8.1f} µs  "
                          f"ceiling {figures['ceiling']:6.1f} µs  ×{ratio:5.1f}", flush=True)
    finally:
        subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(folder)], check=False)

    print(f"\nin process, {args.calls} calls, best of 3 per process, {args.rounds} rounds (before = {args.before})\n")
    print("| case | Bastion µs per call, before (median) | after (median) | after / before, paired by round "
          "(median, min–max) | ceiling µs (load) |")
    print("|---|---:|---:|---:|---:|")
    summary = []
    for case in args.cases:
        rounds = range(1, args.rounds + 1)
        by = {(s["round"], s["code"]): s for s in samples if s["case"] == case}
        paired = [by[r, "after"]["bastion"] / by[r, "before"]["bastion"] for r in rounds]
        row = {"case": case, "before_us": statistics.median(by[r, "before"]["bastion"] for r in rounds),
               "after_us": statistics.median(by[r, "after"]["bastion"] for r in rounds),
               "after_over_before": round(statistics.median(paired), 3), "min": round(min(paired), 3),
               "max": round(max(paired), 3),
               "ceiling_us": statistics.median(s["ceiling"] for s in samples if s["case"] == case)}
        summary.append(row)
        print(f"| {case} | {row['before_us']:.0f} | {row['after_us']:.0f} | {row['after_over_before']:.2f} "
              f"({row['min']:.2f}–{row['max']:.2f}) | {row['ceiling_us']:.0f} |")
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
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]))))
        sys.exit(0)
    sys.exit(main())
