"""The Redis plugin's part of ``bastion check --deploy``: a Redis on another host without a password or TLS."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

from bastion_storage_redis.settings import CLUSTER_SCHEMES, SCHEMES, parse_cluster_url, scheme_of
from kernel import Problem, StorageURL, is_loopback_host


def problems(urls: Mapping[str, str]) -> list[Problem]:
    """A remote Redis without a password (an error: anyone who reaches it has every session key) or without TLS.

    ``urls`` are the kernel's storage URLs by their ``[bastion]`` key (``PluginSettings.storage_urls``).
    """
    found: list[Problem] = []
    for key, url in urls.items():
        scheme = scheme_of(url)
        if scheme not in SCHEMES or scheme == "unix":
            continue
        shown = StorageURL(url).redacted
        try:
            if scheme in CLUSTER_SCHEMES:
                cluster = parse_cluster_url(url.strip())
                hosts, password, tls = [h for h, _ in cluster.nodes], cluster.password, cluster.tls
            else:
                parts = urlsplit(url.strip())
                hosts, password, tls = [parts.hostname or ""], parts.password, scheme == "rediss"
        except ValueError:
            continue  # the driver says so when it opens
        remote = [h for h in hosts if h and not is_loopback_host(h)]
        if not remote:
            continue
        host = ", ".join(remote)
        if not password or not unquote(password):
            found.append(Problem.error(
                "redis.E001", f"[bastion] {key} = {shown}: Redis on {host} with no password: whoever reaches it reads "
                "and writes every session key, nonce and ban",
                "set requirepass (or an ACL user) on the server and use redis://:${REDIS_PASSWORD}@host:6379/0"))
        if not tls:
            found.append(Problem.warning(
                "redis.W002", f"[bastion] {key} = {shown}: Redis on {host} over plain TCP: session keys cross the "
                "network in clear", "use rediss:// (TLS)"))
    return found
