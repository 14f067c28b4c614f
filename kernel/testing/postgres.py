"""A private, throw-away PostgreSQL server for tests and benchmarks.

``PostgresServer`` runs ``initdb`` in a temporary folder and starts
``postgres`` on 127.0.0.1 and a free port, with durability off for speed
(fsync, synchronous commit and full-page writes). PostgreSQL refuses to run
as root, so under root the server runs as the ``postgres`` system user that
Debian's package creates (or, if absent, a ``bastion-pg`` system user created
for the purpose) through ``runuser``::

    from kernel.testing import PostgresServer

    with PostgresServer() as server:
        driver = SqlDriver(server.url)

:meth:`stop` and :meth:`start` take the server down and bring it back on the
same port and data (to test outages); :meth:`pause` freezes every process of
the server (``SIGSTOP``: connections stay open and nothing answers, as a hung
server or a silent network) until :meth:`resume`; :meth:`close` stops it and
removes everything.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from kernel.testing.ports import free_port

#: Users a root process may run PostgreSQL as, in order of preference.
SERVER_USERS = ("postgres", "bastion-pg")


class PostgresServerError(RuntimeError):
    """PostgreSQL could not be found, initialised, started or stopped."""


def find_bindir() -> Path | None:
    """Return the folder of PostgreSQL's server programs (initdb, pg_ctl, postgres), or None.

    Looks at ``$BASTION_PG_BINDIR`` (alone, when set), then ``pg_config --bindir``, then the
    newest ``/usr/lib/postgresql/*/bin`` (Debian), then the ``PATH``.
    """
    candidates: list[Path] = []
    if os.environ.get("BASTION_PG_BINDIR"):
        # An explicit choice is final: a wrong one is reported, not papered over.
        folder = Path(os.environ["BASTION_PG_BINDIR"])
        return folder if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "postgres")) else None
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True)
            candidates.append(Path(out.stdout.strip()))
        except (OSError, subprocess.SubprocessError):
            pass

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", Path(path).parent.name)) or (0,)

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    for folder in candidates:
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def _server_user() -> pwd.struct_passwd | None:
    """The user to run PostgreSQL as: None for a non-root process (it runs as itself)."""
    if os.geteuid() != 0:
        return None
    for name in SERVER_USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    name = SERVER_USERS[-1]
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    return pwd.getpwnam(name)


class PostgresServer:
    """A temporary PostgreSQL cluster with one database, reachable at :attr:`url`."""

    def __init__(self, database: str = "bastion", user: str = "bastion", password: str | None = None,
                 bindir: str | os.PathLike | None = None, startup_timeout: int = 60):
        found = Path(bindir) if bindir else find_bindir()
        if found is None:
            where = os.environ.get("BASTION_PG_BINDIR")
            found_where = f"not in BASTION_PG_BINDIR={where}" if where else "not found"
            raise PostgresServerError(
                f"PostgreSQL server programs (initdb, pg_ctl, postgres) {found_where}: install Debian's `postgresql` "
                "package (they go under /usr/lib/postgresql/*/bin) or set BASTION_PG_BINDIR")
        self.bindir = found
        self.database = database
        self.user = user
        self.password = password or secrets.token_urlsafe(18)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.startup_timeout = startup_timeout
        self.root: Path | None = None
        self.running = False
        self._paused: list[int] = []
        self._account = _server_user()

    # -- addresses --------------------------------------------------------

    @property
    def url(self) -> str:
        """The storage URL of the server's database, as a Bastion INI file would write it."""
        return self.url_of(self.database)

    def url_of(self, database: str) -> str:
        """The storage URL of another database of the server."""
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    # -- lifecycle --------------------------------------------------------

    def start(self) -> PostgresServer:
        """Initialise the cluster on first use, then start the server and wait until it accepts connections."""
        if self.running:
            return self
        first = self.root is None
        if first:
            self._initdb()
            atexit.register(self.close)
        assert self.root is not None  # _initdb made it
        options = " ".join(shlex.quote(o) for o in (
            "-h", self.host, "-p", str(self.port), "-k", str(self.root),
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=300"))
        self._run("pg_ctl", "-D", str(self._data), "-l", str(self.root / "server.log"), "-o", options,
                  "-w", "-t", str(self.startup_timeout), "start")
        self.running = True
        if first:
            self.create_database(self.database)
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown), keeping its data and port for :meth:`start`."""
        if not self.running:
            return
        self.resume()
        self._run("pg_ctl", "-D", str(self._data), "-m", "fast", "-w", "-t", str(self.startup_timeout), "stop")
        self.running = False

    def pause(self) -> None:
        """Freeze the server and all its processes (SIGSTOP): it keeps every connection and answers none."""
        if self._paused or not self.running:
            return
        master = int((self._data / "postmaster.pid").read_text().split()[0])
        # The postmaster first, so that it forks no backend after its children are listed (a connection being
        # opened meanwhile would otherwise get a backend that keeps answering); then its children until none is new.
        os.kill(master, signal.SIGSTOP)
        self._paused = [master]
        while new := [pid for pid in _children(master) if pid not in self._paused]:
            for pid in new:
                os.kill(pid, signal.SIGSTOP)
            self._paused.extend(new)

    def resume(self) -> None:
        """Let a paused server run again (SIGCONT)."""
        paused, self._paused = self._paused, []
        for pid in paused:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        """Stop the server and remove its folder."""
        self.resume()
        try:
            if self.running:
                try:
                    self.stop()
                except PostgresServerError:
                    self._run("pg_ctl", "-D", str(self._data), "-m", "immediate", "-w", "stop", check=False)
                    self.running = False
        finally:
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None
            atexit.unregister(self.close)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def create_database(self, name: str) -> str:
        """Create a database and return its URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                             dbname="postgres", autocommit=True, connect_timeout=10) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_of(name)

    # -- internals --------------------------------------------------------

    @property
    def _data(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    def _initdb(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="bastion-pg-"))
        password_file = self.root / "password"
        password_file.write_text(self.password + "\n")
        password_file.chmod(0o600)
        if self._account is not None:
            for path in (self.root, password_file):
                os.chown(path, self._account.pw_uid, self._account.pw_gid)
        self._run("initdb", "-D", str(self._data), "-U", self.user, f"--pwfile={password_file}",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync")
        password_file.unlink()

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.bindir / program), *args]
        if self._account is not None:
            command = ["runuser", "-u", self._account.pw_name, "--", *command]
        result = subprocess.run(command, cwd=self.root, capture_output=True, text=True,
                                timeout=self.startup_timeout + 30, env={**os.environ, "LC_ALL": "C"})
        if check and result.returncode != 0:
            raise PostgresServerError(f"{program} failed ({result.returncode}): {result.stderr.strip()} "
                                      f"{result.stdout.strip()[-2000:]}{self._log_tail()}")
        return result

    def _log_tail(self) -> str:
        log = self.root / "server.log" if self.root else None
        if log is None or not log.is_file():
            return ""
        return "\nserver log:\n" + log.read_text(errors="replace")[-2000:]


def _children(pid: int) -> list[int]:
    """The direct children of a process, read from /proc (Linux)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text(errors="replace")
        except OSError:
            continue
        # The command name may hold spaces: the parent's pid is the second field after its ')'.
        if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
            found.append(int(name))
    return found
