"""CPU time and memory of running processes, read from /proc (Linux only)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) may contain spaces; everything after its ')' is positional.
    return raw[raw.rindex(")") + 2:].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds; 0 if it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # fields[0] is field 3 (state): utime is field 14, stime field 15
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children(pid: int) -> list[int]:
    """Direct children of a process."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(int(name))
            if fields is not None and int(fields[1]) == pid:
                out.append(int(name))
    return out


def tree(pid: int) -> list[int]:
    """A process and all its descendants."""
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(int(name))
            if fields is not None:
                parents.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(parents.get(current, []))
    return out


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, in bytes; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_SIZE
    except OSError:
        return 0


@dataclass
class CpuSnapshot:
    """CPU seconds per pid of a process tree at one moment."""

    seconds: dict[int, float]

    @classmethod
    def take(cls, root: int | None) -> CpuSnapshot:
        if root is None:
            return cls({})
        return cls({pid: cpu_seconds(pid) for pid in tree(root)})

    def since(self, before: CpuSnapshot) -> float:
        """CPU seconds spent between two snapshots (processes that started in between count fully)."""
        return sum(max(0.0, sec - before.seconds.get(pid, 0.0)) for pid, sec in self.seconds.items())


def context_switches(root: int | None) -> tuple[int, int]:
    """Voluntary and involuntary context switches of a process tree, every thread counted (0, 0 without one).

    Voluntary: a thread blocked (a lock, a socket, a condition, the disk); involuntary: the scheduler took the
    core away (another runnable thread or process wanted it).
    """
    voluntary = involuntary = 0
    for pid in tree(root) if root else []:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches:"):
                            voluntary += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches:"):
                            involuntary += int(line.split()[1])
            except OSError:
                continue
    return voluntary, involuntary


def install_signal_handlers() -> None:
    """SIGTERM stops a bench like Ctrl-C does: its ``finally`` blocks run, so every server, worktree and folder it
    made is stopped or removed on the way out (the default action of SIGTERM would end it at once, leaving them)."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def worktree(repo: Path, revision: str, folder: Path | None = None) -> Iterator[Path]:
    """The code of ``revision`` checked out (detached) in a git worktree of ``repo``: in ``folder``, or in a
    temporary folder of its own; the worktree, and that temporary folder, are removed on the way out."""
    around = None if folder is not None else tempfile.mkdtemp(prefix="bastion-worktree-")
    path = folder if folder is not None else Path(around) / "before"  # type: ignore[arg-type]
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", "--quiet", str(path), revision], check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(path)], check=False)
        if around is not None:
            shutil.rmtree(around, ignore_errors=True)
