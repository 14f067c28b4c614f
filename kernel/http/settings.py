"""What the HTTP layer reads from ``[bastion]`` and ``[metrics]``, checked once when the app is built."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from kernel.core.config import Config
from kernel.core.errors import ConfigError
from kernel.core.hosts import FORWARDING_HEADERS, HostMatcher, Origins, address_in


@dataclass(frozen=True)
class HttpSettings:
    """What the HTTP layer reads from ``[bastion]``: hosts, proxies, the body limit, a static folder."""

    development: bool
    hosts: HostMatcher
    origins: Origins
    max_body: int
    static_dir: Path | None
    #: ``[metrics] allow``: who may read ``/metrics``, and ``/healthz`` under any Host.
    ops: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def from_config(cls, config: Config) -> HttpSettings:
        """Read and check the settings; ConfigError names what is wrong."""
        settings = config.bastion
        hosts = config.allowed_hosts
        if not hosts:
            raise ConfigError(f"{config.label}: [bastion] allowed_hosts: required in production mode; "
                              "accepted: a list of host names such as example.com, *.example.com")
        static_dir = config.resolve_path(settings.static) if settings.static else None
        if static_dir is not None and not static_dir.is_dir():
            raise ConfigError(f"{config.label}: [bastion] static = {settings.static!r}: not a directory")
        trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = settings.trusted_proxies
        return cls(settings.development, HostMatcher(hosts), Origins(trusted), settings.max_body, static_dir,
                   tuple(config.metrics.allow))

    def is_ops_peer(self, environ, origin: str) -> bool:
        """Whether a request comes from an address of ``[metrics] allow``.

        The address is the origin (behind trusted proxies, the client they
        name). A request that carries forwarding headers from a peer that is
        not a trusted proxy never is: a proxy nobody declared forwarded it, so
        whoever sent it is unknown (it may come from anywhere through a proxy
        on the loopback).
        """
        if not self.ops:
            return False
        if not self.origins.is_trusted(environ.get("REMOTE_ADDR", "")) and any(
                key in environ for key in FORWARDING_HEADERS):
            return False
        return address_in(origin, self.ops)
