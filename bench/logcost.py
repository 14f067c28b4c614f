"""What the call line and the metrics cost a signed call, measured two ways in the same run.

* **Served** (gunicorn, wrk): the same signed get_all and add against fresh
  servers that differ only in their logging: ``off`` (``log_level = warning``,
  ``[metrics] allow`` empty: no call line, nothing counted), ``metrics`` (counted,
  no line), ``text`` (the default: one text line per call on stderr, a file
  here, and the metrics) and ``json`` (``log_format = json``). The variants run
  in turn, ``rounds`` times (the order reversed every other round), and each
  figure is the median server CPU per request; the cost is a variant's figure
  over ``off``'s, minus one.
* **In process** (no sockets): the same pre-signed calls through the WSGI app
  with logging set up as a server has it (the default handler, writing to a
  file), the variants switched on the one app in short interleaved chunks, the
  thread's own CPU time per call (the fastest chunk); the difference per call,
  over the served ``off`` server CPU per request of the same call, is the
  share of the signed call's server CPU the line takes. This one is far less
  noisy on a shared machine.
"""

from __future__ import annotations

import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import fill, load
from bench.backends import Backend

#: (name, what it is, the sections it adds).
VARIANTS = (
    ("off", "no call line, no metrics", {"bastion": {"log_level": "warning"}, "metrics": {"allow": ""}}),
    ("metrics", "metrics, no call line", {"bastion": {"log_level": "warning"}}),
    ("text", "call line (text) and metrics: the default", {}),
    ("json", "call line (JSON) and metrics", {"bastion": {"log_format": "json"}}),
)
OPS = (("get_all", "n10.localhost"), ("add", "a10.localhost"))
#: The target of the operability issue: logging costs the signed call less than this share of its server CPU.
TARGET = 0.05


#: Seconds of each served run (after the plan's warm-up): shorter than the main runs, there are many.
SERVED_SECONDS = 4.0


def served(bench, backend: Backend) -> list[dict]:
    """The served A/B runs of every variant; return one row per (variant, op) with the median CPU per request."""
    plan = bench.plan
    workers = 1 if backend.in_process else plan.workers
    rounds = 1 if plan.quick else 2
    seconds = min(plan.seconds, SERVED_SECONDS)
    samples: dict[tuple[str, str], list] = {}
    order = list(VARIANTS)
    for round_ in range(rounds):
        for name, _, extra in (order if round_ % 2 == 0 else order[::-1]):
            fill_plan = [("n10.localhost", 10, "t"), ("a10.localhost", 10, "t")]
            store, server = bench.start_phase(backend, [d for d, _, _ in fill_plan], fill_plan, workers, extra=extra)
            try:
                for op, domain in OPS:
                    ceiling = bench.ceiling[(workers, op, 10 if op == "get_all" else 0)]
                    signer = bench.login(server, domain)
                    bodies = bench.bodies(op)
                    bench.wrk(server, load.signed_lines(signer, f"/api/{op}", bodies,
                                                        bench.count(ceiling, plan.warm)), plan.warm, cycle=False)
                    result = bench.wrk(server, load.signed_lines(signer, f"/api/{op}", bodies,
                                                                 bench.count(ceiling, seconds)),
                                       seconds, cycle=False, backend_pids=store.backend_pids)
                    samples.setdefault((name, op), []).append(result)
                    print(f"  logging {backend.name:8} {name:8} {op:8} {result.rps:9.1f} req/s  "
                          f"cpu {result.server_cpu_us_per_req:7.0f} us/req"
                          + ("" if result.valid else f"  !! statuses {result.statuses}"), flush=True)
            finally:
                bench.stop(server)
                store.stop()
    rows = []
    for name, what, _ in VARIANTS:
        for op, _ in OPS:
            results = samples[(name, op)]
            cpu = statistics.median(r.server_cpu_us_per_req for r in results)
            off = statistics.median(r.server_cpu_us_per_req for r in samples[("off", op)])
            rows.append({"backend": backend.name, "label": backend.label, "variant": name, "what": what, "op": op,
                         "workers": workers, "runs": len(results), "server_cpu_us_per_req": round(cpu, 1),
                         "rps": round(statistics.median(r.rps for r in results), 1),
                         "cost_vs_off": round(cpu / off - 1, 4) if off else None,
                         "valid": all(r.valid for r in results)})
    return rows


