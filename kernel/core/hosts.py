"""Tenancy from the Host header, allowed hosts, client origins (docs/protocol.md sections 1 and 7)."""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping

from kernel.core.errors import InvalidHost

_NAME = re.compile(r"([a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?)(?::(\d{1,5}))?")
_BRACKETED = re.compile(r"\[([0-9a-f:.]+)\](?::(\d{1,5}))?")

#: What development mode allows when ``allowed_hosts`` is not set.
DEVELOPMENT_HOSTS = ("localhost", "*.localhost", "127.0.0.1")


def parse_domain(host: str | None) -> str:
    """Return the domain of a Host header value, or raise InvalidHost.

    Lowercased, without the port and without one trailing dot; an IPv6
    literal keeps its brackets. Several values (joined with commas by the
    server) are refused.
    """
    if host is None or not host.strip():
        raise InvalidHost("missing Host header")
    value = host.strip().lower()
    if "," in value:
        raise InvalidHost("more than one Host header")
    match = _BRACKETED.fullmatch(value)
    if match:
        try:
            ipaddress.IPv6Address(match.group(1))
        except ValueError:
            raise InvalidHost("malformed Host header") from None
        return f"[{match.group(1)}]"
    match = _NAME.fullmatch(value)
    if not match:
        raise InvalidHost("malformed Host header")
    name = match.group(1)
    return name[:-1] if name.endswith(".") else name


class HostMatcher:
    """Checks domains against patterns: exact names, ``*.example.com``, or ``*`` for any."""

    def __init__(self, patterns: Iterable[str]):
        self.patterns = tuple(p.strip().lower().rstrip(".") for p in patterns if p.strip())
        self._exact = {p for p in self.patterns if not p.startswith("*")}
        self._suffixes = tuple(p[1:] for p in self.patterns if p.startswith("*."))
        self._any = "*" in self.patterns

    def allows(self, domain: str) -> bool:
        """Whether the domain is served. ``*.example.com`` matches subdomains at any depth only."""
        return self._any or domain in self._exact or (bool(self._suffixes) and domain.endswith(self._suffixes))


@functools.lru_cache(maxsize=1024)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address in ``text`` (with or without a port), or None; remembered: every request parses its peer's."""
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


#: The forwarding headers a proxy may add: Bastion believes X-Forwarded-For and -Proto from trusted proxies only.
FORWARDING_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_FORWARDED", "HTTP_X_REAL_IP")


def forwarding_headers(environ: Mapping[str, str]) -> list[str]:
    """The forwarding headers a request carries, by their HTTP names (``X-Forwarded-For``, ...)."""
    return [key[5:].replace("_", "-").title() for key in FORWARDING_HEADERS if key in environ]


def address_in(address: str, networks) -> bool:
    """Whether an address (with or without a port; an IPv4-mapped IPv6 one as its IPv4) belongs to ``networks``."""
    ip = _address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip is not None and any(ip in net for net in networks)


class Origins:
    """Finds the client origin and scheme, believing forwarded headers only from trusted proxies."""

    def __init__(self, trusted: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]):
        self.trusted = tuple(trusted)
        #: Whether an address belongs to a trusted proxy: asked two or three times of every request's peer, so
        #: the answers for the last 1,024 addresses are remembered (a flood of distinct peers costs a parse each,
        #: never memory).
        self.is_trusted: Callable[[str], bool] = functools.lru_cache(maxsize=1024)(self._is_trusted)

    def _is_trusted(self, address: str) -> bool:
        ip = _address(address)
        return ip is not None and any(ip in net for net in self.trusted)

    def resolve(self, environ: Mapping[str, str]) -> tuple[str, str]:
        """Return ``(origin, scheme)`` for a WSGI environ."""
        peer = environ.get("REMOTE_ADDR", "") or ""
        scheme = environ.get("wsgi.url_scheme", "http")
        if not self.trusted or not self.is_trusted(peer):
            return peer, scheme
        origin = peer
        forwarded = [a.strip() for a in environ.get("HTTP_X_FORWARDED_FOR", "").split(",") if a.strip()]
        for candidate in reversed(forwarded):
            if _address(candidate) is None:
                break  # garbage: stop believing the chain here
            origin = str(_address(candidate))
            if not self.is_trusted(candidate):
                break
        proto = environ.get("HTTP_X_FORWARDED_PROTO", "").split(",")[-1].strip().lower()
        if proto in ("http", "https"):
            scheme = proto
        return origin, scheme
