"""Helpers the SQL driver's tests share."""

from __future__ import annotations

import threading


def sqlite_path(sqlite_url: str) -> str:
    """The file of a ``sqlite:///`` URL."""
    return sqlite_url.removeprefix("sqlite:///")


def in_thread(work) -> tuple[threading.Thread, list]:
    """Run ``work`` in a started daemon thread; its result (or the exception it raised) lands in the list."""
    outcome: list = []

    def run():
        try:
            outcome.append(work())
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome
