"""Start real servers for end-to-end tests and benchmarks: gunicorn serving Bastion."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from kernel.testing.ports import free_port

#: The root of the repository: its gunicorn.conf.py is the settings every GunicornServer runs with.
REPO_ROOT = Path(__file__).resolve().parents[2]


def wait_until_serving(host: str, port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    """Wait until ``GET /healthz`` answers (any status); RuntimeError if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            conn = http.client.HTTPConnection(host, port, timeout=2)
            conn.request("GET", "/healthz", headers={"Host": "localhost"})
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            time.sleep(0.05)  # polling a process that is starting; there is no event to wait on
    raise RuntimeError(f"the server did not answer within {timeout} s")


def write_config(sections: Mapping[str, Mapping[str, object]], directory: str | os.PathLike) -> Path:
    """Write an INI file from ``{section: {key: value}}`` and return its path."""
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            lines.append(f"{key} = {value}")
        lines.append("")
    path = Path(directory) / "bastion.ini"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


class GunicornServer:
    """A gunicorn process serving ``kernel.wsgi:app`` on 127.0.0.1 and a free port.

    ``sections`` is the INI configuration (its ``[server]`` bind is replaced).
    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, sections: Mapping[str, Mapping[str, object]], workers: int = 1, threads: int = 4,
                 env: Mapping[str, str] | None = None, host: str = "127.0.0.1", app: str = "kernel.wsgi:app",
                 startup_timeout: float = 60.0):
        self.sections = {name: dict(values) for name, values in sections.items()}
        self.workers = workers
        self.threads = threads
        self.extra_env = dict(env or {})
        self.host = host
        self.port = free_port(host)
        self.app = app
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="bastion-gunicorn-")
        self.log_path = Path(self._tmp.name) / "server.log"

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:34567``."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> GunicornServer:
        """Start gunicorn and wait until ``/healthz`` answers."""
        sections = dict(self.sections)
        sections["server"] = {**sections.get("server", {}), "bind": f"{self.host}:{self.port}",
                              "workers": self.workers, "threads": self.threads, "reload": "off"}
        config = write_config(sections, self._tmp.name)
        env = {**os.environ, "BASTION_CONFIG": str(config), **self.extra_env}
        cmd = [sys.executable, "-m", "gunicorn", "-c", str(REPO_ROOT / "gunicorn.conf.py"), self.app]
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(cmd, cwd=self._tmp.name, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        try:
            wait_until_serving(self.host, self.port, self.process, self.startup_timeout)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{exc}:\n{self.log()}") from None

    def log(self) -> str:
        """Return what the server printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop gunicorn and its workers."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()
        self.process = None

    def close(self) -> None:
        """Stop the server and remove its files."""
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> GunicornServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
