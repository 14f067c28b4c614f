"""SQLite's own files: a WAL that does not keep its high-water mark, and a full disk that ping sees."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

from bastion_storage_sql import SqlDriver
from bastion_storage_sql.wal import WAL_CHECK_EVERY
from sqlalchemy import event

from kernel import Change

DOMAIN = "sqlite.test"


def _wal(sqlite_url: str) -> int:
    path = sqlite_url.removeprefix("sqlite:///") + "-wal"
    return os.path.getsize(path) if os.path.exists(path) else 0


def test_the_wal_is_cut_back_to_its_limit(sqlite_url):
    limit = 256 * 1024
    driver = SqlDriver(sqlite_url, options={"sqlite_wal_limit": limit})
    reader = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        # A reader that keeps its snapshot keeps every checkpoint from completing,
        # as a long report or a backup does: the WAL grows far past the limit.
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM bastion_records").fetchone()
        blob = "x" * 4000
        for i in range(300):
            driver.commit(DOMAIN, [Change("insert", "M", f"r{i}", 0, {"blob": blob}, {})])
        assert _wal(sqlite_url) > 4 * limit
        reader.execute("COMMIT")
        # The reader is gone: the next writes checkpoint, and the WAL is cut back.
        for i in range(10):
            driver.set(DOMAIN, f"k{i}", i, 60)
        assert _wal(sqlite_url) <= limit
        assert driver.checkpoint() is True
        assert _wal(sqlite_url) == 0
        assert len(driver.select(DOMAIN, "M")) == 300
    finally:
        reader.close()
        driver.close()


def test_the_driver_checkpoints_a_wal_past_its_limit_by_itself(sqlite_url):
    """Even when SQLite's automatic checkpoints never run, the driver's own TRUNCATE checkpoints bound the WAL."""
    limit = 64 * 1024
    driver = SqlDriver(sqlite_url, options={"sqlite_wal_limit": limit})
    try:
        driver.dispose_connections()

        @event.listens_for(driver.engine, "connect")
        def _no_automatic_checkpoint(dbapi_connection, _record):
            dbapi_connection.execute("PRAGMA wal_autocheckpoint = 0")

        sizes = []
        for i in range(4 * WAL_CHECK_EVERY):
            driver.commit(DOMAIN, [Change("insert", "M", f"r{i}", 0, {"blob": "y" * 2000}, {})])
            sizes.append(_wal(sqlite_url))
        # Between two looks the WAL grows by what the writes add (a few pages each); then it is emptied.
        frame = 4096 + 24
        assert max(sizes) < limit + WAL_CHECK_EVERY * 5 * frame, max(sizes)
        assert sizes[-1] <= limit  # the last write was a look
        assert len(driver.select(DOMAIN, "M")) == 4 * WAL_CHECK_EVERY
    finally:
        driver.close()


_FULL_DISK = r"""
import json, os, resource, signal, sys
from bastion_storage_sql import SqlDriver
from bastion_storage_sql.wal import WAL_CHECK_EVERY
from sqlalchemy import event
from kernel import Change, ServiceUnavailable

url, path = sys.argv[1], sys.argv[2]
driver = SqlDriver(url)
for i in range(20):
    driver.commit("disk.test", [Change("insert", "M", f"r{i}", 0, {"n": i}, {})])
driver.ping()
# The disk is full: no file may grow past what it holds now (writes fail with
# EFBIG, which SQLite reports as a full disk or an I/O error; SIGXFSZ would kill us).
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
largest = max(os.path.getsize(path + suffix) for suffix in ("", "-wal", "-shm") if os.path.exists(path + suffix))
resource.setrlimit(resource.RLIMIT_FSIZE, (largest + 1, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
outcome = {}
for name, call in [("write", lambda: driver.set("disk.test", "k", 1, 60)), ("ping", driver.ping),
                   ("read", lambda: driver.fetch("disk.test", "M", "r3").data)]:
    try:
        outcome[name] = call() or "ok"
    except ServiceUnavailable:
        outcome[name] = "503"
print(json.dumps(outcome))
"""


def test_ping_fails_on_a_full_disk(sqlite_url):
    path = sqlite_url.removeprefix("sqlite:///")
    done = subprocess.run([sys.executable, "-c", _FULL_DISK, sqlite_url, path], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == {"write": "503", "ping": "503", "read": {"n": 3}}
    # With room again, the same database takes writes.
    driver = SqlDriver(sqlite_url, schema="check")
    try:
        driver.ping()
        driver.set("disk.test", "k", 1, 60)
        assert len(driver.select("disk.test", "M")) == 20
    finally:
        driver.close()
