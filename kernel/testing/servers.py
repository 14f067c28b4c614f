"""Start real servers for end-to-end tests and benchmarks: gunicorn serving Bastion, and ``bastion serve``."""

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

#: The packaged gunicorn settings every GunicornServer runs with (read from the [server] section).
SETTINGS = "python:kernel.server.gunicorn_conf"


def wait_until_serving(host: str, port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    """Wait until ``GET /healthz`` answers (any status); RuntimeError if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        conn = http.client.HTTPConnection(host, port, timeout=2)
        try:
            conn.request("GET", "/healthz", headers={"Host": "localhost"})
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.05)  # polling a process that is starting; there is no event to wait on
        finally:
            conn.close()
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
    """A gunicorn process serving ``kernel.wsgi:app`` on 127.0.0.1 and a free port, with the packaged settings.

    ``sections`` is the INI configuration (its ``[server]`` bind, workers,
    threads and reload are replaced); the process runs in a folder of its
    own, where the INI file is written. Use as a context manager, or call
    :meth:`start` and :meth:`stop`.
    """

    def __init__(self, sections: Mapping[str, Mapping[str, object]], workers: int = 1, threads: int = 4,
                 env: Mapping[str, str] | None = None, host: str = "127.0.0.1", app: str = "kernel.wsgi:app",
                 startup_timeout: float = 60.0, settings: str = SETTINGS):
        self.sections = {name: dict(values) for name, values in sections.items()}
        self.workers = workers
        self.threads = threads
        self.extra_env = dict(env or {})
        self.host = host
        self.port = free_port(host)
        self.app = app
        self.startup_timeout = startup_timeout
        #: gunicorn's settings module (``-c``): the packaged one, or an earlier checkout's (``bench.interleaved``).
        self.settings = settings
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
        self.config_path = write_config(sections, self._tmp.name)
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(self.command(), cwd=self.cwd, env=self.environment(), stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready(self.process)
        return self

    @property
    def cwd(self) -> str:
        """The working directory of the server."""
        return self._tmp.name

    def environment(self) -> dict[str, str]:
        """The environment of the server process."""
        return {**os.environ, "BASTION_CONFIG": str(self.config_path), **self.extra_env}

    def command(self) -> list[str]:
        """The server's command line."""
        return [sys.executable, "-m", "gunicorn", "-c", self.settings, self.app]

    def _wait_ready(self, process: subprocess.Popen) -> None:
        try:
            wait_until_serving(self.host, self.port, process, self.startup_timeout)
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


class BastionServer(GunicornServer):
    """``bastion --config FILE serve`` on 127.0.0.1 and a free port: the command operators run.

    As :class:`GunicornServer` (the INI file is written from ``sections``, its
    ``[server]`` bind, workers, threads and reload replaced), but started as
    the ``bastion`` command, with the file named by ``--config`` and no
    ``$BASTION_CONFIG``, in the working directory ``cwd`` (by default an
    empty folder of its own, apart from the file's), so nothing depends on
    where it runs.
    """

    def __init__(self, sections: Mapping[str, Mapping[str, object]], workers: int = 1, threads: int = 4,
                 env: Mapping[str, str] | None = None, host: str = "127.0.0.1", cwd: str | os.PathLike | None = None,
                 startup_timeout: float = 60.0):
        super().__init__(sections, workers, threads, env, host, startup_timeout=startup_timeout)
        self._cwd = str(cwd) if cwd is not None else None

    @property
    def cwd(self) -> str:
        if self._cwd is None:
            self._cwd = tempfile.mkdtemp(prefix="run-", dir=self._tmp.name)
        return self._cwd

    def environment(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if key != "BASTION_CONFIG"}
        return {**env, **self.extra_env}

    def command(self) -> list[str]:
        # The console script next to the interpreter, as pip installs it (else the same entry point by module).
        script = Path(sys.executable).with_name("bastion")
        prefix = [str(script)] if script.is_file() else [sys.executable, "-m", "kernel.cli"]
        return [*prefix, "--config", str(self.config_path), "serve"]
