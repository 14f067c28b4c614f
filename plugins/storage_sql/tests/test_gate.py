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

from .sql_helpers import in_thread, sqlite_path

DOMAIN = "gate.test"

#: A process that holds the gate (an exclusive flock of the lock file) until it reads a line.
HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
"""




def test_a_write_waits_while_another_process_holds_the_gate_and_reads_do_not(sqlite_url):
    driver = SqlDriver(sqlite_url)
    try:
        driver.set(DOMAIN, "before", 1, 60)  # makes the lock file, as any first write does
        lock_file = sqlite_path(sqlite_url) + SUFFIX
        assert os.path.exists(lock_file) and os.path.getsize(lock_file) == 0
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, lock_file], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "held"
            writer, outcome = in_thread(lambda: driver.commit(DOMAIN, [Change("insert", "M", "r1", 0, {"a": 1}, {})]))
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


def test_threads_of_one_process_take_turns(sqlite_url):
    driver = SqlDriver(sqlite_url)
    try:
        threads = [in_thread(lambda i=i: driver.commit(DOMAIN, [Change("insert", "M", f"r{i}", 0, {"i": i}, {})]))
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
        os.mkdir(sqlite_path(sqlite_url) + SUFFIX)  # no file can be made there
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
        assert os.path.exists(sqlite_path(sqlite_url) + SUFFIX) is gate
        assert driver.get(DOMAIN, "k") == 1
    finally:
        driver.close()


# -- another process holds the lock file: a writer waits at most its deadline --------------

#: A process that opens the lock file READ-ONLY (all flock needs), holds it until it reads a line, then
#: exits (which drops the flock).
READER_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
"""


