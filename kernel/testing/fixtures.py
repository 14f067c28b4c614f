"""pytest fixtures for Bastion and plugin authors: the ``bastion`` pytest plugin.

Installing Bastion registers this module under the ``pytest11`` entry point,
so every test session has these fixtures without a conftest:

``fake_clock``       a :class:`~kernel.testing.FakeClock`, fresh per test.
``make_app``         factory of in-process apps (:func:`~kernel.testing.open_app`)
                     on ``fake_clock``, closed after the test.
``redis_server``     a :class:`~kernel.testing.RedisServer` shared by the session:
                     started on first use, stopped at the end of the session.
``redis_cluster``    a :class:`~kernel.testing.RedisClusterServer` (3 masters, 1 replica
                     each) shared by the session: made on first use, stopped at the end.
``postgres_server``  a :class:`~kernel.testing.PostgresServer` shared by the session:
                     started on first use, removed at the end of the session.
``gunicorn_server``  factory of started :class:`~kernel.testing.GunicornServer` processes,
                     stopped after the test.

A missing ``redis-server``, ``redis-cli`` or PostgreSQL fails the tests that use it, with
what to install: a suite that needs a backend must not pass by skipping it.
The plugin also registers the ``requires`` mark of the conformance suite
(:func:`kernel.testing.requires`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import pytest

from kernel.testing.apps import open_app
from kernel.testing.ci import launched
from kernel.testing.clock import FakeClock
from kernel.testing.postgres import PostgresServer
from kernel.testing.redis import RedisServer
from kernel.testing.redis_cluster import RedisClusterServer
from kernel.testing.servers import GunicornServer
from kernel.testing.suite.base import MARK


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARK}(*capabilities): run only when the storage driver under test declares every named "
                   "capability, else skip (kernel.testing.requires)")


@pytest.fixture
def fake_clock() -> FakeClock:
    """A clock that moves only when told."""
    return FakeClock()


@pytest.fixture
def make_app(fake_clock):
    """Factory of in-process Bastion apps on the ``fake_clock``, closed after the test: see :func:`open_app`.

    ``make_app(sections=None, plugins=(), only=None, clock=None)``: ``clock``
    replaces the ``fake_clock`` (``time.time`` for an app served to a browser).
    """
    apps = []

    def make(sections: Mapping[str, Mapping] | None = None, plugins: Iterable[object] = (),
             only: Iterable[str] | None = None, clock=None):
        app = open_app(sections, plugins, only, clock or fake_clock)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.runtime.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server on 127.0.0.1 for the whole session (its :attr:`~RedisServer.url` is DB 0); a missing binary fails."""
    with launched(RedisServer(), "redis-server") as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServer]:
    """A Redis Cluster on 127.0.0.1 for the whole session: 3 masters with a replica each; a missing binary fails.

    Tests that kill a node (:meth:`~RedisClusterServer.fail_over`) bring it back and wait until the
    cluster is healthy again, so that the next test finds every master with its replica.
    """
    with launched(RedisClusterServer(), "a Redis Cluster") as cluster:
        yield cluster


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL server on 127.0.0.1 for the whole session; ``create_database(name)`` returns a fresh URL."""
    with launched(PostgresServer(), "a private PostgreSQL server") as server:
        yield server


@pytest.fixture
def gunicorn_server() -> Iterator:
    """Factory of gunicorn processes serving Bastion: ``gunicorn_server(sections, workers=1, threads=4, env=None)``.

    Takes :class:`GunicornServer`'s arguments, returns the server once
    ``/healthz`` answers; every server is stopped and its files removed after
    the test.
    """
    started: list[GunicornServer] = []

    def start(sections: Mapping[str, Mapping[str, object]], **options) -> GunicornServer:
        server = GunicornServer(sections, **options)
        started.append(server)
        return server.start()

    yield start
    for server in reversed(started):
        server.close()
