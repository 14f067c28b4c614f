"""Export and import throughput, with peak memory, and the time of ``bastion tenants`` over many tenants.

``python -m bench.tenants [--todos 100000] [--tenants 10000] [--only sqlite postgresql redis]``

For each engine (throw-away PostgreSQL and Redis servers on 127.0.0.1, from
kernel.testing's launchers; SQLite in a temporary directory):

1. one tenant is filled with ``--todos`` todos, each inserted then updated
   once (two history entries each), by units of work of :data:`FILL_BATCH`, as the
   server writes them;
2. ``bastion export -o FILE`` runs in a process of its own: its wall time
   and its peak resident memory (``ru_maxrss`` of that process, from
   ``wait4``), and the file's size;
3. ``bastion import FILE`` into a fresh storage of the same engine, measured
   the same way;
4. ``--tenants`` tenants of 3 records each are loaded, and the census
   ``bastion tenants`` reads (``TenantStore.tenants``) is timed in this process.

The numbers are printed as a table; docs/export.md quotes a run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from kernel.core.driver import TenantRecord

PLUGINS = "auth,todo,storage_sql,storage_redis"

#: Todos per unit of work of the fill. (A unit of work of 1,000 history-keeping updates on freshly filled
#: PostgreSQL tables, before their first ANALYZE, once ran past the 10 s statement timeout.)
FILL_BATCH = 250


def _servers(engine: str, stoppers: list):
    """A function returning a fresh, empty storage URL of the engine."""
    if engine == "sqlite":
        folder = tempfile.mkdtemp(prefix="bench-tenants-")
        return lambda: f"sqlite:///{folder}/{uuid.uuid4().hex[:8]}.sqlite3"
    if engine == "postgresql":
        from kernel.testing import PostgresServer

        server = PostgresServer()
        server.start()
        stoppers.append(server.stop)
        return lambda: server.create_database(f"b{uuid.uuid4().hex[:10]}")
    from kernel.testing import RedisServer

    redis = RedisServer()
    redis.start()
    stoppers.append(redis.stop)
    return lambda: redis.url


def _ini(folder: Path, url: str) -> Path:
    ini = folder / f"{uuid.uuid4().hex[:8]}.ini"
    ini.write_text(f"[bastion]\ndevelopment = true\nstorage = {url}\n[auth]\ndemo_user = false\n"
                   f"[storage_redis]\nkey_prefix = b{uuid.uuid4().hex[:8]}\n")
    return ini


def _runtime(ini: Path):
    from kernel.cli import open_runtime
    from kernel.core.plugins import get_plugin_manager

    return open_runtime(str(ini), get_plugin_manager(only=PLUGINS.split(","), trace=False))


def _fill(ini: Path, todos: int) -> None:
    from kernel import storage

    runtime = _runtime(ini)
    try:
        todo = runtime.models.named("Todo").cls
        with runtime.bind("bench.localhost"):
            for start in range(0, todos, FILL_BATCH):
                with storage() as db:
                    made = [db.insert(todo, text=f"todo {n} \u2603")
                            for n in range(start, min(todos, start + FILL_BATCH))]
                with storage() as db:
                    for record in made:
                        db.update(todo, record._id, 1, done=True)
    finally:
        runtime.close()


def _measure(argv: list[str]) -> tuple[float, float]:
    """Run a ``bastion`` command in a process of its own: its wall time (s) and peak resident memory (MiB)."""
    env = {**os.environ, "BASTION_LOAD_PLUGINS": PLUGINS}
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "kernel.cli", *argv], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"bench: {' '.join(argv)} failed: {child.stderr.read().decode()[-2000:]}")
    child.stderr.close()
    return elapsed, usage.ru_maxrss / 1024


def _census(fresh, folder: Path, tenants: int) -> float:
    """Load ``tenants`` tenants of 3 records each, then time one census."""
    runtime = _runtime(_ini(folder, fresh()))
    try:
        store = runtime.records
        for n in range(tenants):
            store.load_tenant(f"t{n}.bench.localhost", [
                TenantRecord("User", "u", 1, {"username": "u", "password": "$x", "created": 0, "roles": []}, (), None,
                             {}),
                *(TenantRecord("Todo", f"todo{i}", 1, {"text": "x", "done": False}, (), None, {"done": False})
                  for i in range(2))])
        started = time.perf_counter()
        found = store.tenants()
        elapsed = time.perf_counter() - started
        assert sum(1 for name in found if name.endswith(".bench.localhost")) == tenants
        return elapsed
    finally:
        runtime.close()


def run(engine: str, todos: int, tenants: int) -> dict:
    stoppers: list = []
    folder = Path(tempfile.mkdtemp(prefix="bench-tenants-"))
    try:
        fresh = _servers(engine, stoppers)
        source = _ini(folder, fresh())
        _fill(source, todos)
        path = folder / "bench.export"
        export_s, export_mib = _measure(["--config", str(source), "export", "-o", str(path)])
        target = _ini(folder, fresh())
        import_s, import_mib = _measure(["--config", str(target), "import", str(path)])
        census = _census(fresh, folder, tenants) if tenants else None
        return {"engine": engine, "todos": todos, "size_mib": path.stat().st_size / 2**20,
                "export_s": export_s, "export_mib": export_mib, "import_s": import_s, "import_mib": import_mib,
                "census_s": census, "tenants": tenants}
    finally:
        for stop in reversed(stoppers):
            stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tenants", description=__doc__.splitlines()[0])
    parser.add_argument("--todos", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=10_000, help="tenants for the census (0: skip it)")
    parser.add_argument("--only", nargs="*", default=("sqlite", "postgresql"), choices=("sqlite", "postgresql", "redis"))
    args = parser.parse_args(argv)
    print("| engine | todos | file | export | export peak RSS | import | import peak RSS | tenants census |")
    print("|---|---|---|---|---|---|---|---|")
    for engine in args.only:
        r = run(engine, args.todos, args.tenants)
        census = f"{r['tenants']}: {r['census_s']:.2f} s" if r["census_s"] is not None else "-"
        print(f"| {engine} | {r['todos']:,} | {r['size_mib']:.0f} MiB | {r['export_s']:.1f} s "
              f"({r['todos'] / r['export_s']:,.0f}/s) | {r['export_mib']:.0f} MiB | {r['import_s']:.1f} s "
              f"({r['todos'] / r['import_s']:,.0f}/s) | {r['import_mib']:.0f} MiB | {census} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
