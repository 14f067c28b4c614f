"""Redis storage driver for ``redis://``, ``rediss://``, ``unix://`` and Redis Cluster (``redis+cluster://``) URLs.

Records and short-lived state (sessions, nonces, counters, windows) live in
Redis, shared by every worker and node that uses the same URL. Each domain's
keys carry one hash tag, ``bastion:{<domain>}:...``, so a unit of work stays
on one Redis Cluster slot. Settings come from the ``[storage_redis]`` INI
section (see :data:`bastion_storage_redis.settings.SCHEMA` and
docs/storage-redis.md).
"""

from __future__ import annotations

from collections.abc import Callable

from bastion_storage_redis import deploy
from bastion_storage_redis.driver import RedisDriver
from bastion_storage_redis.settings import SCHEMA, SCHEMES, SECTION, scheme_of
from kernel import ConfigError, PluginSettings, Problem, hookimpl

__all__ = ["RedisDriver", "SCHEMA", "SECTION", "bastion_configure", "bastion_storage_driver", "bastion_deploy_checks"]


@hookimpl
def bastion_configure(settings: PluginSettings) -> None:
    """Claim and check the ``[storage_redis]`` section."""
    settings.section(SECTION, SCHEMA)


@hookimpl
def bastion_storage_driver(url: str, settings: PluginSettings | None, clock: Callable[[], float]) -> RedisDriver | None:
    """Open a :class:`RedisDriver` for redis://, rediss://, unix:// and redis+cluster:// URLs; None for any other scheme."""
    if scheme_of(url) not in SCHEMES:
        return None
    options = settings.section(SECTION, SCHEMA) if settings is not None else None
    try:
        return RedisDriver(url, clock=clock, options=options)
    except ValueError as exc:
        label = settings.label if settings is not None else "<configuration>"
        raise ConfigError(f"{label}: [bastion] {exc}; accepted: redis://[:password@]host:port/db, "
                          "rediss://..., unix:///path/to/redis.sock?db=0, "
                          "redis+cluster://[:password@]host:port[,host:port...]") from None


@hookimpl
def bastion_deploy_checks(settings: PluginSettings) -> list[Problem]:
    """A Redis on another host without a password, or without TLS."""
    return deploy.problems(settings.storage_urls)
