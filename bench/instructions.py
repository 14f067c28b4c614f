"""``python -m bench.instructions --before REVISION``: the instructions a signed call executes in process, this
checkout against an earlier one.

Time on a shared machine moves with its load; the number of instructions a process executes hardly does. So a
change of a few per cent to a call, which a timed comparison (``bench.inprocess``) resolves only to about 5 %,
shows here to a tenth of a per cent. The count is what valgrind's callgrind tool counts: the instructions of the
process in user space (the interpreter, SQLite's library, OpenSSL's HMAC, orjson). It leaves out the kernel's
work for the process's system calls (SQLite's file locks and WAL writes, a socket's reads and writes), and an
instruction's cost, which caches and the machine's load change: it says what a change to the code saves, not
what a call costs in time.

For each case and each code (this checkout, and ``--before`` in a temporary worktree), it runs
``bench.inprocess``'s measured process twice under callgrind, each time with the same set-up and a warm slice of
``--warm`` Bastion calls, then:

* **calls**: ``--calls`` signed calls of the case, sent to Bastion's app;
* **lines**: the signed lines of as many calls, made and not sent;

each in slices of 50. The difference of the two counts over ``--calls`` is what one call of Bastion executes,
without the client's work of signing it. ``PYTHONHASHSEED`` is fixed, so that two runs of one code walk their
sets and dicts alike: two measurements of one code then agree to about 0.01 %. Both runs of a code go at once
(one per core), under any load. The counts are kept in ``bench/results/instructions-<time>.json``. valgrind is installed (Debian,
as root) when it is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.inprocess import REPO_ROOT, measured_environment
from bench.procs import install_signal_handlers, worktree

#: The cases counted (an update names a todo of its own: the measured process fills as many as it updates).
CASES = ("get_all-10", "get_all-1000", "add", "update")
_COLLECTED = re.compile(r"Collected : (\d+)")


def ensure_valgrind() -> str:
    """The path of valgrind, installed with apt-get (as root, on Debian) when missing."""
    found = shutil.which("valgrind")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "valgrind"], check=True, stdout=subprocess.DEVNULL)
        found = shutil.which("valgrind")
    if found is None:
        raise SystemExit("bench.instructions needs valgrind (apt-get install valgrind)")
    return found


def count(valgrind: str, root: Path, case: str, lines: str, budget: int) -> int:
    """The instructions one measured process executes, running the code of ``root`` and reading ``lines``."""
    env = measured_environment(root, PYTHONHASHSEED="0", BENCH_UPDATE_BUDGET=str(budget))
    with tempfile.TemporaryDirectory(prefix="bastion-instructions-") as folder:
        done = subprocess.run([valgrind, "--tool=callgrind", f"--callgrind-out-file={folder}/callgrind.out",
                               sys.executable, str(Path(__file__).with_name("inprocess.py")), "--child", case],
                              input=lines, env=env, cwd=root, capture_output=True, text=True)
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"the measured process of {root} ({case}) failed (exit {done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    return int(found.group(1))


#: Calls per slice: under callgrind a call takes some 15 ms, and a slice's signed lines, made when it starts,
#: must still pass the skew when its last call is made.
SLICE = 50


def per_call(valgrind: str, root: Path, case: str, warm: int, calls: int) -> float:
    """What one call of the case executes in Bastion's app, on the code of ``root``."""
    budget = warm + calls + 2 * SLICE
    slices = -(-calls // SLICE)
    warming = f"{SLICE} bastion\n" * -(-warm // SLICE)
    with ThreadPoolExecutor(max_workers=2) as pool:
        sent = pool.submit(count, valgrind, root, case, warming + f"{SLICE} bastion\n" * slices, budget)
        made = pool.submit(count, valgrind, root, case, warming + f"{SLICE} none\n" * slices, budget)
        return (sent.result() - made.result()) / (slices * SLICE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", metavar="REVISION", required=True, help="the git revision to compare with")
    parser.add_argument("--cases", nargs="*", default=["get_all-10", "add"], choices=CASES)
    parser.add_argument("--warm", type=int, default=100, help="Bastion calls before the counted ones")
    parser.add_argument("--calls", type=int, default=1000, help="calls counted (rounded up to slices of 50)")
    args = parser.parse_args(argv)
    install_signal_handlers()
    valgrind = ensure_valgrind()

    started, rows = time.time(), []
    with worktree(REPO_ROOT, args.before) as folder:
        for case in args.cases:
            after = per_call(valgrind, REPO_ROOT, case, args.warm, args.calls)
            before = per_call(valgrind, folder, case, args.warm, args.calls)
            rows.append({"case": case, "before": round(before), "after": round(after),
                         "after_over_before": round(after / before, 4)})
            print(f"{case:12s} before {before:12,.0f}  after {after:12,.0f}  after / before {after / before:.4f}",
                  flush=True)

    print(f"\ninstructions per signed call in process (callgrind; {args.calls} calls after {args.warm}; "
          f"before = {args.before})\n")
    print("| case | before | after | after / before |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['case']} | {row['before']:,} | {row['after']:,} | {row['after_over_before']:.3f} |")
    results = REPO_ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    path = results / f"instructions-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"args": vars(args), "started": started, "seconds": round(time.time() - started),
                                "rows": rows}, indent=1))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
