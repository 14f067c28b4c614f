"""A throw-away ``redis-server`` for tests, benchmarks and end-to-end runs.

::

    from kernel.testing import RedisServer

    server = RedisServer().start()
    try:
        driver = RedisDriver(server.url)
        ...
    finally:
        server.stop()

The server listens on 127.0.0.1 at a free port (and on a unix socket in its
own temporary folder), persists nothing, and keeps its port across
:meth:`RedisServer.kill` and a later :meth:`RedisServer.start`, so outage
tests can bring "the same" Redis back.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from kernel.testing.ports import free_port

#: Where to look for the binary when it is not on PATH.
FALLBACK_BINARY = "/usr/bin/redis-server"

#: What a missing binary's error tells the reader to do.
INSTALL_HINT = "install it (Debian: apt-get install redis-server) or set BASTION_REDIS_SERVER to its path"


class RedisServerError(RuntimeError):
    """redis-server is missing or did not start."""


def find_redis_server() -> str:
    """Return the redis-server binary: ``$BASTION_REDIS_SERVER``, PATH, then /usr/bin.

    Raises RedisServerError naming what to install when there is none.
    """
    candidates = [os.environ.get("BASTION_REDIS_SERVER"), shutil.which("redis-server"), FALLBACK_BINARY]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RedisServerError(f"redis-server not found; {INSTALL_HINT}")


class RedisServer:
    """One redis-server process on loopback, without persistence.

    ``password`` sets ``requirepass``; ``startup_timeout`` bounds the wait for
    readiness; ``extra_args`` are more ``redis-server`` options (a cluster
    node's, say); ``port`` fixes the port (by default a free one is picked).
    :attr:`url` and :attr:`unix_url` are the URLs of the running server (they
    stay valid across :meth:`kill` and :meth:`start`).
    """

    def __init__(self, password: str | None = None, startup_timeout: float = 10.0, binary: str | None = None,
                 extra_args: Sequence[str] = (), port: int | None = None):
        self.password = password
        self.startup_timeout = startup_timeout
        self.binary = binary
        self.extra_args = tuple(extra_args)
        self.port: int | None = port
        self.directory: Path | None = None
        self.process: subprocess.Popen | None = None

    # -- addresses ------------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        """The unix socket the server listens on."""
        if self.directory is None:
            raise RedisServerError("the server was never started")
        return self.directory / "redis.sock"

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:<port>/0``."""
        if self.port is None:
            raise RedisServerError("the server was never started")
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        """``unix://[:password@]<socket>?db=0``."""
        auth = f":{self.password}@" if self.password else ""
        return f"unix://{auth}{self.socket_path}?db=0"

    # -- life cycle -------------------------------------------------------------

    def start(self) -> RedisServer:
        """Start the server (again on the same port after :meth:`kill`) and wait until it answers PING."""
        if self.process is not None and self.process.poll() is None:
            return self
        binary = self.binary or find_redis_server()
        if not os.access(binary, os.X_OK):
            raise RedisServerError(f"{binary}: no such executable; {INSTALL_HINT}")
        if self.directory is None:
            # Short path: unix socket paths are limited to about 100 bytes.
            self.directory = Path(tempfile.mkdtemp(prefix="bastion-redis-"))
        fixed = self.port is not None
        # A port found free may be taken before redis binds it; pick another then.
        for _ in range(1 if fixed else 5):
            port = self.port if self.port is not None else free_port()
            self.process = self._spawn(binary, port)
            if self._wait_ready(port):
                self.port = port
                return self
            self._reap()
        log = self._log_tail()
        self.stop()
        raise RedisServerError(f"redis-server did not become ready within {self.startup_timeout}s:\n{log}")

    def kill(self) -> None:
        """Kill the server abruptly (SIGKILL), as a crash or outage would; keep its port and folder."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        self._reap()

    def stop(self) -> None:
        """Stop the server and remove its folder."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._reap()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------

    def _spawn(self, binary: str, port: int) -> subprocess.Popen:
        assert self.directory is not None
        args = [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--logfile", str(self.directory / "redis.log"),
            "--daemonize", "no",
        ]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        args += self.extra_args
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def _wait_ready(self, port: int) -> bool:
        """Poll with PING until the server answers, exits, or the deadline passes."""
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            if self._answers(port):
                return True
            time.sleep(0.02)
        return False

    def _answers(self, port: int) -> bool:
        command = b"PING\r\n"
        if self.password:
            command = _resp("AUTH", self.password) + command
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(command)
                reply = b""
                while b"PONG" not in reply and b"-" not in reply:
                    chunk = sock.recv(256)
                    if not chunk:
                        break
                    reply += chunk
                return b"PONG" in reply
        except OSError:
            return False

    def _reap(self) -> None:
        if self.process is not None:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def _log_tail(self, lines: int = 20) -> str:
        try:
            assert self.directory is not None
            text = (self.directory / "redis.log").read_text(errors="replace")
        except (OSError, AssertionError):
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _resp(*parts: str) -> bytes:
    """Encode a command in the Redis protocol."""
    out = [f"*{len(parts)}\r\n".encode()]
    for part in parts:
        data = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)
