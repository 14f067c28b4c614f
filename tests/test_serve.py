"""``bastion serve`` as a real process: which file it serves, from any directory, and the ``[server]`` keys it hands gunicorn.

The packaged settings (``kernel.server.gunicorn_conf``) are the one source: ``bastion serve`` runs gunicorn as a
library with them, ``gunicorn -c python:kernel.server.gunicorn_conf kernel.wsgi:app`` reads them anywhere, and a
checkout's ``gunicorn.conf.py`` imports them (tests/test_gunicorn.py).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kernel.testing import BastionServer, free_port, wait_until_serving, write_config

ROOT = Path(__file__).resolve().parents[1]
BASTION = str(Path(sys.executable).with_name("bastion"))
pytestmark = pytest.mark.slow

#: Only the in-memory storage: the fastest start (it forces one worker).
MEMORY = {"bastion": {"development": True, "storage": "mem://"}}
MEMORY_ONLY = {"BASTION_LOAD_PLUGINS": "storage_mem"}


def get(host: str, port: int, path: str = "/healthz", hostname: str = "localhost") -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": hostname})
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def without_config_variable() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != "BASTION_CONFIG"}


def run_serve(args: list[str], cwd: Path, env: dict[str, str], port: int) -> tuple[int, str]:
    """Start ``bastion <args>``, check that it serves ``/healthz`` on ``port``, stop it; return the status and its log."""
    proc = subprocess.Popen([BASTION, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_until_serving("127.0.0.1", port, proc)
        status = get("127.0.0.1", port)[0]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert proc.returncode == 0, output
    return status, output


# -- which configuration, from where --------------------------------------------------------------


def test_production_from_another_directory_with_config(tmp_path):
    """The file named by --config, read from a working directory that has nothing of Bastion's."""
    database = tmp_path / "data" / "bastion.sqlite3"
    sections = {"bastion": {"development": False, "storage": f"sqlite:///{database}", "allowed_hosts": "app.example"}}
    from kernel.cli import main

    ini = write_config(sections, tmp_path)
    assert main(["--config", str(ini), "initdb"]) == 0  # production refuses to create the schema itself
    with BastionServer(sections, workers=2) as server:
        assert not list(Path(server.cwd).iterdir())  # an empty working directory
        status, headers, body = get(server.host, server.port, hostname="app.example")
        assert (status, json.loads(body)) == (200, {"status": "ok", "records": "ok", "state": "ok"})
        assert "strict-transport-security" in headers  # production mode
        # localhost is no allowed host in production (/healthz answers the loopback under any Host: [metrics] allow)
        assert get(server.host, server.port, path="/api/get_all")[0] == 400
        log = server.log()
    assert "production mode, storage sqlite:///" in log
    assert log.count("Booting worker") == 2 and "kernel.server.worker.BastionWorker" in log


def test_the_checkouts_bastion_ini_in_the_working_directory(tmp_path):
    """No --config, no $BASTION_CONFIG: ./bastion.ini, as `make run` serves it (its bind moved to a free port)."""
    port = free_port()
    shipped = (ROOT / "bastion.ini").read_text()
    assert "bind = 127.0.0.1:9000" in shipped
    (tmp_path / "bastion.ini").write_text(shipped.replace("bind = 127.0.0.1:9000", f"bind = 127.0.0.1:{port}"))
    status, output = run_serve(["serve"], tmp_path, without_config_variable(), port)
    assert status == 200
    assert "development mode, storage sqlite:///var/bastion.sqlite3" in output
    assert "; the workers reload on code changes" in output and "INFO gunicorn.error Reloader is on" in output
    assert not re.search(r"warning|would be ignored|traceback", output, re.IGNORECASE), output  # as `make run` starts
    assert (tmp_path / "var" / "bastion.sqlite3").is_file()  # relative to the working directory, as documented


def test_a_relative_bastion_config_is_made_absolute_for_the_workers(tmp_path):
    port = free_port()
    (tmp_path / "conf").mkdir()
    write_config({**MEMORY, "server": {"bind": f"127.0.0.1:{port}"}}, tmp_path / "conf")
    env = {**without_config_variable(), **MEMORY_ONLY, "BASTION_CONFIG": "conf/bastion.ini"}
    status, output = run_serve(["serve"], tmp_path, env, port)
    assert status == 200 and "development mode, storage mem://" in output


