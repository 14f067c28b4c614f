"""The ``[storage_redis]`` INI section, the URLs, and the connection pools they describe."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from kernel import Bool, Choice, Float, Int, Option, Str
from kernel.drivers import StorageURL, redact

#: The section this plugin claims.
SECTION = "storage_redis"

#: URL schemes of a Redis Cluster: the driver uses redis-py's cluster client for the slot map.
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")

#: URL schemes the driver serves.
SCHEMES = ("redis", "rediss", "unix", *CLUSTER_SCHEMES)

#: Keys of ``[storage_redis]``, their types and defaults.
SCHEMA: dict[str, Option] = {
    "max_connections": Int(50, "connections per worker process; callers wait up to pool_timeout for a free one",
                           min=1, max=10_000),
    "pool_timeout": Float(5.0, "seconds a call waits for a free connection before failing with 503", min=0.0),
    "socket_timeout": Float(5.0, "seconds a command may take before the call fails with 503", min=0.01),
    "socket_connect_timeout": Float(2.0, "seconds to open a connection", min=0.01),
    "socket_keepalive": Bool(True, "TCP keepalive on connections"),
    "health_check_interval": Int(30, "PING a pooled connection idle this many seconds before reusing it (0: never)",
                                 min=0),
    "retries": Int(0, "times a command whose connection broke is re-sent on a new one; above 0 a commit, add or "
                      "incr may be applied twice when the break follows its execution", min=0, max=10),
    "wait_replicas": Int(0, "replicas that must have received each write before it is acknowledged (Redis WAIT); "
                            "else the call fails with 503. 0: acknowledged by the master alone", min=0, max=16),
    "wait_timeout": Float(1.0, "seconds a write waits for wait_replicas replicas before failing with 503", min=0.001),
    "key_prefix": Str("bastion", "first part of every key, to share one Redis between deployments",
                      r"[A-Za-z0-9_.-]{1,64}", "letters, digits, '_', '.', '-' (1 to 64)"),
    "client_name": Str("bastion", "CLIENT SETNAME of each connection (empty: none)", r"[!-~]{0,64}",
                       "printable characters without spaces, up to 64"),
    "ssl_cert_reqs": Choice("required", ("required", "optional", "none"), "rediss:// certificate check"),
    "ssl_ca_certs": Str("", "rediss:// CA bundle file (empty: the system's)"),
    "ssl_certfile": Str("", "rediss:// client certificate file, for mutual TLS"),
    "ssl_keyfile": Str("", "rediss:// client key file, for mutual TLS"),
    "ssl_check_hostname": Bool(True, "rediss:// check the server's host name against its certificate"),
}


def defaults() -> dict[str, Any]:
    """Return every key of the section with its default value."""
    return {key: option.default for key, option in SCHEMA.items()}


def scheme_of(url: str) -> str:
    """Return the lower-cased scheme of a URL ('' when it has none)."""
    return StorageURL(url).scheme


def make_pool(url: str, options: Mapping[str, Any]) -> redis.BlockingConnectionPool:
    """Build the blocking connection pool of ``url`` with the section's ``options``.

    A blocking pool makes a burst of threads queue for a connection instead
    of failing: only ``pool_timeout`` without a free one is an outage.
    """
    kwargs: dict[str, Any] = {
        "max_connections": options["max_connections"],
        "timeout": options["pool_timeout"],
        "socket_timeout": options["socket_timeout"],
        "socket_connect_timeout": options["socket_connect_timeout"],
        "health_check_interval": options["health_check_interval"],
        # The pool already replaces connections that died while idle (a Redis
        # restart), so retries are off by default: a re-sent script could apply
        # twice. Without backoff, so that an outage is reported fast.
        "retry": Retry(NoBackoff(), options["retries"]),
        "decode_responses": True,
    }
    if options["client_name"]:
        kwargs["client_name"] = options["client_name"]
    scheme = scheme_of(url)
    if scheme != "unix":
        kwargs["socket_keepalive"] = options["socket_keepalive"]
    if scheme == "rediss":
        kwargs["ssl_cert_reqs"] = options["ssl_cert_reqs"]
        kwargs["ssl_check_hostname"] = options["ssl_check_hostname"] and options["ssl_cert_reqs"] != "none"
        for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            if options[key]:
                kwargs[key] = options[key]
    # redis-py only knows lower-case schemes; URLs are case-insensitive there.
    url = scheme + url[len(scheme):]
    try:
        return redis.BlockingConnectionPool.from_url(url, **kwargs)
    except ValueError:
        # redis-py's messages quote pieces of the URL (a password holding / ends up read as the port): never shown.
        raise ValueError(f"invalid Redis URL {redact(url)!r}: its host, port or database cannot be read (a password "
                         "holding / # ? or @ must be percent-encoded)") from None


@dataclass(frozen=True)
class ClusterURL:
    """A ``redis+cluster://`` (or ``rediss+cluster://``) URL: the nodes to discover the cluster from, and the credentials."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    tls: bool


