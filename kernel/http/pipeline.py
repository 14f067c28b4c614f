"""The request pipeline: docs/protocol.md's request processing (section 4) as one ordered list of steps.

(Over 500 lines on purpose: the steps are read in their order, top to bottom, as the protocol lists them; a
reviewer who moves or adds a check sees its neighbours on the same page.)

:func:`kernel.http.app.create_app` builds one :class:`Pipeline` from :func:`default_steps`; the middleware only
binds a request's context, runs the steps of each phase and unbinds. Each step is a small class that does one
numbered check of the protocol (or one of the kernel's own jobs around them: the canonical target, the headers
of every answer, the signature of an answer, the accounting of the outcome), in this order::

    python -m kernel.http.pipeline          # prints the list, as tests/test_pipeline.py compares it with the docs

A step runs in one of four phases, the points where Falcon hands a request over:

* ``request``: before routing, for every request (the target, the origin, step 1);
* ``route``: once routing found what serves the request (steps 2 to 10, by what the route asks for);
* ``call``: the responder of ``/api/{service}`` (steps 12 to 15);
* ``answer``: once the answer is ready, whatever happened (its signature, its headers, its accounting).

Plugins contribute to named steps through hooks: ``ban`` calls ``bastion_admit``, ``authenticate``
``bastion_authenticate``, ``authorize`` ``bastion_has_permission``, ``account`` ``bastion_refused``. Everything a
step learns about the request goes into one typed :class:`Call`, never onto Falcon's ``req.context``.
"""

from __future__ import annotations

import enum
import inspect
import logging
import math
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from kernel.core import context
from kernel.core.context import bind_request_id, bind_scope, unbind_request_id, unbind_scope
from kernel.core.errors import (
    BastionError,
    EncryptionRequired,
    Error,
    Forbidden,
    InvalidCall,
    InvalidCiphertext,
    InvalidHost,
    NotFound,
    PayloadTooLarge,
    RequireSSL,
    Unauthorized,
    UnsupportedMediaType,
)
from kernel.core.hosts import FORWARDING_HEADERS, forwarding_headers, parse_domain
from kernel.core.jsonio import loads
from kernel.core.plugins import DirectHooks
from kernel.core.sealing import SEALED_TYPE, Sealing, answer_aad, call_aad, is_sealed, open_envelope, seal
from kernel.core.signing import Authentication, Credentials, ResponseSigner
from kernel.http.routes import answer
from kernel.http.static_files import STATIC_CSP
from kernel.http.target import parse_target
from kernel.ops.deploy import FORWARDED_NOTE, NOTES_DOMAIN
from kernel.ops.logs import CALL, REQUEST_ID, Event, clip, emit, new_request_id

if TYPE_CHECKING:
    import falcon

    from kernel.core.runtime import Runtime
    from kernel.core.services import Service
    from kernel.http.settings import HttpSettings

log = logging.getLogger("bastion.http")

#: The operator's paths: answered under any Host to the addresses of ``[metrics] allow``.
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
OPS_PATHS = frozenset({HEALTH_PATH, METRICS_PATH})

#: How long the note of forwarding headers from a peer that is not a trusted proxy is kept, and how often one
#: process writes it at most (seconds).
FORWARDED_NOTE_TTL = 7 * 86400
FORWARDED_NOTE_EVERY = 60.0

API_CSP = "default-src 'none'; frame-ancestors 'none'"
HSTS = "max-age=31536000; includeSubDomains"
#: What a redirect's ``Location`` keeps as it was sent in a target (its escapes included); the rest is escaped.
_TARGET_SAFE = "/%;=,:@!$&'()*+~-._"


class Phase(enum.Enum):
    """Where Falcon hands a request to the pipeline."""

    REQUEST = "request"
    ROUTE = "route"
    CALL = "call"
    ANSWER = "answer"

    # A member is its own only instance: hashed by identity, in C, instead of by Enum's hash of its name in Python
    # (the pipeline looks a phase up four times a request).
    __hash__ = object.__hash__


@dataclass(frozen=True)
class Route:
    """What the resource a request matched asks of the pipeline (its class attributes, read once per resource)."""

    protected: bool = False
    signed: bool = False
    plain_http: bool = False
    max_body: int | None = None

    @classmethod
    def of(cls, resource: object) -> Route:
        """The route of a Falcon resource (or sink), from its ``protected``, ``signed``, ``plain_http`` and
        ``max_body`` class attributes (a plugin's own Falcon resource declares them the same way)."""
        return cls(bool(getattr(resource, "protected", False)), bool(getattr(resource, "signed", False)),
                   bool(getattr(resource, "plain_http", False)), getattr(resource, "max_body", None))