def test_plain_gunicorn_with_the_packaged_settings_anywhere(tmp_path):
    """``gunicorn -c python:kernel.server.gunicorn_conf kernel.wsgi:app`` from a folder without gunicorn.conf.py."""
    port = free_port()
    ini = write_config({**MEMORY, "server": {"bind": f"127.0.0.1:{port}", "keepalive": 0}}, tmp_path)
    run = tmp_path / "elsewhere"
    run.mkdir()
    env = {**os.environ, **MEMORY_ONLY, "BASTION_CONFIG": str(ini)}
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "python:kernel.server.gunicorn_conf", "kernel.wsgi:app"],
                            cwd=run, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_serving("127.0.0.1", port, proc)
        status, headers, _ = get("127.0.0.1", port)
        assert status == 200 and headers.get("connection") == "close"  # [server] keepalive = 0 reached gunicorn
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=30)


@pytest.mark.parametrize("text, needle", [
    ("[server]\nkeepalive = -1\n", "[server] keepalive = '-1': invalid value; accepted: an integer from 0 to 3600"),
    ("[server]\nmax_requests_jiter = 5\n", "[server] max_requests_jiter: unknown key"),
    ("[bastion]\nstorage = nosuch://x\n", "nosuch://x"),
])
def test_a_bad_configuration_stops_the_start_with_one_line(tmp_path, text, needle):
    ini = tmp_path / "bad.ini"
    ini.write_text(text)
    result = subprocess.run([BASTION, "--config", str(ini), "serve"], cwd=tmp_path, env=without_config_variable(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bastion: ") and needle in lines[0], result.stderr


@pytest.mark.parametrize("option", [["--config", "nowhere.ini"], ["--config=nowhere.ini"]])
def test_a_missing_config_file_is_one_line(tmp_path, option):
    result = subprocess.run([BASTION, *option, "serve"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr.strip()) == (1, f"bastion: {tmp_path / 'nowhere.ini'}: cannot read "
                                                              "configuration: no such file")


def serve_once(tmp_path: Path, bind: str) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """``bastion serve`` in ``tmp_path`` with ``[server] bind`` and a SQLite storage there, its temporary files in a
    folder of its own; return how it ended, its configuration file and that folder."""
    ini = write_config({"bastion": {"development": True, "storage": "sqlite:///var/bastion.sqlite3"},
                        "server": {"bind": bind}}, tmp_path)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {key: value for key, value in without_config_variable().items()
           if key not in ("PROMETHEUS_MULTIPROC_DIR", "BASTION_METRICS_DIR")}
    result = subprocess.run([BASTION, "serve"], cwd=tmp_path, env={**env, "TMPDIR": str(scratch)},
                            capture_output=True, text=True, timeout=60)
    return result, ini, scratch


def test_a_taken_address_stops_the_start_at_once_with_one_line_and_leaves_nothing_behind(tmp_path):
    """No retries and none of gunicorn's messages: one line naming the address and the key; no storage opened
    (no SQLite file), no metrics folder."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result, ini, scratch = serve_once(tmp_path, f"127.0.0.1:{port}")
    assert (result.returncode, result.stdout) == (1, ""), result
    assert result.stderr == (f"bastion: cannot listen on 127.0.0.1:{port}: address already in use; stop what uses it, "
                             f"or set another address in [server] bind ({ini})\n")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bastion.ini", "tmp"]
    assert not list(scratch.iterdir())


def test_an_address_not_of_this_machine_is_one_line_too(tmp_path):
    result, ini, scratch = serve_once(tmp_path, f"192.0.2.1:{free_port()}")  # TEST-NET-1: never a local address
    assert result.returncode == 1, result
    [line] = result.stderr.splitlines()
    assert line.startswith("bastion: cannot listen on 192.0.2.1:") and line.endswith(f"[server] bind ({ini})"), line
    assert not (tmp_path / "var").exists() and not list(scratch.iterdir())


# -- the [server] keys reach gunicorn ------------------------------------------------------------


def test_every_server_key_reaches_gunicorns_settings(tmp_path, monkeypatch):
    """What ``bastion serve`` hands gunicorn, read from its application object (the master's settings)."""
    from kernel.server.serve import BastionApplication

    port = free_port()
    ini = write_config({"bastion": {"development": True, "storage": f"sqlite:///{tmp_path}/b.sqlite3"},
                        "server": {"bind": f"127.0.0.1:{port}", "reload": "off", "workers": 3, "threads": 2, "timeout": 40,
                                   "graceful_timeout": 7, "keepalive": 9, "max_requests": 1000,
                                   "max_requests_jitter": 50, "worker_connections": 50}}, tmp_path)
    monkeypatch.setenv("BASTION_CONFIG", str(ini))
    monkeypatch.delitem(sys.modules, "kernel.server.gunicorn_conf", raising=False)
    cfg = BastionApplication().cfg
    assert cfg.bind == [f"127.0.0.1:{port}"]
    assert (cfg.workers, cfg.threads, cfg.timeout, cfg.graceful_timeout) == (3, 2, 40, 7)
    assert (cfg.keepalive, cfg.max_requests, cfg.max_requests_jitter, cfg.worker_connections) == (9, 1000, 50, 50)
    assert cfg.worker_class_str == "kernel.server.worker.BastionWorker" and cfg.reload is False
    assert cfg.forwarded_allow_ips == [] and cfg.control_socket_disable is True


def test_max_requests_replaces_the_worker(tmp_path):
    server = BastionServer({**MEMORY, "server": {"max_requests": 3, "max_requests_jitter": 2}}, env=MEMORY_ONLY)
    with server:
        served = 1  # the launcher's own /healthz, which told it the server was up
        while "Autorestarting worker" not in server.log():
            assert served < 5, server.log()  # at most max_requests + max_requests_jitter
            assert get(server.host, server.port)[0] == 200
            served += 1
        assert 3 <= served <= 5
        # A fresh worker takes over: the server never stopped serving.
        deadline = time.monotonic() + 60
        while server.log().count("Booting worker") < 2:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)  # a worker booting gives no event to wait on
        wait_until_serving(server.host, server.port, server.process)
        assert get(server.host, server.port)[0] == 200


def test_keepalive_zero_closes_every_connection_after_its_answer():
    with BastionServer({**MEMORY, "server": {"keepalive": 0}}, env=MEMORY_ONLY) as server:
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):  # the server closes: the loop ends without a timeout
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200") and b"\r\nConnection: close\r\n" in answer


def _trickle(server) -> socket.socket:
    """A request in flight: its head and a part of its body sent, the rest held back.

    The one worker then answers another request, which it accepted after this one: by then this head has
    been read and handed to a thread, which waits for the body.
    """
    sock = socket.create_connection((server.host, server.port), timeout=30)
    sock.sendall(b"POST /api/x HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 12\r\n\r\n{\"args\"")
    return sock


def test_graceful_timeout_bounds_the_wait_for_requests_in_flight():
    """A stop with a request in flight waits for it at most graceful_timeout, then the workers are killed."""
    with BastionServer({**MEMORY, "server": {"graceful_timeout": 2}}, env=MEMORY_ONLY) as server:
        with _trickle(server):
            assert get(server.host, server.port)[0] == 200
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            server.process.wait(timeout=30)
            waited = time.monotonic() - started
    assert 1.5 <= waited < 10, waited  # neither at once nor the body timeout (20 s)


def test_a_request_in_flight_completes_during_a_graceful_stop():
    with BastionServer({**MEMORY, "server": {"graceful_timeout": 30}}, env=MEMORY_ONLY) as server:
        with _trickle(server) as sock:
            assert get(server.host, server.port)[0] == 200
            server.process.send_signal(signal.SIGTERM)
            sock.sendall(b": []}")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer:
                    break
            server.process.wait(timeout=30)
    assert answer.startswith(b"HTTP/1.1 401"), answer  # answered (no Authorization), not cut