class _Holder:
    """A process that holds the gate's lock file, through a read-only descriptor, until :meth:`release`."""

    def __init__(self, lock_file: str):
        self.process = subprocess.Popen([sys.executable, "-c", READER_HOLDER, lock_file], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        held, _ = _line_of(self.process, 60)
        assert held == "held"

    def release(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write("done\n")
            self.process.stdin.flush()
            self.process.wait(60)

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


def _line_of(process: subprocess.Popen, timeout: float) -> tuple[str | None, bool]:
    """The next line ``process`` prints, read in a thread so that a process that never prints fails the test
    rather than hanging it; and whether it came within ``timeout``."""
    reader, line = in_thread(process.stdout.readline)
    reader.join(timeout)
    return (line[0].strip() if line else None), not reader.is_alive()


def _held(sqlite_url, options: dict):
    """A driver whose lock file exists (a first write made it), and the lock file's path."""
    driver = SqlDriver(sqlite_url, options=options)
    driver.set(DOMAIN, "before", 1, 60)
    return driver, sqlite_path(sqlite_url) + SUFFIX


def test_a_process_holding_the_lock_file_read_only_gets_writers_refused_by_their_deadline(sqlite_url):
    driver, lock_file = _held(sqlite_url, {"sqlite_busy_timeout": 0.3})
    holder = _Holder(lock_file)
    try:
        for write in (lambda: driver.commit(DOMAIN, [Change("insert", "M", "r1", 0, {"a": 1}, {})]),
                      lambda: driver.set(DOMAIN, "k", "v", 60)):
            writer, outcome = in_thread(write)
            writer.join(30)  # the bound is 0.3 s; without one the writer waits as long as the other process holds
            assert not writer.is_alive(), "a writer waited at the gate past its deadline"
            assert isinstance(outcome[0], ServiceUnavailable) and outcome[0].status == 503
            assert outcome[0].exc == "ServiceUnavailable" and outcome[0].backend == "sqlite"
        assert driver.select(DOMAIN, "M") == [] and driver.get(DOMAIN, "k") is None  # nothing was written
        holder.release()
        driver.commit(DOMAIN, [Change("insert", "M", "r1", 0, {"a": 1}, {})])  # the file is free again
        driver.set(DOMAIN, "k", "v", 60)
        assert [r.id for r in driver.select(DOMAIN, "M")] == ["r1"] and driver.get(DOMAIN, "k") == "v"
    finally:
        holder.close()
        driver.close()


def test_a_ping_waits_at_the_gate_at_most_its_own_bound_whatever_the_busy_timeout(sqlite_url):
    driver, lock_file = _held(sqlite_url, {"sqlite_busy_timeout": 600})
    holder = _Holder(lock_file)
    try:
        pinger, outcome = in_thread(driver.ping)
        pinger.join(120)  # PING_WAIT, 1 s: far less than the busy timeout, 600 s
        assert not pinger.is_alive(), "a ping waited at the gate past PING_WAIT"
        assert isinstance(outcome[0], ServiceUnavailable) and outcome[0].status == 503
        holder.release()
        driver.ping()
    finally:
        holder.close()
        driver.close()


def test_healthz_answers_503_while_another_process_holds_the_lock_file(make_app, sqlite_url):
    import falcon.testing

    app = make_app({"bastion": {"storage": sqlite_url}}, only=["storage_sql"])
    client = falcon.testing.TestClient(app, headers={"Host": "localhost"})
    assert client.simulate_get("/healthz").status_code == 200  # a ping's write makes the lock file
    holder = _Holder(sqlite_path(sqlite_url) + SUFFIX)
    try:
        probe, outcome = in_thread(lambda: client.simulate_get("/healthz"))
        probe.join(120)
        assert not probe.is_alive(), "/healthz waited at the gate past PING_WAIT"
        assert outcome[0].status_code == 503
        assert outcome[0].json["exc"] == "ServiceUnavailable" and outcome[0].json["records"] == "unavailable"
        holder.release()
        assert client.simulate_get("/healthz").status_code == 200
    finally:
        holder.close()


def test_writes_of_one_turn_are_refused_each_by_its_own_deadline(sqlite_url):
    driver, lock_file = _held(sqlite_url, {"sqlite_busy_timeout": 600})
    holder = _Holder(lock_file)
    try:
        gate = driver.executor.gate
        assert gate.turn()  # hold this process's turn until both writes wait in its queue: one turn takes both
        try:
            pinger, pinged = in_thread(driver.ping)  # deadline: PING_WAIT
            writer, written = in_thread(lambda: driver.set(DOMAIN, "k", "v", 60))  # deadline: 600 s
            while gate.queued() < 2:
                threading.Event().wait(0.01)  # polling the queue's length: nothing signals it
        finally:
            gate.end_turn()
        pinger.join(120)
        assert not pinger.is_alive() and isinstance(pinged[0], ServiceUnavailable)
        assert writer.is_alive() and not written  # its deadline has not passed: it waits on for the file
        holder.release()
        writer.join(60)
        assert not writer.is_alive() and written == [None]
        assert driver.get(DOMAIN, "k") == "v"
    finally:
        holder.close()
        driver.close()


#: A process that waits for the lock file (blocking flock), says so, and exits.
TAKER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("taken", flush=True)
"""


def test_a_writer_that_gave_up_leaves_the_file_to_the_other_processes(sqlite_url):
    # The writer's wait for the file outlives its deadline (flock has no timeout); once the file comes, with
    # no writer of this process wanting it any more, it must be let go at once, not kept.
    driver, lock_file = _held(sqlite_url, {"sqlite_busy_timeout": 0.2})
    holder = _Holder(lock_file)
    taker = None
    try:
        writer, outcome = in_thread(lambda: driver.set(DOMAIN, "k", "v", 60))
        writer.join(30)
        assert not writer.is_alive() and isinstance(outcome[0], ServiceUnavailable)
        holder.release()
        taker = subprocess.Popen([sys.executable, "-c", TAKER, lock_file], stdout=subprocess.PIPE, text=True)
        line, came = _line_of(taker, 60)
        assert came and line == "taken", "the process kept the lock file after its writer gave up"
    finally:
        if taker is not None:
            taker.kill()
            taker.wait()
        holder.close()
        driver.close()


def test_the_lock_file_is_the_owners_alone(sqlite_url):
    driver, lock_file = _held(sqlite_url, {})
    driver.close()
    assert os.stat(lock_file).st_mode & 0o777 == 0o600


def test_a_lock_file_open_to_others_is_made_the_owners_alone(sqlite_url):
    lock_file = sqlite_path(sqlite_url) + SUFFIX
    os.makedirs(os.path.dirname(lock_file))
    with open(lock_file, "w"):
        pass
    os.chmod(lock_file, 0o644)  # as earlier versions made it
    driver = SqlDriver(sqlite_url)
    try:
        driver.set(DOMAIN, "k", 1, 60)
        assert os.stat(lock_file).st_mode & 0o777 == 0o600
        assert driver.get(DOMAIN, "k") == 1
    finally:
        driver.close()


def test_a_link_in_place_of_the_lock_file_is_never_followed(sqlite_url, tmp_path, caplog):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("")
    elsewhere.chmod(0o644)
    lock_file = sqlite_path(sqlite_url) + SUFFIX
    os.makedirs(os.path.dirname(lock_file))
    os.symlink(elsewhere, lock_file)
    driver = SqlDriver(sqlite_url)
    try:
        with caplog.at_level(logging.WARNING, logger="bastion.storage_sql"):
            driver.set(DOMAIN, "k", 1, 60)  # written without the gate, as without a lock file
        assert driver.get(DOMAIN, "k") == 1
        assert elsewhere.stat().st_mode & 0o777 == 0o644  # neither locked nor changed
        assert any("write gate off" in r.getMessage() for r in caplog.records)
    finally:
        driver.close()