#: The route of a request that matched nothing (a 404 of the router).
UNROUTED = Route()


@dataclass(eq=False, slots=True)
class Call:
    """Everything the pipeline knows about one request: made when it arrives, read by every step after."""

    req: falcon.Request
    resp: falcon.Response
    request: context.Request
    request_id: str
    started: float
    route: Route = UNROUTED
    #: The service named by ``/api/{service}``, as sent (None for any other route).
    service: str | None = None
    #: ``/healthz`` or ``/metrics`` from an address of ``[metrics] allow``: no tenant.
    ops: bool = False
    #: A static file was found for the request (its answer gets the pages' CSP; its call line is at debug).
    static: bool = False
    #: What ``Authorization`` held (step 6), and what ``bastion_admit`` handed on to the authenticator (step 3).
    credentials: Credentials | None = None
    admissions: list[Any] = field(default_factory=list)
    #: Set once the MAC verified (step 8): every answer from then on is signed with it.
    signer: ResponseSigner | None = None
    #: The session's encryption keys, as the authenticator handed them (a version-2 session).
    sealing: Sealing | None = None
    #: Set once a sealed call's session is known (its MAC verified): every answer from then on is sealed with it.
    sealed: bool = False
    #: When the session ends as the call left it (the authenticator's ``Authentication.expires``), if it says.
    session_expires: float | None = None
    #: The service's arguments, bound at step 14: ``(args, kwargs)``.
    bound: tuple[tuple, dict] | None = None
    #: The refusal the error handler answered, if any (the ``account`` step weighs it).
    error: BastionError | None = None
    #: The tokens of the context variables bound for the request, unbound by :meth:`Pipeline.finish`.
    tokens: list[Any] = field(default_factory=list)


class Step:
    """One step of the pipeline: a check of docs/protocol.md section 4, or one of the kernel's jobs around them."""

    #: The step's name, as the list prints it.
    name: ClassVar[str]
    #: The step's number in docs/protocol.md section 4's list ("7-10" for a range), "" for the kernel's own.
    protocol: ClassVar[str] = ""
    phase: ClassVar[Phase]
    #: The hook through which plugins take part in the step, if any.
    hook: ClassVar[str | None] = None
    #: What the step does, in a few words (and what it answers when it refuses).
    does: ClassVar[str]

    def applies(self, call: Call) -> bool:
        """Whether the step concerns this request (by its route and method)."""
        return True

    def run(self, call: Call) -> None:  # pragma: no cover - every step overrides it
        """Do the step; raise the protocol's error to refuse."""
        raise NotImplementedError

    def numbers(self) -> list[int]:
        """The protocol steps this one is, as numbers (``"7-10"`` is 7, 8, 9, 10)."""
        if not self.protocol:
            return []
        first, _, last = self.protocol.partition("-")
        return list(range(int(first), int(last or first) + 1))


class Pipeline:
    """The ordered steps, run phase by phase. Built once per app; holds no request state."""

    def __init__(self, steps: Iterable[Step]):
        self.steps = tuple(steps)
        names = [step.name for step in self.steps]
        if len(set(names)) != len(names):
            raise ValueError(f"two steps have one name: {names}")
        # Each phase's steps, each with its ``applies`` (None for a step that concerns every request: nothing to ask).
        self._plans = {phase: tuple((step, None if type(step).applies is Step.applies else step.applies)
                                    for step in self.steps if step.phase is phase) for phase in Phase}

    def run(self, phase: Phase, call: Call) -> None:
        """Run the phase's steps that apply, in order, until one raises or (before the answer phase) completes the
        answer itself (a redirect)."""
        if phase is Phase.ANSWER:
            for step, applies in self._plans[phase]:
                if applies is None or applies(call):
                    step.run(call)
            return
        resp = call.resp
        for step, applies in self._plans[phase]:
            if resp.complete:
                return
            if applies is None or applies(call):
                step.run(call)

    def begin(self, call: Call) -> None:
        """Bind the request's context (its id, the current request) for everything that runs until :meth:`finish`."""
        call.tokens.append((unbind_request_id, bind_request_id(call.request_id)))
        call.tokens.append((context.reset, context.set_current(call.request)))

    def finish(self, call: Call) -> None:
        """Unbind what :meth:`begin` and the steps bound, last first."""
        while call.tokens:
            unbind, token = call.tokens.pop()
            unbind(token)

    def step(self, name: str) -> Step:
        """The step of that name (for plugins and tests that look at one)."""
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def describe(self) -> list[str]:
        """One line per step: number, name, phase, hook, what it does (:func:`describe`)."""
        return describe(self.steps)

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)


