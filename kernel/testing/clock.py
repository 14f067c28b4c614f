"""A clock for tests: Unix seconds that move only when told."""

from __future__ import annotations

import threading


class FakeClock:
    """A callable returning the current fake time; :meth:`advance` moves it."""

    def __init__(self, start: float = 1_767_222_000.0):
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move time forward; return the new time."""
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, when: float) -> None:
        """Jump to a given time."""
        with self._lock:
            self._now = float(when)
