"""The runtime: configuration, plugins, drivers, models and services of one process.

A runtime knows nothing of HTTP (that is :func:`kernel.http.app.create_app`'s) and
sets nothing global. Building one reads the configuration through every
plugin's ``bastion_configure`` (where plugins register what they keep for
this runtime), opens the storage drivers, registers the models and services,
and lets every plugin check its configuration against them
(``bastion_check``); :meth:`Runtime.start` runs ``bastion_startup``;
:meth:`Runtime.close` runs ``bastion_shutdown``, closes the drivers and
unregisters the runtime's plugin objects.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Iterator

import pluggy

from kernel.core import context
from kernel.core.config import Config, load_config
from kernel.core.driver import Capability, Driver, capabilities_of
from kernel.core.errors import ConfigError
from kernel.core.events import SECURITY, log_event
from kernel.core.instruments import MetricsRegistry, NoMetrics
from kernel.core.paging import paged
from kernel.core.plugins import SEAT, call_per_plugin, get_plugin_manager
from kernel.core.services import Services
from kernel.core.store import Errors, Models, Record, StorageScope
from kernel.core.urls import StorageURL

log = logging.getLogger("bastion")

#: The capability of a driver whose data lives in one process (gunicorn then runs one worker).
PROCESS_LOCAL = Capability.PROCESS_LOCAL


class _Seat:
    """Registered (no hooks) under :data:`SEAT` while a runtime uses the plugin manager, so that a second is refused."""


class Runtime:
    """Everything a worker process (or a command, or a test) needs, built once.

    ``plugin_manager`` belongs to this runtime alone (the default builds one
    from the installed plugins); ``clock`` returns Unix seconds and decides
    every expiry; ``metrics`` is what it counts with (the operations layer's
    :class:`kernel.ops.metrics.Metrics` where the server builds it; nothing
    is counted without).
    """

    def __init__(self, config: Config | None = None, plugin_manager: pluggy.PluginManager | None = None,
                 clock: Callable[[], float] | None = None, *, metrics: MetricsRegistry | None = None):
        self.config = config if config is not None else load_config()
        self.pm = plugin_manager if plugin_manager is not None else get_plugin_manager()
        if self.pm.get_plugin(SEAT) is not None:
            raise RuntimeError("this plugin manager already serves another runtime; build one per runtime")
        self.pm.register(_Seat(), name=SEAT)
        self.clock = clock or time.time
        self.hook = self.pm.hook
        self.development = self.config.bastion.development
        #: The runtime's Prometheus metrics (``counter``, ``histogram``, ``scrape_gauge`` for plugins).
        self.metrics: MetricsRegistry = metrics if metrics is not None else NoMetrics()
        self._registered: list[object] = []
        self._started = False
        self._closed = False
        try:
            call_per_plugin(self.pm, "bastion_configure", self.config.for_plugin, config=self.config, runtime=self)
            self.config.check_unclaimed()
            settings = self.config.bastion
            self.records: Driver = self.open_driver(settings.storage)
            state_url = settings.state or settings.storage
            self.state: Driver = self.records if state_url == settings.storage else self.open_driver(state_url)
            self.models = Models(_flatten(self.hook.bastion_models()))
            self.services = Services(_flatten(self.hook.bastion_services()))
            call_per_plugin(self.pm, "bastion_check", self.config.for_plugin, config=self.config, runtime=self)
        except BaseException:
            # Close the drivers a later step found opened (records and state may be one driver).
            opened = [getattr(self, name, None) for name in ("records", "state")]
            for driver in {id(d): d for d in opened if d is not None}.values():
                driver.close()
            self._unregister()
            raise

    # -- plugins ----------------------------------------------------------

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin object for this runtime only (from ``bastion_configure``)."""
        self.pm.register(plugin, name=name)
        self._registered.append(plugin)

    def get_plugin(self, name: str) -> object | None:
        """Return the plugin object registered under ``name``, or None."""
        return self.pm.get_plugin(name)

    def _unregister(self) -> None:
        for plugin in reversed(self._registered):
            self.pm.unregister(plugin)
        self._registered.clear()
        if self.pm.get_plugin(SEAT) is not None:
            self.pm.unregister(name=SEAT)

    # -- storage ----------------------------------------------------------

    def open_driver(self, url: str) -> Driver:
        """Open the driver of a storage URL through ``bastion_storage_driver`` (wrapped once when it cannot page)."""
        url = StorageURL(url)
        found = call_per_plugin(self.pm, "bastion_storage_driver", self.config.for_plugin,
                                url=url, config=self.config, clock=self.clock)
        driver = found[0] if found else None
        if driver is None:
            raise ConfigError(f"{self.config.label}: [bastion] storage URL {url.redacted!r}: no installed plugin "
                              f"serves the scheme {url.scheme!r}")
        return paged(driver)

    @property
    def drivers(self) -> list[Driver]:
        """The distinct drivers: records, then state when it is another one."""
        return [self.records] if self.state is self.records else [self.records, self.state]

    @property
    def process_local(self) -> bool:
        """Whether some driver keeps its data in this process (so only one process may serve it)."""
        return any(PROCESS_LOCAL in capabilities_of(driver) for driver in self.drivers)

    def validate_record(self, model: type, record: Record, errors: Errors) -> None:
        """Run the ``bastion_validate`` hook for a record about to be saved."""
        self.hook.bastion_validate(model=model, record=record, errors=errors)

    def scope(self, domain: str) -> StorageScope:
        """What ``storage()`` works on for ``domain``."""
        return StorageScope(self.records, domain, self.models, self.validate_record)

    @contextlib.contextmanager
    def bind(self, domain: str, **fields) -> Iterator[context.Request]:
        """Act as a request of ``domain`` outside HTTP (CLI, tests, jobs): ``storage()`` works there."""
        token = context.bind_scope(self.scope(domain))
        try:
            with context.activate(context.Request(domain, **fields)) as request:
                yield request
        finally:
            context.unbind_scope(token)

    def ping(self) -> None:
        """Raise ServiceUnavailable unless every driver answers reads and writes."""
        for driver in self.drivers:
            driver.ping()

    # -- security events ----------------------------------------------------

    def security_event(self, event: str, *, user: str | None = None, level: int = logging.INFO,
                       domain: str | None = None, origin: str | None = None, **fields) -> None:
        """Write one line on ``bastion.security`` and count it in ``bastion_security_events_total{event}``.

        ``domain`` and ``origin`` default to the current request's (or the
        :meth:`bind` block's); the request id is the current one. ``user`` is
        the username concerned (or the one a failed login attempted). Fields
        must never hold a secret: no password, key, MAC, whole sid or hash.
        """
        request = context.get()
        if request is not None:
            domain = domain if domain is not None else request.domain
            origin = origin if origin is not None else request.origin
        log_event(SECURITY, level, event, {"domain": domain or None, "origin": origin or None, "user": user, **fields})
        self.metrics.security_events.inc(event)

    # -- lifecycle ----------------------------------------------------------

    @property
    def started(self) -> bool:
        """Whether :meth:`start` ran (and :meth:`close` did not)."""
        return self._started and not self._closed

    def start(self) -> Runtime:
        """Run every plugin's ``bastion_startup`` once; return the runtime."""
        if not self._started:
            call_per_plugin(self.pm, "bastion_startup", self.config.for_plugin, runtime=self, config=self.config)
            self._started = True
        return self

    def close(self) -> None:
        """Run ``bastion_shutdown``, close the drivers, unregister this runtime's plugin objects."""
        if self._closed:
            return
        self._closed = True
        try:
            self.hook.bastion_shutdown(runtime=self)
        except Exception:
            log.exception("a plugin failed to shut down")
        for driver in self.drivers:
            driver.close()
        self._unregister()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _flatten(results) -> list:
    return list(itertools.chain.from_iterable(r for r in results if r))
