"""The signed channel of docs/protocol.md section 4, shared by the server, the Python client and benchmarks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from kernel.core.context import Request
    from kernel.core.errors import BastionError

SCHEME = "Bastion-HMAC"
REQUEST_TAG = "bastion-hmac-v1"
RESPONSE_TAG = "bastion-hmac-v1-response"

_B64URL = "A-Za-z0-9_-"
_PARAM_RULES = {
    "sid": re.compile(rf"[{_B64URL}]{{16,128}}"),
    "ts": re.compile(r"[0-9]{1,12}"),
    "nonce": re.compile(rf"[{_B64URL}]{{16,64}}"),
    "mac": re.compile(rf"[{_B64URL}]{{43}}"),
}
_PAIR = r'([a-z]+)="([^"\r\n]*)"'
_HEADER = re.compile(r"(?ai:bastion-hmac) +" + r" *, *".join([_PAIR] * 4))
_B64URL_TEXT = re.compile(rf"[{_B64URL}]*")


def b64url(data: bytes) -> str:
    """Encode bytes as base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url; raise ValueError on anything else."""
    if not _B64URL_TEXT.fullmatch(text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def body_hash(body: bytes) -> str:
    """Return ``b64url(SHA-256(body))``."""
    return b64url(hashlib.sha256(body).digest())


def string_to_sign(ts: str, nonce: str, path: str, domain: str, body: bytes) -> bytes:
    """Return the seven lines ``S`` a call's MAC covers."""
    return "\n".join((REQUEST_TAG, ts, nonce, "POST", path, domain, body_hash(body))).encode("utf-8")


def request_mac(key: bytes, ts: str, nonce: str, path: str, domain: str, body: bytes) -> str:
    """Return the MAC of a call."""
    return b64url(hmac.digest(key, string_to_sign(ts, nonce, path, domain, body), "sha256"))


def response_string(nonce: str, status: int, body: bytes) -> bytes:
    """Return the four lines ``R`` a response's MAC covers."""
    return "\n".join((RESPONSE_TAG, nonce, str(int(status)), body_hash(body))).encode("utf-8")


def response_mac(key: bytes, nonce: str, status: int, body: bytes) -> str:
    """Return the MAC of a response."""
    return b64url(hmac.digest(key, response_string(nonce, status, body), "sha256"))


def macs_equal(a: str, b: str) -> bool:
    """Compare two MACs in constant time."""
    return hmac.compare_digest(a.encode("ascii", "replace"), b.encode("ascii", "replace"))


def authorization(sid: str, ts: str, nonce: str, mac: str) -> str:
    """Return the ``Authorization`` header value of a call."""
    return f'{SCHEME} sid="{sid}", ts="{ts}", nonce="{nonce}", mac="{mac}"'


def server_authorization(mac: str) -> str:
    """Return the ``Server-Authorization`` header value of a response."""
    return f'{SCHEME} mac="{mac}"'


def parse_authorization(value: str | None) -> dict[str, str] | None:
    """Parse an ``Authorization`` header strictly; return its four parameters or None.

    The scheme is matched case-insensitively; then exactly ``sid``, ``ts``,
    ``nonce`` and ``mac``, each once, in any order, separated by commas with
    optional spaces, and nothing else.
    """
    if value is None:
        return None
    match = _HEADER.fullmatch(value)
    if not match:
        return None
    pairs = match.groups()
    params = dict(zip(pairs[0::2], pairs[1::2], strict=True))
    if len(params) != 4:
        return None  # a parameter given twice
    for name, val in params.items():
        rule = _PARAM_RULES.get(name)
        if rule is None or not rule.fullmatch(val):
            return None
    return params


_SERVER_HEADER = re.compile(r'[ \t]*(?ai:bastion-hmac) +mac="([A-Za-z0-9_-]{43})"[ \t]*')


def parse_server_authorization(value: str | None) -> str | None:
    """Return the MAC of a ``Server-Authorization`` header, or None if malformed.

    docs/protocol.md section 4: the scheme in any case, one or more spaces,
    ``mac="`` (lower case) and 43 b64url characters in quotes, nothing else;
    spaces and tabs around the whole value are not part of it (HTTP strips
    them). Several fields, joined with commas as HTTP joins them, are no
    value: the caller passes them joined, and they are refused.
    """
    if value is None:
        return None
    match = _SERVER_HEADER.fullmatch(value)
    return match.group(1) if match else None


def new_nonce() -> str:
    """Return a fresh random nonce (16 bytes, 22 characters)."""
    return b64url(secrets.token_bytes(16))


@dataclass(frozen=True, slots=True)
class Credentials:
    """The four parameters of a well-formed ``Authorization`` header, parsed once by the kernel."""

    sid: str
    ts: str
    nonce: str
    mac: str

    def __repr__(self) -> str:
        # Never the MAC nor the whole sid: reprs end up in logs (BASTION_TRACE_PLUGINS).
        return f"Credentials(sid={self.sid[:8]!r}..., ts={self.ts!r}, nonce={self.nonce!r})"

    @classmethod
    def parse(cls, value: str | None) -> Credentials | None:
        """Parse a header value strictly (see :func:`parse_authorization`); None if absent or malformed."""
        params = parse_authorization(value)
        return None if params is None else cls(params["sid"], params["ts"], params["nonce"], params["mac"])

    def verify(self, key: bytes, request: Request) -> bool:
        """Whether the MAC is the one ``key`` gives for this request, compared in constant time."""
        return macs_equal(self.mac, request_mac(key, self.ts, self.nonce, request.path, request.domain, request.body))


@dataclass(frozen=True, slots=True)
class Sealing:
    """What the pipeline needs to open a sealed call and seal its answer (docs/protocol.md section 16, made by
    :mod:`kernel.core.sealing`): the session's two encryption keys, and whether the tenant refuses plain calls."""

    call_key: bytes = field(repr=False)
    answer_key: bytes = field(repr=False)
    required: bool = False


@dataclass(frozen=True, slots=True)
class Authentication:
    """What an authenticator answers for a signed call whose MAC verified.

    ``session`` is who is calling (an object with at least ``username``);
    ``key`` the session key every answer to the call is signed with;
    ``refusal`` a protocol error to answer instead of running the call (it is
    signed too: StaleCall, ReplayedCall); ``roles`` the caller's roles, read
    as part of authenticating the call, which the kernel sets on the request
    (``Request.roles``). None: the authenticator reads none, and the kernel
    takes the session's own ``roles`` attribute, if it has one. ``expires``:
    when the session ends if no other call slides it, as this call left it
    (Unix seconds); the kernel sends it as ``Session-Expires`` on the call's
    answer. None: no such header (a refusal, a call that ended its session).
    ``sealing``: the session's encryption keys (a version-2 session,
    docs/protocol.md section 16), with which the kernel opens a sealed call
    and seals its answer, and whether its tenant refuses plain calls; None
    for a session without them (version 1), whose sealed calls are refused.
    """

    session: Any
    key: bytes = field(repr=False)
    refusal: BastionError | None = None
    roles: frozenset[str] | None = None
    expires: float | None = None
    sealing: Sealing | None = None


class ResponseSigner:
    """Signs every answer to one call: ``Server-Authorization`` over its nonce, status and body."""

    __slots__ = ("key", "nonce")

    def __init__(self, key: bytes, nonce: str):
        self.key = key
        self.nonce = nonce

    def header(self, status: int, body: bytes) -> str:
        """The ``Server-Authorization`` value of an answer."""
        return server_authorization(response_mac(self.key, self.nonce, status, body))
