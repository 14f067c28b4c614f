"""Several worker processes writing at once: no lost update, no "database is locked"."""

import subprocess
import sys

import pytest
from bastion_storage_sql import SqlDriver

from kernel import Change

_WORKER = """
import sys
from bastion_storage_sql import SqlDriver
from kernel import Change, VersionConflict

url, worker = sys.argv[1], sys.argv[2]
driver = SqlDriver(url, schema="check")
for i in range(60):
    driver.incr("procs.test", "hits", 1, 600)
    driver.commit("procs.test", [Change("insert", "Hit", f"{worker}-{i}", 0, {"i": i}, {"worker": worker})])
    while True:  # the usual read-modify-write loop of a unit of work
        shared = driver.fetch("procs.test", "Total", "all")
        try:
            driver.commit("procs.test", [Change("update", "Total", "all", shared.vsn, {"n": shared.data["n"] + 1}, {})])
            break
        except VersionConflict:
            continue
driver.close()
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, sqlite_url):
    url = sqlite_url if request.param == "sqlite" else request.getfixturevalue("fresh_pg_url")
    driver = SqlDriver(url)
    driver.commit("procs.test", [Change("insert", "Total", "all", 0, {"n": 0}, {})])
    driver.close()
    return url


def test_four_processes_writing_at_once(url):
    workers = [subprocess.Popen([sys.executable, "-c", _WORKER, url, str(w)], stderr=subprocess.PIPE, text=True)
               for w in range(4)]
    failures = []
    for process in workers:
        _, stderr = process.communicate(timeout=180)
        if process.returncode:
            failures.append(stderr[-2000:])
    assert failures == []
    driver = SqlDriver(url, schema="check")
    try:
        assert driver.get("procs.test", "hits") == 240
        assert driver.fetch("procs.test", "Total", "all").data == {"n": 240}
        assert len(driver.select("procs.test", "Hit")) == 240
        assert [r.data["i"] for r in driver.select("procs.test", "Hit", {"worker": "2"})] == list(range(60))
    finally:
        driver.close()
