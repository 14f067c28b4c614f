"""The Python client: login, signed calls with verified answers, logout.

::

    client = Client("http://127.0.0.1:9000", host="alpha.localhost")
    client.login("alice", "s3cret password")
    todo = client.call("add", "Play with Fanery")
    client.logout()

``Client(app=wsgi_app)`` calls a WSGI application in-process instead (tests,
plugin authors). Failures raise the :mod:`kernel.core.errors` class named by the
answer's ``exc``; an answer that should be signed and is not (or whose MAC is
wrong) raises :class:`InvalidResponseSignature`. Over HTTPS the server's
certificate is verified against the system's CAs (``cafile`` for a private
CA, ``ssl_context`` for anything else). docs/client.md is the guide.
"""

from __future__ import annotations

import http.client
import io
import json
import ssl
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kernel.core import sealing, signing
from kernel.core.errors import BY_NAME, BastionError, StaleCall
from kernel.core.hosts import parse_domain
from kernel.core.jsonio import dumps

#: Answers a server gives before it knows the caller holds the key (steps 1 to 8): never signed.
UNSIGNED = frozenset({"InvalidHost", "RequireSSL", "Abusive", "PayloadTooLarge", "UnsupportedMediaType",
                      "InvalidCall", "RequestTimeout", "Unauthorized", "UnknownSession", "ExpiredSession", "InvalidSignature",
                      "ServiceUnavailable"})


class InvalidResponseSignature(BastionError):
    """Client side: an answer to a signed call lacks a valid ``Server-Authorization``."""

    status = 0
    default_message = "the server's answer is not signed with the session key"


class ProtocolError(BastionError):
    """Client side: an answer that is not a docs/protocol.md body."""

    status = 0
    default_message = "unexpected answer from the server"


class ServerFailure(BastionError):
    """Client side: a 5xx answer to a signed call that the server did not sign and that is not ServiceUnavailable
    (a 500 before the MAC verified, a proxy's 502 or 504, any body): the call may or may not have run.

    ``status`` is the status received, ``request_id`` the answer's ``X-Request-Id`` (None without one): quote it
    when reporting the failure. Nothing of the body is used (docs/protocol.md section 14, point 3).
    """

    status = 0
    default_message = "the server failed to answer the call"

    def __init__(self, status: int, request_id: str | None):
        where = f"; request id {request_id}" if request_id else ""
        super().__init__(f"HTTP {status} from the server or a proxy, not signed: the call may have run{where}",
                         request_id=request_id)
        self.status = status
        self.request_id = request_id


class DowngradeRefused(BastionError):
    """Client side: a version-2 login answered as a version-1 one (a ``key`` in the answer, no ``public_key``):
    something between client and server removed the key agreement. The client ends the session it was given and
    uses none of it (docs/protocol.md section 16)."""

    status = 0
    default_message = "the login was downgraded to version 1 on its way: refused"


