"""``python -m bench.gaps``: what a pause between two calls adds to each call's CPU, for the ceiling and for Bastion.

Both apps are called in this process, with no HTTP, one call at a time: the
ceiling's (``bench/ceiling.py``, the bare Falcon app) and Bastion's (its
production configuration on SQLite, as ``bench.interleaved`` builds its
``in-process`` target). Between two calls the thread either goes on at once
(gap 0), *sleeps* for the gap (the core goes to other work, as a served
worker's thread does while it waits for the next request, the GIL or a lock),
or *spins* for it (it keeps the core). Each call's own CPU is read with
``time.thread_time()`` around the call alone, so the pause itself is never
counted; only what the call costs more after it.

The passes are interleaved (every app and gap in turn, the order rotating
from pass to pass) so that the machine's load hits them alike; the table
gives the medians over passes and what each pause adds to a call, in µs and
as a factor. Results go to ``bench/results/gaps-<time>.json``;
docs/benchmarks.md ("Why a served call costs more on a busy machine") reads
them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from bench.procs import install_signal_handlers

REPO_ROOT = Path(__file__).resolve().parents[1]


def pause(kind: str, seconds: float) -> None:
    if not seconds:
        return
    if kind == "sleep":
        time.sleep(seconds)
        return
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


def measure(app, environs: list[dict], kind: str, gap: float) -> float:
    """The median CPU in µs of one call of ``app`` over ``environs``, each call after a pause of ``gap`` seconds."""
    def start_response(status, headers, exc_info=None):
        if not status.startswith(("200", "201")):
            raise RuntimeError(f"the app answered {status}")

    costs = []
    for environ in environs:
        pause(kind, gap)
        began = time.thread_time()
        b"".join(app(environ, start_response))
        costs.append(time.thread_time() - began)
    return statistics.median(costs) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gaps", description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--calls", type=int, default=400, help="calls per app, gap and pass")
    parser.add_argument("--gaps", type=float, nargs="*", default=[0.2, 1.0, 3.0], help="pauses, in milliseconds")
    parser.add_argument("--case", choices=["get_all-10", "add"], default="get_all-10")
    args = parser.parse_args(argv)
    install_signal_handlers()

    from bench import ceiling
    from bench.interleaved import CASES, Interleaved, _environ

    op, todos = CASES[args.case]
    bench = Interleaved(argparse.Namespace(workers=2, threads=4, connections=1, update_budget=10))
    try:
        bastion = bench.bastion("in-process")
        bench.current_case = args.case
        apps = {"ceiling": ceiling.create_app(todos), "bastion": bastion.app}
        modes = [("none", 0.0)] + [(kind, gap / 1000) for gap in args.gaps for kind in ("sleep", "spin")]
        samples: list[dict] = []
        started = time.time()
        for number in range(args.passes):
            order = [(name, kind, gap) for kind, gap in modes for name in apps]
            shift = number % len(order)
            for name, kind, gap in order[shift:] + order[:shift]:
                environs = [_environ(line) for line in bastion.lines(op, args.calls)]
                cost = measure(apps[name], environs, kind, gap)
                samples.append({"pass": number + 1, "app": name, "pause": kind, "gap_ms": gap * 1000,
                                "cpu_us_per_call": round(cost, 1)})
                print(f"pass {number + 1} {name:8s} {kind:5s} {gap * 1000:4.1f} ms  {cost:8.1f} µs/call", flush=True)
    finally:
        bench.close()

    rows = []
    base = {}
    for kind, gap in modes:
        for name in apps:
            costs = [s["cpu_us_per_call"] for s in samples
                     if s["app"] == name and s["pause"] == kind and s["gap_ms"] == gap * 1000]
            median = statistics.median(costs)
            if kind == "none":
                base[name] = median
            rows.append({"app": name, "pause": kind, "gap_ms": gap * 1000, "cpu_us_per_call": round(median, 1),
                         "min": min(costs), "max": max(costs), "added_us": round(median - base[name], 1),
                         "factor": round(median / base[name], 2)})
    outcome = {"case": args.case, "args": vars(args), "started": started, "seconds": round(time.time() - started),
               "load": list(os.getloadavg()), "samples": samples, "summary": rows}
    results = REPO_ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    path = results / f"gaps-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(outcome, indent=1))
    print(f"\n{args.case}: CPU per call (median over {args.passes} passes of {args.calls} calls)\n")
    print("| pause before each call | ceiling µs | added | Bastion µs | added | Bastion's added / ceiling's |")
    print("|---|---:|---:|---:|---:|---:|")
    by = {(r["app"], r["pause"], r["gap_ms"]): r for r in rows}
    for kind, gap in modes:
        c, b = by["ceiling", kind, gap * 1000], by["bastion", kind, gap * 1000]
        label = "none" if kind == "none" else f"{kind} {gap * 1000:g} ms"
        times = f"{b['added_us'] / c['added_us']:.1f}×" if c["added_us"] > 0 else "—"
        print(f"| {label} | {c['cpu_us_per_call']:.0f} | {c['added_us']:+.0f} | {b['cpu_us_per_call']:.0f} "
              f"| {b['added_us']:+.0f} | {times} |")
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
