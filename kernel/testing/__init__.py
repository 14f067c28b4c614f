"""The test-side API of Bastion: what a test may import beyond ``kernel`` (``kernel.__all__``).

A plugin's tests import ``kernel`` and this module, nothing else of the
kernel; names not listed in ``__all__`` are the kernel's own. docs/testing.md
is the guide.

* The storage-driver conformance suite, split by concern: :class:`RecordsSuite`,
  :class:`UnitOfWorkSuite`, :class:`HistorySuite`, :class:`StateSuite`,
  :class:`HealthSuite`, and :class:`DriverSuite`, all five. A driver adopts it with one subclass and a
  ``driver`` fixture; :func:`requires` marks a test that needs a capability
  the driver declares (``persistent`` tests also need a ``reopen`` fixture)::

      from kernel.testing import DriverSuite

      class TestMyDriver(DriverSuite):
          @pytest.fixture
          def driver(self, clock):
              return MyDriver(url, clock=clock)

* :class:`FakeClock`: an injectable clock that only moves when told.
* :func:`skip_or_fail` (and :func:`import_or_skip`, :func:`in_ci`): a test that
  cannot run for want of a browser, a server or a plugin is skipped, or
  failed when ``CI=true``; :func:`launched` runs a launcher below for a
  fixture, and fails the test (everywhere) when its server cannot start.
* :func:`open_app`: an in-process app; :class:`Client` (with :class:`Response`,
  :class:`Session`, :class:`InvalidResponseSignature`) calls it in process or
  over HTTP; the signing helpers build or check signed calls by hand.
* Launchers of real servers: :class:`RedisServer`, :class:`RedisClusterServer`
  (``redis-cli --cluster create``, with :func:`find_redis_cli`), :class:`PostgresServer`,
  :class:`GunicornServer` and :class:`BastionServer` (``bastion serve``), with
  :func:`write_config` and :func:`wait_until_serving`, and :func:`free_port`.
* The kernel's entry points a test drives: :func:`create_app`,
  :func:`get_plugin_manager`, :func:`describe`, the CLI's :func:`main`, and the
  schemas of ``[bastion]`` and ``[server]``.

The pytest plugin :mod:`kernel.testing.fixtures` (loaded automatically once
Bastion is installed) offers the ``fake_clock``, ``make_app``,
``redis_server``, ``redis_cluster``, ``postgres_server`` and ``gunicorn_server`` fixtures.
"""

from kernel.cli import main
from kernel.client import Client, DowngradeRefused, InvalidResponseSignature, Response, ServerFailure, Session
from kernel.core.config import BASTION_SCHEMA, SERVER_SCHEMA
from kernel.core.plugins import describe, get_plugin_manager
from kernel.core.sealing import SEALED_TYPE, answer_aad, call_aad, open_envelope, seal
from kernel.core.signing import (
    authorization,
    body_hash,
    macs_equal,
    new_nonce,
    parse_authorization,
    parse_server_authorization,
    request_mac,
    response_mac,
    response_string,
    server_authorization,
    string_to_sign,
)
from kernel.http.app import create_app
from kernel.testing.apps import open_app
from kernel.testing.ci import import_or_skip, in_ci, launched, skip_or_fail
from kernel.testing.clock import FakeClock
from kernel.testing.ports import free_port
from kernel.testing.postgres import PostgresServer, PostgresServerError, find_bindir
from kernel.testing.redis import RedisServer, RedisServerError, find_redis_server
from kernel.testing.redis_cluster import RedisClusterServer, find_redis_cli
from kernel.testing.servers import BastionServer, GunicornServer, wait_until_serving, write_config
from kernel.testing.suite import (
    DriverSuite,
    HealthSuite,
    HistorySuite,
    RecordsSuite,
    StateSuite,
    SuiteBase,
    TenantsSuite,
    UnitOfWorkSuite,
    requires,
)

__all__ = [
    # the conformance suite
    "DriverSuite", "RecordsSuite", "UnitOfWorkSuite", "HistorySuite", "StateSuite", "HealthSuite", "TenantsSuite",
    "SuiteBase", "requires",
    # time and in-process apps
    "FakeClock", "open_app",
    # what a test needs, skipped here and failed on CI (CI=true)
    "skip_or_fail", "import_or_skip", "in_ci", "launched",
    # launchers of real servers
    "RedisServer", "RedisServerError", "find_redis_server", "RedisClusterServer", "find_redis_cli",
    "PostgresServer", "PostgresServerError", "find_bindir",
    "GunicornServer", "BastionServer", "write_config", "wait_until_serving", "free_port",
    # the client
    "Client", "Response", "Session", "InvalidResponseSignature", "ServerFailure", "DowngradeRefused",
    # signing by hand
    "authorization", "parse_authorization", "server_authorization", "parse_server_authorization", "new_nonce",
    "request_mac", "response_mac", "macs_equal", "string_to_sign", "response_string", "body_hash",
    # sealing by hand (protocol version 2)
    "SEALED_TYPE", "seal", "open_envelope", "call_aad", "answer_aad",
    # the kernel's entry points, and the configuration schemas tests read
    "create_app", "get_plugin_manager", "describe", "main", "BASTION_SCHEMA", "SERVER_SCHEMA",
]
