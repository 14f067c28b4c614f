"""The runtime: configuration, plugins, drivers, models and services of one process."""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pluggy

from kernel import context
from kernel.config import Config, load_config
from kernel.driver import Driver
from kernel.errors import ConfigError
from kernel.hosts import DEVELOPMENT_HOSTS, HostMatcher, Origins
from kernel.plugins import get_plugin_manager
from kernel.services import Services
from kernel.store import Errors, Models, Record

log = logging.getLogger("bastion")


class Runtime:
    """Everything a worker process needs to serve requests, built once at start-up.

    Construction reads the configuration through every plugin's
    ``bastion_configure``, opens the storage drivers and collects models and
    services; :meth:`start` then runs ``bastion_startup``.
    """

    def __init__(self, config: Config | None = None, plugin_manager: pluggy.PluginManager | None = None,
                 clock: Callable[[], float] | None = None):
        self.config = config if config is not None else load_config()
        self.pm = plugin_manager if plugin_manager is not None else get_plugin_manager()
        self.clock = clock or time.time
        self.hook = self.pm.hook
        self.hook.bastion_configure(config=self.config)
        self.config.check_unclaimed()
        settings = self.config.bastion
        self.development = settings.development
        logging.getLogger("bastion").setLevel(settings.log_level.upper())
        hosts = settings.allowed_hosts or (DEVELOPMENT_HOSTS if self.development else ())
        if not hosts:
            raise ConfigError(f"{self.config.label}: [bastion] allowed_hosts: required in production mode; "
                              "accepted: a list of host names such as example.com, *.example.com")
        self.hosts = HostMatcher(hosts)
        self.origins = Origins(settings.trusted_proxies)
        self.max_body = settings.max_body
        self.static_dir: Path | None = self.config.resolve_path(settings.static) if settings.static else None
        if self.static_dir is not None and not self.static_dir.is_dir():
            raise ConfigError(f"{self.config.label}: [bastion] static = {settings.static!r}: not a directory")
        self.records: Driver = self.open_driver(settings.storage)
        state_url = settings.state or settings.storage
        self.state: Driver = self.records if state_url == settings.storage else self.open_driver(state_url)
        self.models = Models(_flatten(self.hook.bastion_models()))
        self.services = Services(_flatten(self.hook.bastion_services()))
        #: Objects plugins build for this runtime, by plugin name (never shared between runtimes).
        self.extras: dict[str, object] = {}
        self._started = False

    def open_driver(self, url: str) -> Driver:
        """Open the driver of a storage URL through ``bastion_storage_driver``."""
        driver = self.hook.bastion_storage_driver(url=url, config=self.config, clock=self.clock)
        if driver is None:
            scheme = url.split(":", 1)[0]
            raise ConfigError(f"{self.config.label}: [bastion] storage URL {_redact(url)!r}: no installed plugin "
                              f"serves the scheme {scheme!r}")
        return driver

    def start(self) -> Runtime:
        """Run every plugin's ``bastion_startup`` once."""
        if not self._started:
            self.hook.bastion_startup(runtime=self, config=self.config)
            self._started = True
        return self

    def close(self) -> None:
        """Run ``bastion_shutdown`` and close the drivers."""
        try:
            self.hook.bastion_shutdown(runtime=self)
        except Exception:
            log.exception("a plugin failed to shut down")
        for driver in {id(d): d for d in (self.records, self.state)}.values():
            driver.close()

    def validate_record(self, model: type, record: Record, errors: Errors) -> None:
        """Run the ``bastion_validate`` hook for a record about to be saved."""
        self.hook.bastion_validate(model=model, record=record, errors=errors)

    @contextlib.contextmanager
    def bind(self, domain: str, **fields) -> Iterator[context.Request]:
        """Act as a request of ``domain`` outside HTTP (CLI, tests, jobs)."""
        with context.activate(context.Request(runtime=self, domain=domain, **fields)) as request:
            yield request

    def ping(self) -> None:
        """Raise ServiceUnavailable unless every driver answers."""
        self.records.ping()
        if self.state is not self.records:
            self.state.ping()


def _flatten(results) -> list:
    return list(itertools.chain.from_iterable(r for r in results if r))


def _redact(url: str) -> str:
    """Hide the password of a URL in messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else url
    return url
