"""Load generation: pre-signed requests replayed by wrk, and what it cost the machine.

wrk (C, one event loop per thread) loads a 2-core machine harder than a Python
generator could: it leaves more of the shared cores to the server. Every
signed request is built here, just before its run, with its own nonce and a
fresh ``ts``; the Lua script (``replay.lua``) sends each one at most once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import CpuSnapshot, rss_bytes
from kernel.core import signing

LUA = Path(__file__).with_name("replay.lua")
WRK = shutil.which("wrk") or "/usr/bin/wrk"


@dataclass
class Signer:
    """What a signed request needs: the session and the tenant."""

    sid: str
    key: bytes
    domain: str
    host: str
    offset: float = 0.0  # server clock minus ours, learnt at login
    #: A version-2 session's keys (``key`` is then their call-mac), and whether its calls are sealed.
    keys: Any = None
    sealed: bool = False


def _b64(data: bytes) -> str:
    return signing.b64url(data)


def signed_lines(signer: Signer, path: str, bodies: Iterator[bytes], count: int) -> Iterator[str]:
    """Yield ``count`` request lines, each signed with a fresh nonce and the current ts."""
    ts = str(int(time.time() + signer.offset))
    key, domain = signer.key, signer.domain
    last_body, last_hash = None, ""
    for _ in range(count):
        body = next(bodies)
        if body is not last_body:
            last_body, last_hash = body, signing.body_hash(body)
        nonce = _b64(secrets.token_bytes(16))
        text = "\n".join((signing.REQUEST_TAG, ts, nonce, "POST", path, domain, last_hash)).encode()
        mac = _b64(hmac.new(key, text, hashlib.sha256).digest())
        auth = signing.authorization(signer.sid, ts, nonce, mac)
        yield f"{signer.host}\t{path}\t{auth}\t{body.decode()}\n"


def plain_lines(host: str, path: str, body: bytes, count: int) -> Iterator[str]:
    """Yield unsigned request lines (logins)."""
    line = f"{host}\t{path}\t\t{body.decode()}\n"
    for _ in range(count):
        yield line


def write_lines(lines: Iterator[str], directory: str) -> Path:
    """Write request lines to a new file in ``directory``."""
    fd, name = tempfile.mkstemp(prefix="requests-", suffix=".txt", dir=directory)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.writelines(lines)
    return Path(name)


@dataclass
class RunResult:
    """What one wrk run measured, with the CPU both sides spent."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    statuses: dict[str, int]
    non200: int
    socket_errors: dict[str, int]
    exhausted: int
    loaded: int
    server_cpu_s: float
    server_cpu_us_per_req: float
    server_cpu_cores: float
    backend_cpu_s: float
    backend_cpu_us_per_req: float
    wrk_cpu_s: float
    wrk_cpu_cores: float
    worker_rss_mb: list[float] = field(default_factory=list)
    master_rss_mb: float = 0.0
    voluntary_switches_per_req: float = 0.0  # context switches of the server tree per request (bench.interleaved)
    involuntary_switches_per_req: float = 0.0

    @property
    def problems(self) -> list[str]:
        """What makes the run not valid, in words: an answer that was not 200, a socket error, the generator
        running out (an empty list for a valid run)."""
        problems = []
        if self.non200:
            problems.append("some answers were not 200")
        if any(self.socket_errors.values()):
            problems.append("socket errors")
        if self.exhausted:
            problems.append("the signed requests ran out before the run's end in a pass")
        return problems

    @property
    def valid(self) -> bool:
        """Every answer was 200, no socket error, and the generator never ran out."""
        return not self.problems

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        out["valid"], out["problems"] = self.valid, self.problems
        return out


def run_wrk(url: str, requests_file: Path, seconds: float, *, connections: int, threads: int, cycle: bool,
            server_pid: int | None, worker_pids: Callable[[], list[int]], backend_pids: list[int] = (),
            timeout_s: int = 30, ok: tuple[str, ...] = ("200",)) -> RunResult:
    """Run wrk against ``url`` for ``seconds`` and measure it, the server and the backend; statuses other
    than ``ok`` count as non-200 (a peer's create answers 201)."""
    out = requests_file.with_suffix(".json")
    env = {**os.environ, "BENCH_REQUESTS": str(requests_file), "BENCH_MODE": "cycle" if cycle else "once",
           "BENCH_THREADS": str(threads), "BENCH_OUT": str(out)}
    cmd = [WRK, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", f"--timeout={timeout_s}s",
           "-s", str(LUA), url]
    server_before = CpuSnapshot.take(server_pid)
    backend_before = [CpuSnapshot.take(p) for p in backend_pids]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # wait4 gives wrk's own CPU (it shares the two cores with the server).
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    except BaseException:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        raise
    server_after = CpuSnapshot.take(server_pid)
    backend_after = [CpuSnapshot.take(p) for p in backend_pids]
    text = proc.stdout.read().decode(errors="replace")
    proc.stdout.close()
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{text}")
    data = json.loads(out.read_text())
    out.unlink()
    secs = data["duration_us"] / 1e6
    n = data["requests"]
    lat = data["latency_us"]
    statuses = {str(k): v for k, v in data["statuses"].items()}
    server_cpu = server_after.since(server_before)
    backend_cpu = sum(a.since(b) for a, b in zip(backend_after, backend_before, strict=True))
    wrk_cpu = usage.ru_utime + usage.ru_stime
    workers = worker_pids()
    return RunResult(
        requests=n, seconds=round(secs, 3), rps=round(n / secs, 1) if secs else 0.0,
        p50_ms=lat["p50"] / 1000, p90_ms=lat["p90"] / 1000, p99_ms=lat["p99"] / 1000,
        mean_ms=round(lat["mean"] / 1000, 3), max_ms=lat["max"] / 1000,
        statuses=statuses, non200=sum(v for k, v in statuses.items() if k not in ok),
        socket_errors={k: v for k, v in data["socket_errors"].items() if k != "status"},
        exhausted=data["exhausted"], loaded=data["loaded"],
        server_cpu_s=round(server_cpu, 2), server_cpu_us_per_req=round(server_cpu / n * 1e6, 1) if n else 0.0,
        server_cpu_cores=round(server_cpu / secs, 2) if secs else 0.0,
        backend_cpu_s=round(backend_cpu, 2),
        backend_cpu_us_per_req=round(backend_cpu / n * 1e6, 1) if n else 0.0,
        wrk_cpu_s=round(wrk_cpu, 2), wrk_cpu_cores=round(wrk_cpu / secs, 2) if secs else 0.0,
        worker_rss_mb=[round(rss_bytes(p) / 2**20, 1) for p in workers],
        master_rss_mb=round(rss_bytes(server_pid) / 2**20, 1) if server_pid else 0.0,
    )