# -- request: every request, before routing ------------------------------------------------------------------------


class TargetStep(Step):
    name = "target"
    phase = Phase.REQUEST
    does = "the canonical request target, section 12 (404 NotFound, 400 InvalidCall)"

    def run(self, call: Call) -> None:
        target = parse_target(call.req.env)
        call.request._path, call.request._query = target.path, target.query
        call.request._authority = target.authority


class OriginStep(Step):
    """Forwarding headers from a peer that is not a trusted proxy: said once a minute per process, in the log and
    in the state store, where ``bastion check --deploy`` finds it (docs/protocol.md section 7)."""

    name = "origin"
    phase = Phase.REQUEST
    does = "forwarding headers from a peer that is not a trusted proxy are noted, never believed"

    def __init__(self, runtime: Runtime, http: HttpSettings):
        self.runtime = runtime
        self.http = http
        self._next_note = 0.0
        self._lock = threading.Lock()

    def applies(self, call: Call) -> bool:
        env = call.req.env
        return any(key in env for key in FORWARDING_HEADERS) and not self.http.origins.is_trusted(
            env.get("REMOTE_ADDR", ""))

    def run(self, call: Call) -> None:
        now = time.monotonic()
        if now < self._next_note or not self._lock.acquire(blocking=False):
            return
        try:
            if now < self._next_note:
                return
            self._next_note = now + FORWARDED_NOTE_EVERY
            env = call.req.env
            peer = env.get("REMOTE_ADDR", "")
            headers = forwarding_headers(env)
            why = "[bastion] trusted_proxies is empty" if not self.http.origins.trusted else \
                "it is not in [bastion] trusted_proxies"
            log.warning("%s arrived from %s, and %s: ignored (the origin and the scheme are the peer's own); "
                        "if a proxy of yours sent them, list it in trusted_proxies", ", ".join(headers), peer, why)
            if not self.runtime.process_local:
                try:
                    self.runtime.state.set(NOTES_DOMAIN, FORWARDED_NOTE,
                                           {"peer": peer, "headers": headers, "seen": self.runtime.clock(),
                                            "trusted_proxies": bool(self.http.origins.trusted)},
                                           FORWARDED_NOTE_TTL)
                except Exception as exc:  # a note must never fail a request
                    log.debug("could not note the forwarding headers: %s", type(exc).__name__)
        finally:
            self._lock.release()


class HostStep(Step):
    """Step 1, then the tenant's storage scope. ``/healthz`` and ``/metrics`` from an address of ``[metrics]
    allow`` are answered under any Host (a load balancer or Prometheus probing by address): no tenant, no scope."""

    name = "host"
    protocol = "1"
    phase = Phase.REQUEST
    does = "Host allowed, the tenant's storage bound (400 InvalidHost)"

    def __init__(self, runtime: Runtime, http: HttpSettings):
        self.runtime = runtime
        self.http = http

    def run(self, call: Call) -> None:
        request = call.request
        env = call.req.env
        # RFC 9112 section 3.2.2: the authority of an absolute-form target is the host, whatever Host says.
        authority = request._authority
        host = authority if authority is not None else env.get("HTTP_HOST")
        if request.path in OPS_PATHS and self.http.is_ops_peer(env, request.origin):
            call.ops = True
            try:
                request._domain = parse_domain(host)
            except InvalidHost:
                pass  # the operator's probe needs no tenant
            return
        request._domain = parse_domain(host)
        if not self.http.hosts.allows(request.domain):
            raise InvalidHost(f"host {request.domain!r} is not served here")
        call.tokens.append((unbind_scope, bind_scope(self.runtime.scope(request.domain))))


# -- route: once routing found what serves the request -------------------------------------------------------------


