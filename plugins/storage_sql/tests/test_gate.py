"""The SQLite write gate: writers of every process take turns on the lock file next to the database."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading

import pytest
from bastion_storage_sql import SqlDriver
from bastion_storage_sql.gate import SUFFIX

from kernel import Change, ServiceUnavailable

DOMAIN = "gate.test"

#: A process that holds the gate (an exclusive flock of the lock file) until it reads a line.
HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
"""


def _path(sqlite_url: str) -> str:
    return sqlite_url.removeprefix("sqlite:///")


def _in_thread(work) -> tuple[threading.Thread, list]:
    outcome: list = []

    def run():
        try:
            outcome.append(work())
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_write_waits_while_another_process_holds_the_gate_and_reads_do_not(sqlite_url):
    driver = SqlDriver(sqlite_url)
    try:
        driver.set(DOMAIN, "before", 1, 60)  # makes the lock file, as any first write does
        lock_file = _path(sqlite_url) + SUFFIX
        assert os.path.exists(lock_file) and os.path.getsize(lock_file) == 0
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, lock_file], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "held"
            writer, outcome = _in_thread(lambda: driver.commit(DOMAIN, [Change("insert", "M", "r1", 0, {"a": 1}, {})]))
            writer.join(0.5)
            assert writer.is_alive() and not outcome  # at the gate: the other process has its turn
            # Readers never queue at the gate (WAL: they read beside the writer).
            assert driver.get(DOMAIN, "before") == 1
            assert driver.select(DOMAIN, "M") == []
            holder.stdin.write("done\n")
            holder.stdin.flush()
            writer.join(30)
            assert not writer.is_alive() and not isinstance(outcome[0], BaseException)
        finally:
            holder.kill()
            holder.wait()
        assert [r.id for r in driver.select(DOMAIN, "M")] == ["r1"]
    finally:
        driver.close()


def test_a_thread_waits_for_its_process_turn_at_most_the_busy_timeout(sqlite_url):
    driver = SqlDriver(sqlite_url, options={"sqlite_busy_timeout": 0.2})
    try:
        driver.set(DOMAIN, "k", "old", 60)
        assert driver._gate.acquire()  # another thread of this process is writing, and does not end
        try:
            thread, outcome = _in_thread(lambda: driver.set(DOMAIN, "k", "new", 60))
            thread.join(30)
            assert isinstance(outcome[0], ServiceUnavailable) and outcome[0].status == 503
        finally:
            driver._gate.release()
        assert driver.get(DOMAIN, "k") == "old"  # nothing was written
        driver.set(DOMAIN, "k", "new", 60)  # and the next turn is free
        assert driver.get(DOMAIN, "k") == "new"
    finally:
        driver.close()


def test_threads_of_one_process_take_turns(sqlite_url):
    driver = SqlDriver(sqlite_url)
    try:
        threads = [_in_thread(lambda i=i: driver.commit(DOMAIN, [Change("insert", "M", f"r{i}", 0, {"i": i}, {})]))
                   for i in range(16)]
        for thread, _ in threads:
            thread.join(60)
        assert all(not isinstance(outcome[0], BaseException) for _, outcome in threads)
        assert sorted(r.id for r in driver.select(DOMAIN, "M")) == sorted(f"r{i}" for i in range(16))
    finally:
        driver.close()


def test_without_a_lock_file_writes_go_on_and_the_operator_is_told(sqlite_url, caplog):
    driver = SqlDriver(sqlite_url)
    try:
        os.mkdir(_path(sqlite_url) + SUFFIX)  # no file can be made there
        with caplog.at_level(logging.WARNING, logger="bastion.storage_sql"):
            driver.set(DOMAIN, "a", 1, 60)
            driver.set(DOMAIN, "b", 2, 60)
        assert driver.get(DOMAIN, "a") == 1 and driver.get(DOMAIN, "b") == 2
        said = [r.getMessage() for r in caplog.records if "write gate off" in r.getMessage()]
        assert len(said) == 1 and "IsADirectoryError" in said[0]
    finally:
        driver.close()


@pytest.mark.parametrize("gate", [True, False])
def test_the_gate_is_a_setting(sqlite_url, gate):
    driver = SqlDriver(sqlite_url, options={"sqlite_write_gate": gate})
    try:
        driver.set(DOMAIN, "k", 1, 60)
        assert os.path.exists(_path(sqlite_url) + SUFFIX) is gate
        assert driver.get(DOMAIN, "k") == 1
    finally:
        driver.close()