def in_process(bench, backend: Backend, served_rows: list[dict], calls: int) -> list[dict]:
    """The call line's cost per call in process, as a share of the served server CPU of the same call.

    One app, logging set up as a server has it but writing to a file, and the
    variants switched on the same app (the ``bastion.call`` level, the metrics,
    the formatter) in short interleaved chunks: each variant's figure is its
    fastest chunk, so that other jobs on the machine hardly move the difference.
    """
    from bench.profile import _requests, per_call
    from kernel.client import Client
    from kernel.core.config import load_config
    from kernel.core.runtime import Runtime
    from kernel.http.app import create_app
    from kernel.ops.logs import CALL, JsonFormatter, LoggingState, TextFormatter, configure_logging
    from kernel.ops.metrics import Metrics
    from kernel.testing.servers import write_config

    rows = []
    store = backend.start()
    state = LoggingState()
    folder = Path(tempfile.mkdtemp(dir=bench.tmp))
    domain = "n10.localhost"
    config = load_config(write_config(bench.sections(store, [domain]), tempfile.mkdtemp(dir=bench.tmp)))
    configure_logging(config)
    # As a server has it (the default handler on standard error), standard error being a file, as under gunicorn.
    root = logging.getLogger()
    [handler] = [h for h in root.handlers if getattr(h, "_bastion", False)]
    sink = open(folder / "calls.log", "w", encoding="utf-8")  # noqa: SIM115 - closed below
    terminal, sys.stderr = sys.stderr, sink
    app = create_app(Runtime(config, metrics=Metrics.from_config(config)).start())
    metrics = app.runtime.metrics
    formatters = {"text": TextFormatter(), "json": JsonFormatter()}

    def cpu_per_call(make, n: int) -> float:
        """CPU µs per call of this thread (other jobs on the machine take wall time, not this thread's CPU)."""
        return per_call(app, make, n, clock=time.thread_time)

    def switch(variant: str) -> None:
        CALL.setLevel(logging.WARNING if variant in ("off", "metrics") else logging.INFO)
        metrics.enabled = variant != "off"
        handler.setFormatter(formatters.get(variant, formatters["text"]))

    try:
        fill.fill(app.runtime.records, domain, 10)
        client = Client(app=app, host=domain)
        client.login("bench", bench.password)
        signer = load.Signer(sid=client.session.sid, key=client.session.key, domain=domain, host=domain)
        chunk = max(50, calls // 10)
        for op in ("get_all", "add"):
            make = lambda n, op=op: _requests(signer, op, n)  # noqa: E731
            cpu_per_call(make, min(200, calls))  # warm up
            best = {name: float("inf") for name, _, _ in VARIANTS}
            for round_ in range(10):
                for name, _, _ in (VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]):
                    switch(name)
                    best[name] = min(best[name], cpu_per_call(make, chunk))
            rows += [{"backend": backend.name, "variant": name, "op": op, "us_per_call": round(best[name], 2),
                      "calls": chunk * 10} for name, _, _ in VARIANTS]
    finally:
        CALL.setLevel(logging.NOTSET)
        app.runtime.close()
        sys.stderr = terminal
        sink.close()
        state.restore()
        store.stop()
    off = {r["op"]: r["us_per_call"] for r in rows if r["variant"] == "off"}
    served_off = {r["op"]: r["server_cpu_us_per_req"] for r in served_rows if r["variant"] == "off"}
    if not served_off:  # not served A/B here: the run's own signed case (default logging) is the call's server CPU
        served_off = {c["op"]: c["result"]["server_cpu_us_per_req"] for c in bench.out.cases
                      if c["backend"] == backend.name and c["group"] == "base" and c["op"] in ("get_all", "add")}
    for row in rows:
        row["served_cpu_us_per_req"] = served_off.get(row["op"])
        row["extra_us_per_call"] = round(row["us_per_call"] - off[row["op"]], 2)
        row["share_of_served_cpu"] = (round(row["extra_us_per_call"] / served_off[row["op"]], 4)
                                      if served_off.get(row["op"]) else None)
        print(f"  logging {backend.name:8} {row['variant']:8} {row['op']:8} in process {row['us_per_call']:7.1f} us/call "
              f"(+{row['extra_us_per_call']:.1f} us, {row['share_of_served_cpu'] or 0:.1%} of the served call)", flush=True)
    return rows


def measure(bench, backend: Backend, serve: bool = True) -> dict:
    """Both measurements for one storage configuration (``serve``: the served A/B runs too)."""
    print(f"logging cost ({backend.label})", flush=True)
    started = time.monotonic()
    rows = served(bench, backend) if serve else []
    inproc = in_process(bench, backend, rows, 500 if bench.plan.quick else 2000)
    return {"backend": backend.name, "label": backend.label, "served": rows, "in_process": inproc,
            "elapsed_s": round(time.monotonic() - started, 1)}


__all__ = ["measure", "VARIANTS", "TARGET"]