class TransportStep(Step):
    """Step 2 in production: a protected route refuses plain HTTP; a page asked for over plain HTTP (GET or HEAD
    of any other route but the operator's) is redirected to HTTPS, to the same host and target (301)."""

    name = "transport"
    protocol = "2"
    phase = Phase.ROUTE
    does = "HTTPS in production (403 RequireSSL; a page over HTTP: 301 to HTTPS)"

    def __init__(self, http: HttpSettings):
        self.http = http

    def applies(self, call: Call) -> bool:
        return not self.http.development and call.request.scheme != "https"

    def run(self, call: Call) -> None:
        if call.route.protected:
            raise RequireSSL("this server only accepts HTTPS")
        if call.req.method in ("GET", "HEAD") and not call.route.plain_http:
            self._redirect(call)

    @staticmethod
    def _redirect(call: Call) -> None:
        """301 to the request's domain (checked against the allowed hosts, without its port: HTTPS is on its
        default port, the proxy's) and the target sent, so nothing the client wrote but a served host and a
        canonical path ends up in ``Location``."""
        request, resp = call.request, call.resp
        target = urllib.parse.quote(request.path, safe=_TARGET_SAFE)
        if request.query is not None:
            target += "?" + urllib.parse.quote(request.query, safe=_TARGET_SAFE + "?")
        resp.status = 301
        resp.location = f"https://{request.domain}{target}"
        resp.content_type = "text/plain"
        resp.data = b""
        resp.complete = True  # the responder does not run; the answer phase adds the headers and the call line


class BanStep(Step):
    name = "ban"
    protocol = "3"
    phase = Phase.ROUTE
    hook = "bastion_admit"
    does = "origin not banned in this domain (429 Abusive)"

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.hooks = DirectHooks(runtime.pm, "bastion_admit")

    def applies(self, call: Call) -> bool:
        return call.route.protected

    def run(self, call: Call) -> None:
        if call.route.signed and call.req.method == "POST":
            # The authenticator may read what it needs with the ban (one round trip) and find it at step 7.
            call.credentials = credentials_of(call)
        results = self.hooks.bastion_admit(request=call.request, credentials=call.credentials,
                                                  runtime=self.runtime)
        call.admissions = [r for r in results if r is not None]


class _PostStep(Step):
    """A step that only concerns a POST to a protected route (another method is answered 405 after step 3)."""

    def applies(self, call: Call) -> bool:
        return call.route.protected and call.req.method == "POST"


class BodyLimitStep(_PostStep):
    name = "body_limit"
    protocol = "4"
    phase = Phase.ROUTE
    does = "body within the limit: the route's, else [bastion] max_body (413 PayloadTooLarge)"

    def __init__(self, http: HttpSettings):
        self.http = http

    def run(self, call: Call) -> None:
        route_limit = call.route.max_body
        limit = self.http.max_body if route_limit is None else min(route_limit, self.http.max_body)
        req = call.req
        length = req.content_length
        if length is not None and length > limit:
            raise PayloadTooLarge(f"request body over {limit} bytes")
        if length is None and "chunked" in (req.get_header("Transfer-Encoding") or "").lower():
            body = req.stream.read(limit + 1)
            if len(body) > limit:
                raise PayloadTooLarge(f"request body over {limit} bytes")
            call.request._body = body


class BodyStep(_PostStep):
    name = "body"
    protocol = "5"
    phase = Phase.ROUTE
    does = ("JSON body (a signed call's may be sealed), no query string, then the body read whole "
            "(415 UnsupportedMediaType, 400 InvalidCall)")

    def run(self, call: Call) -> None:
        req, request = call.req, call.request
        length = req.content_length
        if (length or request.body) and not _is_json(req.content_type) and not (
                call.route.signed and is_sealed(req.content_type)):
            raise UnsupportedMediaType(f"the request body must be application/json"
                                       f"{f' or {SEALED_TYPE}' if call.route.signed else ''}")
        if request.query is not None:
            raise InvalidCall("a query string is not accepted here")
        if length:
            body = req.bounded_stream.read(length)
            if len(body) < length:
                raise InvalidCall("the request body ended before its Content-Length")
            request._body = body


