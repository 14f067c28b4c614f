"""The kernel behind real gunicorn processes: what only a real server and socket can show."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kernel.testing import GunicornServer, free_port, wait_until_serving

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server():
    sections = {"bastion": {"development": True, "storage": "mem://", "max_body": "64KiB"}}
    with GunicornServer(sections, env={"BASTION_LOAD_PLUGINS": "storage_mem"}) as srv:
        yield srv


def raw(server, data: bytes) -> bytes:
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def post(server, path, body=b"", headers=None):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    conn.request("POST", path, body=body, headers={"Host": "localhost", **(headers or {})})
    response = conn.getresponse()
    result = response.status, dict(response.getheaders()), response.read()
    conn.close()
    return result


def test_health_and_fail_closed(server):
    status, _, body = post(server, "/api/anything", b"{}", {"Content-Type": "application/json"})
    assert status == 401 and json.loads(body)["exc"] == "Unauthorized"


def test_large_body_refused_by_length(server):
    status, _, body = post(server, "/api/x", b"x" * (2 * 1024 * 1024), {"Content-Type": "application/json"})
    assert status == 413 and json.loads(body)["exc"] == "PayloadTooLarge"


def test_large_chunked_body_refused(server):
    chunk = b"x" * 8192
    request = (b"POST /api/x HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    request += b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(16)) + b"0\r\n\r\n"
    answer = raw(server, request)
    assert answer.startswith(b"HTTP/1.1 413") and b"PayloadTooLarge" in answer


def test_small_chunked_body_reaches_authentication(server):
    body = b'{"args": []}'
    request = (b"POST /api/x HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    answer = raw(server, request)
    assert answer.startswith(b"HTTP/1.1 401") and b"Unauthorized" in answer


def test_no_host_header_is_refused(server):
    answer = raw(server, b"GET / HTTP/1.0\r\n\r\n")
    assert answer.split(b"\r\n", 1)[0].split(b" ")[1] == b"400"


def test_health_needs_no_host_from_the_loopback(server):
    """/healthz answers a load balancer that probes by address, with no Host at all: [metrics] allow."""
    answer = raw(server, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert answer.split(b"\r\n", 1)[0].split(b" ")[1] == b"200"


def test_foreign_host_is_invalid_host(server):
    status, _, body = post(server, "/api/x", b"", {"Host": "attacker.example"})
    assert status == 400 and json.loads(body)["exc"] == "InvalidHost"


def test_plain_gunicorn_in_a_checkout_uses_bastion_ini(tmp_path):
    # A copy of the checkout's two files, so the test never touches a developer's var/ database.
    for name in ("bastion.ini", "gunicorn.conf.py"):
        shutil.copy(ROOT / name, tmp_path / name)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "BASTION_CONFIG"}
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "kernel.wsgi:app", "--bind", f"127.0.0.1:{port}"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_until_serving("127.0.0.1", port, proc)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/healthz", headers={"Host": "localhost"})
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["status"] == "ok"
    finally:
        os.killpg(proc.pid, 15)
        output = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert "development mode, storage sqlite://" in output
    assert (tmp_path / "var" / "bastion.sqlite3").is_file()


def test_todos_survive_a_restart_on_the_shipped_sqlite_storage(tmp_path):
    from passlib.hash import argon2

    from kernel.client import Client

    sections = {
        "bastion": {"development": True, "storage": f"sqlite:///{tmp_path}/var/bastion.sqlite3"},
        "auth": {"argon2_memory_cost": 64, "argon2_time_cost": 1},
        "users": {"alice@localhost": argon2.using(type="ID", memory_cost=64, rounds=1).hash("password1")},
    }
    with GunicornServer(sections, workers=2) as first:
        client = Client(first.url, host="localhost")
        client.login("alice", "password1")
        todo = client.call("add", "survive the restart")
    with GunicornServer(sections, workers=2) as second:
        client = Client(second.url, host="localhost")
        client.login("alice", "password1")
        assert client.call("get_all") == [todo]


def test_memory_storage_forces_one_worker_process_and_says_why():
    sections = {"bastion": {"development": True, "storage": "mem://"}}
    with GunicornServer(sections, workers=4, env={"BASTION_LOAD_PLUGINS": "storage_mem"}) as server:
        assert "running 1 worker" in server.log()
        assert server.log().count("Booting worker") == 1


def test_a_permission_for_no_service_stops_the_start_before_any_worker(tmp_path):
    from kernel.testing import write_config

    config = write_config({"bastion": {"development": True, "storage": "mem://"},
                           "server": {"bind": f"127.0.0.1:{free_port()}"},
                           "permissions": {"clear_complete": "admin"}}, tmp_path)
    result = subprocess.run([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "kernel.wsgi:app"],
                            cwd=tmp_path, env={**os.environ, "BASTION_CONFIG": str(config)}, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0
    assert f"bastion: {config}: [permissions] clear_complete: no such service" in result.stderr
    assert "Booting worker" not in result.stderr + result.stdout
