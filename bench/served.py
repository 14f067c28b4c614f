"""``python -m bench.served``: where a served signed call's CPU goes, sampled inside the workers with py-spy.

Bastion is served as ``bench.interleaved`` serves it (production behind a proxy, SQLite, 2 workers × 4
threads), loaded with signed ``get_all`` calls of 10 todos by wrk for ``--seconds``, while ``py-spy record
--gil`` samples each worker: only the samples of a thread holding the GIL count, so a thread waiting on a lock,
the socket or the selector counts nothing, and the shares are of the Python work the workers did. Each line is a
function's inclusive share (its callees included) or self share (its own code), over both workers' samples.
The first line also says how much of the workers' CPU per request the samples account for: the rest is spent
outside Python's bytecode with the GIL (the kernel's sockets, ``epoll`` and wake-ups, SQLite's own work with the
GIL released). ``--variant plain-gthread`` serves Bastion's app on plain gunicorn ``gthread`` instead, and
``--connections 1`` loads it with one call at a time. Needs ``py-spy`` (``pip install py-spy``; the bench extra
installs it) and wrk. The listing goes to stdout and to ``bench/results/served-<time>.txt``.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.interleaved import Interleaved
from bench.procs import install_signal_handlers

#: The functions whose inclusive share is listed (a substring of py-spy's frame name), in the call's order.
WATCHED = (
    ("BastionWorker.wait_for_and_dispatch_events", "the worker's main loop: accepting, gathering heads and bodies"),
    ("Gathering.look", "the main loop's parse of a head, for its body's framing (thrown away)"),
    ("ThreadWorker.handle ", "a pool thread's whole request"),
    ("Request.__init__ (gunicorn/http/message.py", "gunicorn's parse of the request in the thread"),
    ("Handling.handle_request", "the WSGI call and the answer's writing"),
    ("App.__call__ (falcon/app.py", "Falcon: routing, the middleware, the responder"),
    ("Pipeline.run", "the pipeline's steps"),
    ("BanStep.run", "step 3: the ban, with the session read (one state round trip)"),
    ("AuthenticateStep.run", "steps 6-10: credentials, session, MAC, skew, the nonce (one state write)"),
    ("Credentials.verify", "the MAC"),
    ("SqlDriver.add", "the nonce's insert"),
    ("RunStep.run", "the service (get_all: one select)"),
    ("AccountStep.run", "the accounting: metrics and the call line"),
    ("emit (kernel/ops/logs.py", "the call line written"),
    ("Metrics.call", "the call's metrics"),
    ("SignStep.run", "the answer's signature"),
    ("Response.write (gunicorn", "the answer sent"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.served", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy's samples per second")
    parser.add_argument("--variant", choices=["bastion", "plain-gthread"], default="bastion")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args(argv)
    install_signal_handlers()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("bench.served: py-spy is needed (pip install py-spy)", file=sys.stderr)
        return 1
    options = argparse.Namespace(workers=2, threads=4, connections=args.connections, update_budget=100, passes=1, seconds=1,
                                 ceiling_seconds=1, warm=1, cases=["get_all-10"], variants=[args.variant], peers=[],
                                 before="")
    bench = Interleaved(options)
    out = Path(tempfile.mkdtemp(prefix="bastion-served-"))
    try:
        target = bench.bastion(args.variant)
        bench.current_case = "get_all-10"
        bench.run_once(target, "get_all", 2)  # warm
        workers = subprocess.run(["pgrep", "-P", str(target.pid)], capture_output=True, text=True).stdout.split()
        samplers = [subprocess.Popen([spy, "record", "--pid", pid, "--duration", str(int(args.seconds)), "--rate",
                                      str(args.rate), "--gil", "--nonblocking", "--format", "raw", "--output",
                                      str(out / f"{pid}.txt")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    for pid in workers]
        time.sleep(0.5)
        result = bench.run_once(target, "get_all", args.seconds - 1)
        for sampler in samplers:
            sampler.wait()
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        bench.close()
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for path in out.glob("*.txt"):
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames, n = stack.split(";"), int(count)
            total += n
            own[frames[-1]] += n
            for frame in set(frames):
                inclusive[frame] += n
    shutil.rmtree(out, ignore_errors=True)  # the samples are read: the listing below is what is kept
    # Outside the wrk run the workers are idle, and idle threads hold no GIL: the samples are the run's.
    sampled = total / args.rate * 1e6 / max(result.requests, 1)
    lines = [f"{args.variant}, {args.connections} connection{'s' * (args.connections != 1)}: served signed get_all "
             f"of 10 todos: {result.rps} req/s, {result.server_cpu_us_per_req} µs of server CPU per request; "
             f"{total} samples holding the GIL in {len(workers)} workers, {sampled:.0f} µs per request "
             f"({sampled / max(result.server_cpu_us_per_req, 1):.0%} of the CPU)", "",
             "inclusive share of the samples:"]
    for key, what in WATCHED:
        share = sum(n for frame, n in inclusive.items() if frame.startswith(key) or key in frame) / max(total, 1)
        lines.append(f"  {share:6.1%}  {key.strip()}: {what}")
    lines += ["", "the 20 largest self shares:"]
    lines += [f"  {n / max(total, 1):6.1%}  {frame[:110]}" for frame, n in own.most_common(20)]
    text = "\n".join(lines)
    print(text)
    results = Path(__file__).with_name("results")
    results.mkdir(exist_ok=True)
    (results / f"served-{time.strftime('%Y%m%d-%H%M%S')}.txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