class AuthenticateStep(_PostStep):
    """Steps 6 to 10, the installed authenticator's: the kernel parsed ``Authorization`` (Bastion-HMAC) and hands
    the :class:`Credentials` over (None when missing or malformed: the auth plugin then answers 401 Unauthorized;
    an authenticator of another scheme reads its own header), with what step 3 read for it."""

    name = "authenticate"
    protocol = "6-10"
    phase = Phase.ROUTE
    hook = "bastion_authenticate"
    does = ("credentials, session, MAC, skew, nonce (401 Unauthorized, UnknownSession, ExpiredSession, "
            "InvalidSignature, StaleCall, ReplayedCall)")

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.hooks = DirectHooks(runtime.pm, "bastion_authenticate")

    def applies(self, call: Call) -> bool:
        return call.route.signed and call.req.method == "POST"

    def run(self, call: Call) -> None:
        credentials = call.credentials = credentials_of(call)
        result = self.hooks.bastion_authenticate(request=call.request, credentials=credentials,
                                                        service=call.service, admissions=call.admissions,
                                                        runtime=self.runtime)
        if result is None:
            raise Unauthorized("no authenticator is installed")
        roles = None
        if isinstance(result, Authentication):
            if credentials is None:  # what signs the answers is the nonce of the Bastion-HMAC credentials
                raise TypeError("an authenticator returned an Authentication for a call without Bastion-HMAC credentials")
            call.signer = ResponseSigner(result.key, credentials.nonce)
            # A sealed call's session is known: every answer from here on is sealed, its refusals too.
            call.sealing = result.sealing
            call.sealed = result.sealing is not None and is_sealed(call.req.content_type)
            if result.refusal is not None:
                raise result.refusal
            call.session_expires = result.expires
            result, roles = result.session, result.roles
        call.request._session = result
        # The roles the authenticator read with the call; one that reads none may keep them on its session.
        call.request._roles = frozenset(roles if roles is not None else getattr(result, "roles", None) or ())


class OpenStep(_PostStep):
    """Step 11 (docs/protocol.md section 16): a sealed call is opened with its session's call key and the
    associated data of its ts, nonce, path and domain (its answer, whatever it is, is sealed: see
    :class:`AuthenticateStep`); a plain call to a service on a tenant that requires encryption is refused. Every
    later step reads the plaintext as the body."""

    name = "open"
    protocol = "11"
    phase = Phase.ROUTE
    does = ("a sealed body opens (415 UnsupportedMediaType without session keys, 400 InvalidCiphertext); "
            "a plain one where sealed calls are required: 400 EncryptionRequired")

    def applies(self, call: Call) -> bool:
        return call.route.signed and call.req.method == "POST" and call.credentials is not None

    def run(self, call: Call) -> None:
        sealing, request, credentials = call.sealing, call.request, call.credentials
        if not is_sealed(call.req.content_type) or credentials is None:
            # A logout carries nothing, and refusing it would only keep a session alive: it may be plain.
            if sealing is not None and sealing.required and call.service is not None:
                raise EncryptionRequired("this tenant requires encrypted calls: seal the body (a version-2 "
                                         "session's call key)")
            return
        if sealing is None:
            raise UnsupportedMediaType("a sealed body needs a session that agreed on keys (a version-2 login)")
        aad = call_aad(credentials.ts, credentials.nonce, request.path, request.domain)
        try:
            request._body = open_envelope(sealing.call_key, request.body, aad)
        except ValueError as exc:
            raise InvalidCiphertext(str(exc)) from None


# -- call: the responder of /api/{service} ------------------------------------------------------------------------


class _ServiceStep(Step):
    phase = Phase.CALL

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def applies(self, call: Call) -> bool:
        return call.service is not None

    def service_of(self, call: Call) -> Service:
        """The service the call names (404 NotFound when there is none)."""
        service = self.runtime.services.get(call.service) if call.service is not None else None
        if service is None:
            raise NotFound(f"no such service: {call.service}")
        return service


class AuthorizeStep(_ServiceStep):
    name = "authorize"
    protocol = "12"
    hook = "bastion_has_permission"
    does = "permission (403 Forbidden): any False denies"

    def __init__(self, runtime: Runtime):
        super().__init__(runtime)
        self.hooks = DirectHooks(runtime.pm, "bastion_has_permission")

    def run(self, call: Call) -> None:
        request = call.request
        verdicts = self.hooks.bastion_has_permission(session=request.session, service=call.service,
                                                           request=request)
        if any(allowed is False for allowed in verdicts):
            raise Forbidden(f"you may not call {call.service}")


