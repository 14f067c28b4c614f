"""The server's settings: importing gunicorn's settings module does nothing; the master reads the file once and
the workers it forks take the master's values (kernel/server/settings.py, kernel/server/gunicorn_conf.py).

Side effects are watched from inside a fresh interpreter with an audit hook (PEP 578): every ``open`` of the
configuration file, every fork, exec, spawn and folder made is an audit event.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kernel.testing import GunicornServer, wait_until_serving, write_config

ROOT = Path(__file__).resolve().parents[1]
MEMORY = {"bastion": {"development": True, "storage": "mem://"}}

#: Run in a fresh interpreter: records what the code after it does, prints it as JSON on the last line.
WATCH = textwrap.dedent("""
    import json, logging, os, sys
    from pathlib import Path

    CONFIG = str(Path(sys.argv[1]).resolve())
    seen = {"config_reads": 0, "processes": [], "folders": []}

    def watch(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            if os.path.abspath(os.fsdecode(args[0])) == CONFIG:
                seen["config_reads"] += 1
        elif event in ("os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen", "os.system"):
            seen["processes"].append(event)
        elif event == "os.mkdir":
            seen["folders"].append(os.fsdecode(args[0]))

    sys.addaudithook(watch)
    environ = dict(os.environ)
""")
REPORT = textwrap.dedent("""
    from kernel.ops.logs import is_configured
    from kernel.server.settings import published

    seen.update(environ_unchanged=dict(os.environ) == environ, root_handlers=len(logging.root.handlers),
                logging_configured=is_configured(), published=published() is not None)
    print(json.dumps(seen))
""")


def watched(code: str, config: Path, cwd: Path, env: dict[str, str]) -> dict:
    """Run ``code`` under the watch in a fresh interpreter; return what it saw (and what ``code`` added)."""
    result = subprocess.run([sys.executable, "-c", WATCH + textwrap.dedent(code) + REPORT, str(config)], cwd=cwd,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def _env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("BASTION_CONFIG", "PROMETHEUS_MULTIPROC_DIR")}
    return {**env, "BASTION_LOAD_PLUGINS": "storage_mem", **extra}


# -- importing has no side effect ---------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["BASTION_CONFIG", "./bastion.ini"])
def test_importing_the_server_modules_has_no_side_effect(tmp_path, where):
    """No configuration read, no process, no folder (the metrics one included), no logging, no environment change."""
    ini = write_config({**MEMORY, "server": {"workers": 3}}, tmp_path)
    metrics = tmp_path / "metrics"
    env = _env(PROMETHEUS_MULTIPROC_DIR=str(metrics), **({"BASTION_CONFIG": str(ini)} if where == "BASTION_CONFIG" else {}))
    seen = watched("""
        import importlib
        modules = ("kernel.server.gunicorn_conf", "kernel.gunicorn_conf", "kernel.server.worker", "kernel.worker",
                   "kernel.server.serve")
        for name in modules:
            importlib.import_module(name)
        seen["settings_set"] = [name for name in ("bind", "workers", "threads") if hasattr(sys.modules[modules[0]], name)]
    """, ini, tmp_path, env)
    assert seen == {"config_reads": 0, "processes": [], "folders": [], "settings_set": [], "environ_unchanged": True,
                    "root_handlers": 0, "logging_configured": False, "published": False}
    assert not metrics.exists()


# -- the master reads the file once -------------------------------------------------------------------------------


@pytest.mark.parametrize("location", ["python:kernel.server.gunicorn_conf", "python:kernel.gunicorn_conf", "gunicorn.conf.py"])
def test_gunicorn_loading_the_settings_reads_the_file_once_for_settings_and_logging(tmp_path, location):
    """``gunicorn -c LOCATION``: one read, one short-lived child, the logger reads nothing more.

    The packaged module, its name before the kernel had layers, and a checkout's ``gunicorn.conf.py``.
    """
    ini = write_config({**MEMORY, "server": {"bind": "127.0.0.1:9123", "workers": 3, "header_timeout": 4}}, tmp_path)
    shutil.copy(ROOT / "gunicorn.conf.py", tmp_path / "gunicorn.conf.py")
    seen = watched(f"""
        sys.argv = ["gunicorn", "-c", "{location}", "kernel.wsgi:app"]
        from gunicorn.app.wsgiapp import WSGIApplication

        app = WSGIApplication("gunicorn")
        seen["loaded"] = {{"bind": app.cfg.bind, "workers": app.cfg.workers,
                          "worker_class": app.cfg.worker_class_str}}
        app.cfg.logger_class(app.cfg)  # what gunicorn's Arbiter does first: logging set up from the same reading
        from kernel.server.settings import for_worker
        seen["worker_header_timeout"] = for_worker().header_timeout
    """, ini, tmp_path, _env(BASTION_CONFIG=str(ini)))
    assert seen["config_reads"] == 1
    assert seen["processes"] == ["os.fork"]  # the runtime opened once in a child: mem:// keeps 1 worker
    assert seen["loaded"] == {"bind": ["127.0.0.1:9123"], "workers": 1, "worker_class": "kernel.server.worker.BastionWorker"}
    assert seen["worker_header_timeout"] == 4
    assert seen["logging_configured"] is True and seen["published"] is True


def test_bastion_serve_reads_the_file_once_per_load(tmp_path):
    ini = write_config({**MEMORY, "server": {"threads": 3}}, tmp_path)
    seen = watched("""
        from kernel.server.serve import BastionApplication

        app = BastionApplication()
        seen["threads"] = app.cfg.threads
        app.cfg.logger_class(app.cfg)
        app.reload()  # a SIGHUP: the file is read again
        seen["after_reload"] = seen["config_reads"]
    """, ini, tmp_path, _env(BASTION_CONFIG=str(ini)))
    assert seen["threads"] == 3 and seen["after_reload"] == 2 and seen["config_reads"] == 2
    assert seen["processes"] == ["os.fork", "os.fork"]


def test_gunicorns_start_stops_when_the_settings_were_not_read(monkeypatch):
    """The settings module's hooks without its settings (gunicorn loaded it some other way): one line, no start."""
    from kernel.server import gunicorn_conf, settings

    monkeypatch.setattr(settings, "_published", None)
    with pytest.raises(SystemExit, match=r"^bastion: the \[server\] settings were not read"):
        gunicorn_conf.on_starting(None)


# -- the worker takes the master's settings -----------------------------------------------------------------------


@pytest.fixture
def bare_worker(monkeypatch):
    """A BastionWorker whose gunicorn ``init_process`` (threads, signals, the application, the loop) does nothing."""
    from gunicorn.config import Config
    from gunicorn.workers.gthread import ThreadWorker

    from kernel.server.worker import BastionWorker

    monkeypatch.setattr(ThreadWorker, "init_process", lambda self: None)
    cfg = Config()
    cfg.set("threads", 2)
    cfg.set("worker_connections", 4)
    worker = BastionWorker(1, os.getpid(), [], None, 30, cfg, logging.getLogger("test.worker"))
    yield worker
    worker.tmp.close()


def test_a_worker_takes_the_masters_settings_not_the_file(tmp_path, monkeypatch, bare_worker):
    from kernel.core.config import Config
    from kernel.server import settings

    master = settings.ServerSettings.from_config(Config.from_dict(
        {"server": {"header_timeout": 3, "body_timeout": 4}, "bastion": {"max_body": 1000}}))
    monkeypatch.setattr(settings, "_published", master)
    changed = write_config({"server": {"header_timeout": 30, "body_timeout": 40}, "bastion": {"max_body": 5000}},
                           tmp_path)
    monkeypatch.setenv("BASTION_CONFIG", str(changed))
    bare_worker.init_process()
    assert (bare_worker.header_timeout, bare_worker.body_timeout, bare_worker.max_body) == (3, 4, 1000)


def test_a_worker_without_a_master_of_bastions_reads_the_file(tmp_path, monkeypatch, bare_worker):
    from kernel.server import settings

    monkeypatch.setattr(settings, "_published", None)
    ini = write_config({"server": {"header_timeout": 30, "body_timeout": 40}, "bastion": {"max_body": 5000}}, tmp_path)
    monkeypatch.setenv("BASTION_CONFIG", str(ini))
    bare_worker.init_process()
    assert (bare_worker.header_timeout, bare_worker.body_timeout, bare_worker.max_body) == (30, 40, 5000)


@pytest.mark.slow
def test_a_worker_started_after_the_file_changed_serves_with_the_masters_deadline():
    """The file changes under a running server; a worker gunicorn starts again answers with the master's deadline."""
    sections = {**MEMORY, "server": {"header_timeout": 1}}
    with GunicornServer(sections, workers=1, threads=2, env={"BASTION_LOAD_PLUGINS": "storage_mem"}) as server:
        server.config_path.write_text(server.config_path.read_text().replace("header_timeout = 1", "header_timeout = 2.5"))
        [first] = re.findall(r"Booting worker with pid: (\d+)", server.log())
        os.kill(int(first), signal.SIGTERM)
        deadline = time.monotonic() + 60
        while len(re.findall(r"Booting worker with pid: (\d+)", server.log())) < 2:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)  # a worker booting gives no event to wait on
        wait_until_serving(server.host, server.port, server.process)
        with socket.create_connection((server.host, server.port), timeout=30) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")  # a head that never ends
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert json.loads(body)["err"] == ["the request headers did not arrive within 1 s"]
