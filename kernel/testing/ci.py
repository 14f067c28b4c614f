"""A test that cannot run here: skipped on a developer's machine, failed on CI.

A suite that needs a browser, a server or a plugin must not pass in CI by
skipping what it could not run: with ``CI`` set to ``true`` (as CI services
set it, and ``.ci/run`` does), :func:`skip_or_fail` fails the test with the
same reason it would otherwise skip it for. The servers of
:mod:`kernel.testing.fixtures` (redis-server, PostgreSQL) fail everywhere,
through :func:`launched`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from types import ModuleType
from typing import NoReturn, TypeVar

import pytest

from kernel.testing.postgres import PostgresServerError
from kernel.testing.redis import RedisServerError

L = TypeVar("L", bound=AbstractContextManager)


def in_ci() -> bool:
    """Whether the tests run on CI: ``$CI`` is ``true`` (or ``1``, ``yes``)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test for ``reason``, or fail it on CI (:func:`in_ci`)."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: what a test needs must be there)", pytrace=False)
    pytest.skip(reason)


def import_or_skip(name: str, reason: str | None = None) -> ModuleType:
    """Import a module, or :func:`skip_or_fail` when it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        skip_or_fail(reason or f"{name} is not installed")


@contextmanager
def launched(server: L, what: str) -> Iterator[L]:
    """Run a launcher's ``with`` block: the started server, stopped (and its files removed) at the end.

    A server that cannot start fails the test with ``what`` and the reason
    (``cannot start a private PostgreSQL server: initdb not found; …``),
    everywhere, not only on CI: a test that needs a backend must not pass by
    skipping it. What fails once the server runs is the test's own error.
    """
    running = False
    try:
        with server as started:
            running = True
            yield started
    except (RedisServerError, PostgresServerError) as exc:
        if running:
            raise
        pytest.fail(f"cannot start {what}: {exc}", pytrace=False)