class LookupStep(_ServiceStep):
    name = "service"
    protocol = "13"
    does = "the service exists (404 NotFound)"

    def run(self, call: Call) -> None:
        self.service_of(call)


class BindStep(_ServiceStep):
    name = "bind"
    protocol = "14"
    does = "the body parses and binds to the service's parameters (400 InvalidCall)"

    def run(self, call: Call) -> None:
        args, kwargs = parse_call(call.request.body)
        call.bound = self.service_of(call).arguments(args, kwargs)


class RunStep(_ServiceStep):
    name = "run"
    protocol = "15"
    does = "the service runs; its answer is {\"result\": ...} (its own errors: 404 RecordNotFound, 409, 422, ...)"

    def run(self, call: Call) -> None:
        if call.bound is None:  # the bind step runs before, for every call of a service
            raise TypeError(f"the call of {call.service} was not bound to its arguments")
        args, kwargs = call.bound
        answer(call.resp, {"result": self.service_of(call).fn(*args, **kwargs)})


def parse_call(body: bytes) -> tuple[list, dict]:
    """Parse ``{"args": [...], "kwargs": {...}}``; raise InvalidCall on any other shape."""
    if not body.strip():
        return [], {}
    try:
        payload = loads(body)
    except ValueError as exc:
        raise InvalidCall(f"malformed JSON body: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidCall("the body must be a JSON object")
    extra = set(payload) - {"args", "kwargs"}
    if extra:
        raise InvalidCall(f"unexpected key in body: {', '.join(sorted(extra))}")
    args = payload.get("args", [])
    kwargs = payload.get("kwargs", {})
    if not isinstance(args, list):
        raise InvalidCall("'args' must be a JSON array")
    if not isinstance(kwargs, dict):
        raise InvalidCall("'kwargs' must be a JSON object")
    return args, kwargs


# -- answer: once the answer is ready ------------------------------------------------------------------------------


class SealStep(Step):
    """The answer to a sealed call, whatever it is (a result, a refusal, a 500), sealed with the session's answer key
    and the associated data of the call's nonce and the answer's status (docs/protocol.md section 16)."""

    name = "seal"
    phase = Phase.ANSWER
    does = "the answer to a sealed call sealed with the session's answer key (section 16)"

    def applies(self, call: Call) -> bool:
        return call.sealed and isinstance(call.resp.data, bytes)

    def run(self, call: Call) -> None:
        resp, sealing, credentials = call.resp, call.sealing, call.credentials
        if sealing is not None and credentials is not None and isinstance(resp.data, bytes):  # as applies() found
            resp.data = seal(sealing.answer_key, resp.data, answer_aad(credentials.nonce, resp.status_code))
            resp.content_type = SEALED_TYPE


class SignStep(Step):
    name = "sign"
    phase = Phase.ANSWER
    does = ("Server-Authorization on every answer once the MAC verified, and Session-Expires once the call slid "
            "the session (section 4, signed responses)")

    def applies(self, call: Call) -> bool:
        return call.signer is not None and isinstance(call.resp.data, bytes)

    def run(self, call: Call) -> None:
        resp, signer, data = call.resp, call.signer, call.resp.data
        if signer is not None and isinstance(data, bytes):  # as applies() found
            resp.set_header("Server-Authorization", signer.header(resp.status_code, data))
            if call.session_expires is not None:
                resp.set_header("Session-Expires", str(math.floor(call.session_expires)))


class HeadersStep(Step):
    name = "headers"
    phase = Phase.ANSWER
    does = "X-Request-Id and the security headers of every answer (section 8)"

    def __init__(self, http: HttpSettings):
        self.http = http
        common = [("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
                  ("Referrer-Policy", "no-referrer")]
        if not http.development:
            common.append(("Strict-Transport-Security", HSTS))
        # The headers every answer gets besides its request id, set in one call: a static file's, any other's.
        self._static = (*common, ("Content-Security-Policy", STATIC_CSP))
        self._other = (*common, ("Cache-Control", "no-store"), ("Content-Security-Policy", API_CSP))

    def run(self, call: Call) -> None:
        resp = call.resp
        resp.set_header("X-Request-Id", call.request_id)
        resp.set_headers(self._static if call.static else self._other)


class AccountStep(Step):
    """The outcome, accounted for: a refusal of a protected route weighed by plugins (``bastion_refused``: the
    auth plugin's abuse weights, section 6), ``bastion_calls_total`` and its duration, and the one
    ``bastion.call`` line (at debug for static files and the operator's paths)."""

    name = "account"
    phase = Phase.ANSWER
    hook = "bastion_refused"
    does = "a refusal weighed (section 6), the call counted and its bastion.call line written"

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def run(self, call: Call) -> None:
        error = call.error
        if error is not None and call.route.protected and not isinstance(error, Error):
            try:
                self.runtime.hook.bastion_refused(request=call.request, error=error, runtime=self.runtime)
            except Exception:
                log.exception("bastion_refused failed")
        try:
            self._call_line(call)
        except Exception:  # the answer is ready: an accounting failure must not turn it into a 500
            log.exception("could not log or count the request")

    def _call_line(self, call: Call) -> None:
        seconds = time.perf_counter() - call.started
        req, resp = call.req, call.resp
        status = resp.status_code
        service = call.service
        static = call.static
        if service is not None:
            label = service if self.runtime.services.get(service) is not None else "(unknown)"
        elif static:
            label = "(static)"
        elif call.route is not UNROUTED:
            label = req.uri_template or "(none)"
        else:
            label = "(none)"
        self.runtime.metrics.call(label, status, seconds)
        level = logging.DEBUG if static or call.ops else logging.INFO
        if CALL.isEnabledFor(level):
            request = call.request
            fields = {
                "domain": request.domain or None,
                "origin": request.origin,
                "method": req.method,
                "path": clip(request.path),
                "service": clip(service),
                "user": request.user,
                "status": status,
                "exc": call.error.exc if call.error is not None else None,
                "duration_ms": round(seconds * 1000, 3),
            }
            emit(CALL, level, Event("call", fields, call.request_id))


def credentials_of(call: Call) -> Credentials | None:
    """The request's Bastion-HMAC credentials, parsed once (None when ``Authorization`` is missing or malformed)."""
    if call.credentials is None:
        call.credentials = Credentials.parse(call.request.header("Authorization"))
    return call.credentials


def _is_json(content_type: str | None) -> bool:
    return (content_type or "").split(";", 1)[0].strip().lower() == "application/json"


#: The kernel's steps, in docs/protocol.md's order (``tests/test_pipeline.py`` compares the numbers with its list).
ORDER: tuple[type[Step], ...] = (
    TargetStep, OriginStep, HostStep,                                       # request
    TransportStep, BanStep, BodyLimitStep, BodyStep, AuthenticateStep,      # route
    OpenStep,
    AuthorizeStep, LookupStep, BindStep, RunStep,                           # call
    SealStep, SignStep, HeadersStep, AccountStep,                           # answer
)


def default_steps(runtime: Runtime, http: HttpSettings) -> list[Step]:
    """The kernel's pipeline: one instance of each step of :data:`ORDER`, given what it needs."""
    needs = {"runtime": runtime, "http": http}
    steps = []
    for cls in ORDER:
        parameters = [name for name in inspect.signature(cls.__init__).parameters if name != "self"]
        steps.append(cls(**{name: needs[name] for name in parameters if name in needs}))
    return steps


def describe(steps: Iterable[Step | type[Step]] = ORDER) -> list[str]:
    """One line per step: its number in docs/protocol.md section 4 (``-`` for the kernel's own), name, phase,
    hook, and what it does."""
    return [f"{step.protocol or '-':>5}  {step.name:<13} {step.phase.value:<7} {step.hook or '-':<23} {step.does}"
            for step in steps]


def new_call(req: falcon.Request, resp: falcon.Response, http: HttpSettings) -> Call:
    """The :class:`Call` of a request that just arrived: its id, origin and scheme; nothing checked yet."""
    env = req.env
    given = env.get("HTTP_X_REQUEST_ID")
    remote = env.get("REMOTE_ADDR", "")
    if given is not None and http.origins.trusted and REQUEST_ID.fullmatch(given) and http.origins.is_trusted(remote):
        request_id = given  # a sane id from a trusted proxy
    else:
        request_id = new_request_id()
    origin, scheme = http.origins.resolve(env)
    request = context.Request("", origin=origin, scheme=scheme, method=req.method, path=req.path, headers=env)
    return Call(req, resp, request, request_id, time.perf_counter())


if __name__ == "__main__":
    print("\n".join(describe()))