@dataclass
class Response:
    """A raw answer: status, headers (lower-case names) and body bytes."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """Decode the body as JSON."""
        return json.loads(self.body.decode("utf-8"))


@dataclass
class Session:
    """What login returned: the session id, its key, who logged in, and the server's ``limits`` (an empty dict
    from a server that does not tell them). ``expires`` follows the ``Session-Expires`` of verified answers.

    ``key`` signs calls: the login's ``key`` (version 1) or the agreed ``call-mac`` key (version 2), which also
    has ``keys``, all four (docs/protocol.md section 16)."""

    sid: str
    key: bytes = field(repr=False)
    expires: float
    user: dict[str, Any]
    limits: dict[str, Any] = field(default_factory=dict)
    keys: sealing.SessionKeys | None = None

    @property
    def version(self) -> int:
        """The protocol version of the login: 2 when it agreed on keys."""
        return 1 if self.keys is None else 2

    @property
    def answer_key(self) -> bytes:
        """The key answers are signed with."""
        return self.key if self.keys is None else self.keys.answer_mac


class Client:
    """A Bastion client over HTTP (``base_url``) or in-process (``app``).

    ``host`` is the tenant's Host header (default: the URL's); ``clock`` the
    local clock, corrected by the server's; ``remote_addr`` the origin an
    in-process app sees, ``source_address`` the local address HTTP connects from.

    TLS (an ``https://`` URL): the server's certificate and host name are
    verified against the system's CAs, or against ``cafile`` (a PEM bundle,
    for a private CA); ``certfile`` and ``keyfile`` present a client
    certificate (a proxy that asks for one); ``ssl_context`` replaces all of
    them with an :class:`ssl.SSLContext` of your own. There is no switch that
    turns verification off: a version-1 login answer carries the session key.

    ``version=2`` logs in with a key agreement (docs/protocol.md section 16:
    no key travels); ``encrypt=True`` (which implies it) also seals every
    call's arguments and every answer. The default, version 1, talks to
    servers of every version.
    """

    def __init__(self, base_url: str | None = None, host: str | None = None, *, app=None,
                 clock: Callable[[], float] = time.time, remote_addr: str = "127.0.0.1", timeout: float = 30.0,
                 source_address: str | None = None, cafile: str | None = None, certfile: str | None = None,
                 keyfile: str | None = None, ssl_context: ssl.SSLContext | None = None, version: int | None = None,
                 encrypt: bool = False):
        if (base_url is None) == (app is None):
            raise ValueError("give either base_url or app")
        if ssl_context is not None and (cafile or certfile or keyfile):
            raise ValueError("give ssl_context, or cafile/certfile/keyfile, not both")
        if keyfile and not certfile:
            raise ValueError("keyfile needs certfile")
        version = version if version is not None else (2 if encrypt else 1)
        if version not in (1, 2) or (encrypt and version != 2):
            raise ValueError("version is 1 or 2, and encrypt needs version 2")
        self.version = version
        self.encrypt = encrypt
        self.app = app
        self.remote_addr = remote_addr
        self.source_address = source_address
        self.timeout = timeout
        self.clock = clock
        self.offset = 0.0
        self.session: Session | None = None
        if base_url is not None:
            parts = urllib.parse.urlsplit(base_url)
            self.scheme, self.netloc = parts.scheme, parts.netloc
            self.prefix = parts.path.rstrip("/")
        else:
            self.scheme, self.netloc, self.prefix = "http", "localhost", ""
        self.host = host or self.netloc
        self.domain = parse_domain(self.host)
        self.ssl_context = ssl_context
        if self.ssl_context is None and self.scheme == "https":
            self.ssl_context = ssl.create_default_context(cafile=cafile)
            if certfile:
                self.ssl_context.load_cert_chain(certfile, keyfile)

    # -- public API -------------------------------------------------------

    def login(self, username: str, password: str, force: bool = False, code: str | None = None) -> dict[str, Any]:
        """Log in; return the ``user`` object. Raises InvalidCredential, AccountLocked, Abusive, ...; and
        SecondFactorRequired when the user has two-step sign-in and no ``code`` was given (log in again with
        the password and the code: docs/protocol.md section 3)."""
        payload: dict[str, Any] = {"username": username, "password": password}
        if force:
            payload["force"] = True
        if code is not None:
            payload["code"] = code
        pair = sealing.KeyPair() if self.version == 2 else None
        if pair is not None:
            payload["public_key"] = pair.public
        answer = self.request("/auth/login", _encode(payload))
        data = self._result_or_raise(answer)
        self.offset = float(data["server_time"]) - self.clock()
        limits = data.get("limits")
        limits = dict(limits) if isinstance(limits, dict) else {}
        if pair is None:
            self.session = Session(data["sid"], signing.b64url_decode(data["key"]), data["expires"], data["user"],
                                   limits)
            return data["user"]
        if data.get("version") != sealing.VERSION or not isinstance(data.get("public_key"), str) or "key" in data:
            self._refuse_downgrade(data)
        try:
            secret = pair.agree(data["public_key"])
        except ValueError as exc:
            raise ProtocolError(f"the login answer's public_key: {exc}") from None
        keys = sealing.derive_keys(secret, data["sid"], self.domain, pair.public, data["public_key"])
        self.session = Session(data["sid"], keys.call_mac, data["expires"], data["user"], limits, keys)
        return data["user"]

    def _refuse_downgrade(self, data: dict[str, Any]) -> None:
        """A version-2 login answered without a key agreement: end the session whose key travelled (with that
        key: whoever else read it can then sign nothing), use nothing of it, and raise DowngradeRefused."""
        try:
            leaked = Session(str(data["sid"]), signing.b64url_decode(str(data["key"])), 0, {})
        except (KeyError, ValueError):
            raise DowngradeRefused() from None
        self.session, encrypt, self.encrypt = leaked, self.encrypt, False
        try:
            self.signed("/auth/logout", b"{}")
        except BastionError:
            pass  # refused anyway: the session is not used
        finally:
            self.session, self.encrypt = None, encrypt
        raise DowngradeRefused()

    def call(self, service: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call a service with positional and keyword arguments; return its result.

        ``service`` is positional-only, so that every keyword (``name=``,
        ``service=`` too) is an argument of the service.
        """
        payload: dict[str, Any] = {}
        if args:
            payload["args"] = list(args)
        if kwargs:
            payload["kwargs"] = kwargs
        return self.signed(f"/api/{service}", _encode(payload))["result"]

    def logout(self) -> bool:
        """End the session."""
        try:
            return self.signed("/auth/logout", b"{}")["result"]
        finally:
            self.session = None

    def signed(self, path: str, body: bytes) -> dict[str, Any]:
        """Send a signed call (sealed, if the client encrypts); verify the answer; retry once after a signed
        StaleCall."""
        for attempt in (1, 2):
            response, nonce = self.send_signed(path, body)
            try:
                return self._result_or_raise(response, nonce=nonce, sealed=self._sealing())
            except StaleCall as exc:
                self.offset = float(exc.extra.get("server_time", self.clock())) - self.clock()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _sealing(self) -> bool:
        return self.encrypt and self.session is not None and self.session.keys is not None

    def send_signed(self, path: str, body: bytes, ts: str | None = None, nonce: str | None = None,
                    seal: bool | None = None) -> tuple[Response, str]:
        """Sign and send a call without interpreting the answer (tests use it to replay). ``seal``: seal the body
        (default: when the client encrypts)."""
        if self.session is None:
            raise RuntimeError("log in first")
        ts = ts or str(int(self.clock() + self.offset))
        nonce = nonce or signing.new_nonce()
        # The server verifies the path as it arrives: the base URL's path prefix included.
        headers: dict[str, str] = {}
        if self._sealing() if seal is None else seal:
            if self.session.keys is None:
                raise RuntimeError("a version-1 session has no key to seal with")
            body = sealing.seal(self.session.keys.call_enc, body,
                                sealing.call_aad(ts, nonce, self.prefix + path, self.domain))
            headers["Content-Type"] = sealing.SEALED_TYPE
        mac = signing.request_mac(self.session.key, ts, nonce, self.prefix + path, self.domain, body)
        headers["Authorization"] = signing.authorization(self.session.sid, ts, nonce, mac)
        return self.request(path, body, headers), nonce

    def request(self, path: str, body: bytes = b"", headers: Mapping[str, str] | None = None,
                method: str = "POST") -> Response:
        """Send one raw request (JSON content type when there is a body)."""
        all_headers = {"Host": self.host, **(headers or {})}
        if body and "Content-Type" not in all_headers:
            all_headers["Content-Type"] = "application/json"
        if self.app is not None:
            return self._wsgi(method, path, body, all_headers)
        return self._http(method, path, body, all_headers)

    # -- answers ----------------------------------------------------------

    def verify(self, response: Response, nonce: str) -> None:
        """Raise InvalidResponseSignature unless the answer carries the right MAC."""
        if self.session is None:
            raise RuntimeError("log in first")
        mac = signing.parse_server_authorization(response.headers.get("server-authorization"))
        expected = signing.response_mac(self.session.answer_key, nonce, response.status, response.body)
        if mac is None or not signing.macs_equal(mac, expected):
            raise InvalidResponseSignature()

    def _result_or_raise(self, response: Response, nonce: str | None = None, sealed: bool = False) -> dict[str, Any]:
        """The answer's JSON object; an answer to a signed call (the ``nonce`` it was sent with) is verified, and
        the answer to a sealed call opened once verified (``sealed``)."""
        signed = "server-authorization" in response.headers
        try:
            data = response.json()
        except (ValueError, UnicodeDecodeError):
            data = None
        exc_name = data.get("exc") if isinstance(data, dict) and response.status >= 400 else None
        # Answers of steps 1 to 8 cannot be signed: act on their status, trust nothing else in them.
        unsigned_allowed = (not signed and isinstance(exc_name, str) and exc_name in UNSIGNED
                            and BY_NAME[exc_name].status == response.status)
        if nonce is not None and not signed and not unsigned_allowed and response.status >= 500:
            # Not the server's answer to the call, or not one it could sign: a lost answer (section 14, point 9).
            raise ServerFailure(response.status, response.headers.get("x-request-id"))
        if data is None and (nonce is None or not signed):
            if response.status >= 500:
                raise ServerFailure(response.status, response.headers.get("x-request-id"))
            raise ProtocolError(f"HTTP {response.status}: the body is not JSON")
        if nonce is not None and not unsigned_allowed:
            self.verify(response, nonce)
            self._slid(response)
            if sealed or sealing.is_sealed(response.headers.get("content-type")):
                data = self._open(response, nonce, sealed)
                exc_name = data.get("exc") if isinstance(data, dict) and response.status >= 400 else None
        if data is None:
            raise ProtocolError(f"HTTP {response.status}: the body is not JSON")
        if exc_name is not None:
            if exc_name in ("UnknownSession", "ExpiredSession"):
                self.session = None
            raise _error(data, response.headers)
        if response.status != 200 or not isinstance(data, dict):
            raise ProtocolError(f"HTTP {response.status}: not a docs/protocol.md answer")
        return data

    def _open(self, response: Response, nonce: str, sealed: bool) -> Any:
        """The JSON of a verified answer to a sealed call: its envelope opened (section 16). A signed answer to a
        sealed call must be sealed, and a sealed one answers only a sealed call."""
        if self.session is None or self.session.keys is None or not sealed:
            raise ProtocolError("a sealed answer to a call that was not sealed")
        if not sealing.is_sealed(response.headers.get("content-type")):
            raise ProtocolError(f"HTTP {response.status}: a signed answer to a sealed call that is not sealed")
        try:
            plain = sealing.open_envelope(self.session.keys.answer_enc, response.body,
                                          sealing.answer_aad(nonce, response.status))
            return json.loads(plain.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProtocolError(f"HTTP {response.status}: the sealed answer does not open: {exc}") from None

    def _slid(self, response: Response) -> None:
        """A verified answer that says when the session now ends (``Session-Expires``, section 4): keep it."""
        value = response.headers.get("session-expires", "")
        if self.session is not None and value.isascii() and value.isdigit():
            self.session.expires = int(value)

    # -- transports -------------------------------------------------------

    def _http(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> Response:
        source = (self.source_address, 0) if self.source_address else None
        if self.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.netloc, timeout=self.timeout, source_address=source, context=self.ssl_context)
        else:
            conn = http.client.HTTPConnection(self.netloc, timeout=self.timeout, source_address=source)
        try:
            conn.request(method, self.prefix + path, body=body or None, headers=headers)
            raw = conn.getresponse()
            return Response(raw.status, _fields(raw.getheaders()), raw.read())
        finally:
            conn.close()

    def _wsgi(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> Response:
        """Call a WSGI application in this process, as a WSGI server would (PEP 3333), with no HTTP in between."""
        target, _, query = (self.prefix + path).partition("?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": urllib.parse.unquote(target, "latin-1"),
            "QUERY_STRING": query, "RAW_URI": self.prefix + path, "SERVER_NAME": self.host.split(":")[0],
            "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": self.remote_addr,
            "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
            "wsgi.run_once": False, "HTTP_HOST": self.host,
        }
        for name, value in headers.items():
            key = name.upper().replace("-", "_")
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                environ[key] = value
            else:
                environ["HTTP_" + key] = value
        if body and "CONTENT_LENGTH" not in environ:
            environ["CONTENT_LENGTH"] = str(len(body))
        started: list[Any] = []

        def start_response(status: str, response_headers: list[tuple[str, str]], exc_info=None):
            started[:] = [int(status.split(" ", 1)[0]), _fields(response_headers)]

        chunks = self.app(environ, start_response)
        try:
            data = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        return Response(started[0], started[1], data)


def _fields(headers: list[tuple[str, str]]) -> dict[str, str]:
    """Header fields by lower-case name; a field sent several times is one value, joined with ", " as HTTP joins
    them (RFC 9110, section 5.3; what a browser's ``fetch`` shows too), so a repeated ``Server-Authorization`` is
    no valid one, rather than whichever came last."""
    fields: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        fields[key] = f"{fields[key]}, {value}" if key in fields else value
    return fields


def _encode(payload: Any) -> bytes:
    return dumps(payload)


def _error(data: dict[str, Any], headers: Mapping[str, str] | None = None) -> BastionError:
    cls = BY_NAME.get(data.get("exc", ""), ProtocolError)
    messages = data.get("err") or []
    extra = {k: v for k, v in data.items() if k not in ("exc", "err")}
    # The body's retry_after is the one to wait; Retry-After only stands in for a body without it (section 2).
    header = (headers or {}).get("retry-after", "")
    if "retry_after" not in extra and header.isascii() and header.isdigit() and int(header) > 0:
        extra["retry_after"] = int(header)
    error = cls.__new__(cls)
    BastionError.__init__(error, *messages, **extra)
    return error