_NODE = re.compile(r"^(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]/?#@,]+))(?::(?P<port>\d{1,5}))?$")


def parse_cluster_url(url: str) -> ClusterURL:
    """Parse ``redis+cluster://[[user]:password@]host[:port][,host[:port]...][/0]``; ValueError says what is wrong.

    A Cluster has one database, so the path may only be empty or ``/0``; a
    node without a port is on 6379. The message never shows the password.
    """
    scheme = scheme_of(url)
    rest = url.strip()[len(scheme) + 3:] if url.strip()[len(scheme):len(scheme) + 3] == "://" else None
    if rest is None or scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"invalid Redis Cluster URL {redact(url)!r}")
    if "?" in rest or "#" in rest:
        raise ValueError(f"invalid Redis Cluster URL {redact(url)!r}: no query string ([storage_redis] has the options)")
    userinfo, _, hosts = rest.rpartition("@")
    hosts, _, path = hosts.partition("/")
    if path not in ("", "0"):
        raise ValueError(f"invalid Redis Cluster URL {redact(url)!r}: a Cluster has only database 0")
    nodes = []
    for part in hosts.split(","):
        match = _NODE.match(part.strip())
        port = int(match.group("port") or 6379) if match else 0
        if not match or not 0 < port < 65536:
            raise ValueError(f"invalid Redis Cluster URL {redact(url)!r}: {part.strip()!r} is not host:port")
        nodes.append((match.group("ipv6") or match.group("host"), port))
    username = password = None
    if userinfo:
        name, colon, secret = userinfo.partition(":")
        username = unquote(name) or None
        password = unquote(secret) if colon else None
    return ClusterURL(tuple(nodes), username, password, scheme == "rediss+cluster")


def connection_options(options: Mapping[str, Any], tls: bool) -> dict[str, Any]:
    """The options of every connection of a Cluster's node, from the section (without the pool's own)."""
    kwargs: dict[str, Any] = {
        "socket_timeout": options["socket_timeout"],
        "socket_connect_timeout": options["socket_connect_timeout"],
        "socket_keepalive": options["socket_keepalive"],
        "health_check_interval": options["health_check_interval"],
        "decode_responses": True,
    }
    if options["client_name"]:
        kwargs["client_name"] = options["client_name"]
    if tls:
        kwargs["ssl_cert_reqs"] = options["ssl_cert_reqs"]
        kwargs["ssl_check_hostname"] = options["ssl_check_hostname"] and options["ssl_cert_reqs"] != "none"
        for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            if options[key]:
                kwargs[key] = options[key]
    return kwargs


def make_cluster_client(url: ClusterURL, options: Mapping[str, Any]) -> redis.RedisCluster:
    """redis-py's cluster client on ``url``: discovery, the slot map, MOVED and failover; it never re-sends a command."""
    from redis.cluster import ClusterNode

    kwargs = connection_options(options, url.tls)
    if url.tls:
        kwargs["ssl"] = True
    return redis.RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in url.nodes],
                              username=url.username, password=url.password, require_full_coverage=False,
                              retry=Retry(NoBackoff(), 0), **kwargs)


def make_node_pool(url: ClusterURL, host: str, port: int, options: Mapping[str, Any]) -> redis.BlockingConnectionPool:
    """The driver's own bounded pool of connections to one node of a Cluster (as :func:`make_pool` for one server)."""
    kwargs = connection_options(options, url.tls)
    return redis.BlockingConnectionPool(
        connection_class=redis.SSLConnection if url.tls else redis.Connection, host=host, port=port,
        username=url.username, password=url.password, max_connections=options["max_connections"],
        timeout=options["pool_timeout"], retry=Retry(NoBackoff(), options["retries"]), **kwargs)
