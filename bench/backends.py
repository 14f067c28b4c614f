"""The storage configurations the bench measures, and the servers behind them.

A configuration is available when its storage plugin is installed (it serves
the URL scheme) and, for PostgreSQL and Redis, when the launcher of
kernel.testing can start a throw-away server on 127.0.0.1. Otherwise it is
skipped with a note saying why.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path


def installed_plugins() -> set[str]:
    """Names registered under the ``bastion`` entry-point group."""
    return {ep.name for ep in importlib.metadata.entry_points(group="bastion")}


def _launcher(module: str, cls: str):
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError):
        return None


@dataclass
class Store:
    """A fresh, empty storage for one phase of a configuration: URLs, backend processes, cleanup."""

    storage: str
    state: str = ""
    #: More INI sections for the server (a configuration that differs in a setting).
    sections: dict = field(default_factory=dict)
    backend_pids: list[int] = field(default_factory=list)
    stoppers: list = field(default_factory=list)

    def stop(self) -> None:
        """Stop every backend server and remove its files (last started, first stopped)."""
        while self.stoppers:
            try:
                self.stoppers.pop()()
            except Exception as exc:  # keep stopping the others
                print(f"  warning: stopping a backend failed: {exc}")


def _pid_of(server) -> int | None:
    process = getattr(server, "process", None) or getattr(server, "proc", None)
    return getattr(process, "pid", None) or getattr(server, "pid", None)


def _start_redis(store: Store) -> str:
    server = _launcher("kernel.testing", "RedisServer")()
    store.stoppers.append(server.stop)
    server.start()
    pid = _pid_of(server)
    if pid:
        store.backend_pids.append(pid)
    return server.url


def _start_postgres(store: Store) -> str:
    server = _launcher("kernel.testing", "PostgresServer")()
    store.stoppers.append(getattr(server, "close", server.stop))
    server.start()
    pid = _pid_of(server) or _postmaster_pid(server)
    if pid:
        store.backend_pids.append(pid)
    return server.url


def _postmaster_pid(server) -> int | None:
    """pg_ctl daemonizes the server: its pid is the first line of ``postmaster.pid``."""
    root = getattr(server, "root", None)
    try:
        return int((Path(root) / "data" / "postmaster.pid").read_text().split()[0]) if root else None
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Backend:
    """One storage configuration: its name, whether it can run here, and how to start it."""

    name: str
    label: str
    available: bool
    note: str = ""

    @property
    def in_process(self) -> bool:
        """mem:// lives inside the server: one worker, filled in the server itself."""
        return self.name == "mem"

    def start(self) -> Store:
        """Start the backend servers of a fresh, empty store."""
        if self.name == "mem":
            return Store("mem://")
        if self.name in ("sqlite", "sqlite-split", "sqlite-nogate"):
            directory = tempfile.mkdtemp(prefix="bastion-bench-sqlite-")
            store = Store(f"sqlite:///{Path(directory) / 'bench.sqlite3'}")
            if self.name == "sqlite-split":
                # Sessions, nonces and abuse weights in a file of their own: their writes no longer wait
                # for the records' write lock, nor the records' for theirs.
                store.state = f"sqlite:///{Path(directory) / 'state.sqlite3'}"
            if self.name == "sqlite-nogate":
                # Writers wait in SQLite's own busy handler (it sleeps and looks again), as before the write gate.
                store.sections = {"storage_sql": {"sqlite_write_gate": False}}
            store.stoppers.append(lambda: shutil.rmtree(directory, ignore_errors=True))
            return store
        store = Store("")
        try:
            if self.name == "redis":
                store.storage = _start_redis(store)
            elif self.name == "postgresql":
                store.storage = _start_postgres(store)
            elif self.name == "mixed":
                store.storage = _start_postgres(store)
                store.state = _start_redis(store)
        except BaseException:
            store.stop()
            raise
        return store


def backends() -> list[Backend]:
    """Every configuration, in the order the bench measures them."""
    plugins = installed_plugins()
    sql = "storage_sql" in plugins
    redis_ok = "storage_redis" in plugins and _launcher("kernel.testing", "RedisServer") is not None
    pg_ok = sql and _launcher("kernel.testing", "PostgresServer") is not None
    redis_bin = shutil.which("redis-server") is not None or Path("/usr/bin/redis-server").exists()
    no_sql = "plugin bastion-storage-sql not installed (no `storage_sql` entry point)"
    no_pg = no_sql if not sql else "kernel.testing.PostgresServer not available"
    no_redis = ("plugin bastion-storage-redis or the RedisServer launcher of kernel.testing not installed" if not redis_ok
                else "redis-server binary not found")
    return [
        Backend("mem", "mem://", True, ""),  # built into the kernel (kernel/storage_mem.py): always there
        Backend("sqlite", "SQLite (WAL)", sql, "" if sql else no_sql),
        Backend("sqlite-split", "SQLite (WAL), state in its own file", sql, "" if sql else no_sql),
        Backend("sqlite-nogate", "SQLite (WAL), no write gate", sql, "" if sql else no_sql),
        Backend("postgresql", "PostgreSQL", pg_ok, "" if pg_ok else no_pg),
        Backend("redis", "Redis", bool(redis_ok and redis_bin), "" if redis_ok and redis_bin else no_redis),
        Backend("mixed", "PostgreSQL records + Redis state", pg_ok and bool(redis_ok and redis_bin),
                "" if pg_ok and redis_ok and redis_bin else (no_pg if not pg_ok else no_redis)),
    ]


def tool_version(cmd: list[str]) -> str:
    """The first line a ``--version`` command prints, or 'not installed'."""
    binary = shutil.which(cmd[0]) or (cmd[0] if Path(cmd[0]).exists() else None)
    if binary is None:
        return "not installed"
    try:
        out = subprocess.run([binary, *cmd[1:]], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "unknown"
