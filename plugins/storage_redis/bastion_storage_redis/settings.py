"""The ``[storage_redis]`` INI section and the connection pool it describes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from kernel import Bool, Choice, Float, Int, Option, StorageURL, Str, redact

#: The section this plugin claims.
SECTION = "storage_redis"

#: URL schemes the driver serves.
SCHEMES = ("redis", "rediss", "unix")

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


def make_pool(url: str, options: Mapping[str, Any]) -> redis.ConnectionPool:
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
