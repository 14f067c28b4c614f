"""The Falcon front end: ``create_app(runtime)`` builds the WSGI application of a runtime.

Building the app has no side effect: the runtime was opened (and started)
before, by :mod:`kernel.wsgi`, a test or a command. A signed call runs in a
straight line, each arrow a direct call::

    wsgi -> KernelMiddleware.process_request   target, tenant, allowed host
         -> KernelMiddleware.process_resource  HTTPS, body (steps 2-5), then bastion_authenticate (3, 6-10)
         -> ApiResource.on_post                bastion_has_permission (11), service (12), binding (13)
         -> the service                        storage() -> UnitOfWork -> the driver (14)
         -> KernelMiddleware.process_response  security headers, Server-Authorization
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
import traceback
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import falcon

from kernel.core import context
from kernel.core.config import Config
from kernel.core.context import bind_scope, unbind_scope
from kernel.core.errors import (
    BastionError,
    ConfigError,
    Error,
    Forbidden,
    InvalidCall,
    InvalidHost,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequireSSL,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
)
from kernel.core.hosts import FORWARDING_HEADERS, HostMatcher, Origins, address_in, forwarding_headers, parse_domain
from kernel.core.jsonio import loads
from kernel.core.runtime import Runtime
from kernel.core.signing import Authentication, Credentials, ResponseSigner
from kernel.http.routes import Routes, answer
from kernel.http.static_files import STATIC_CSP, StaticFiles
from kernel.http.target import parse_target
from kernel.ops.deploy import FORWARDED_NOTE, NOTES_DOMAIN
from kernel.ops.logs import CALL, REQUEST_ID, Event, bind_request_id, clip, emit, new_request_id, unbind_request_id
from kernel.ops.metrics import CONTENT_TYPE

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
_HTTP_ERRORS: dict[int, type[BastionError]] = {
    400: InvalidCall, 404: NotFound, 413: PayloadTooLarge, 415: UnsupportedMediaType,
}


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


class BastionApp(falcon.App):
    """A Falcon app that knows its :class:`Runtime`."""

    runtime: Runtime


def create_app(runtime: Runtime) -> BastionApp:
    """Build the WSGI application of a started ``runtime``: kernel routes, plugin routes, static files, one error
    handler. Nothing else happens: no driver is opened, no plugin started."""
    if not runtime.started:
        raise RuntimeError("start the runtime before building its app (Runtime(...).start())")
    http = HttpSettings.from_config(runtime.config)
    middleware = KernelMiddleware(runtime, http)
    app = BastionApp(middleware=[middleware])
    app.runtime = runtime
    app.req_options.auto_parse_form_urlencoded = False
    app.resp_options.secure_cookies_by_default = True
    app.add_route("/api/{service}", ApiResource(runtime))
    app.add_route(HEALTH_PATH, HealthResource(runtime))
    app.add_route(METRICS_PATH, MetricsResource(runtime))
    runtime.hook.bastion_routes(routes=Routes(app), app=app, config=runtime.config, runtime=runtime)
    mounts = [("/", str(http.static_dir))] if http.static_dir else []
    for pairs in runtime.hook.bastion_static():
        mounts.extend(pairs or [])
    if mounts:
        app.add_sink(RoutedSink(StaticFiles(mounts), middleware), "/")
    app.add_error_handler((Exception, falcon.HTTPError, BastionError), ErrorHandler(runtime))
    return app


class KernelMiddleware:
    """Binds each request to its tenant and applies the checks and headers of docs/protocol.md.

    What a request must pass is decided by the route it matched (a resource's
    ``protected`` and ``signed`` attributes), never by a prefix of its path:
    ``process_request`` runs for every request, ``process_resource`` once
    routing has found the resource (the static files' sink included, see
    :class:`RoutedSink`). In production, a protected route refuses plain HTTP
    (403 RequireSSL), and a GET or HEAD of any other route but the operator's
    (``plain_http``) is redirected to HTTPS (301).
    """

    def __init__(self, runtime: Runtime, http: HttpSettings):
        self.runtime = runtime
        self.http = http
        self.metrics = runtime.metrics
        self._next_forwarded_note = 0.0
        self._note_lock = threading.Lock()

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The request id, the canonical target and step 1 (allowed host), then make the request current.

        ``/healthz`` and ``/metrics`` from an address of ``[metrics] allow``
        are answered under any Host (a load balancer or Prometheus probing by
        IP address): no tenant, no storage scope.
        """
        ctx = req.context
        ctx.started = time.perf_counter()
        env = req.env
        ctx.request_id = request_id = self._request_id(env)
        ctx.request_id_token = bind_request_id(request_id)
        origin, scheme = self.http.origins.resolve(env)
        request = context.Request("", origin=origin, scheme=scheme, method=req.method, path=req.path, headers=env)
        ctx.request = request
        ctx.token = context.set_current(request)
        if ("HTTP_X_FORWARDED_FOR" in env or "HTTP_X_FORWARDED_PROTO" in env or "HTTP_FORWARDED" in env
                or "HTTP_X_REAL_IP" in env) and not self.http.origins.is_trusted(env.get("REMOTE_ADDR", "")):
            self._note_forwarded(env)
        target = parse_target(env)
        request._path, request._query = target.path, target.query
        # RFC 9112 section 3.2.2: the authority of an absolute-form target is the host, whatever Host says.
        host = target.authority if target.authority is not None else env.get("HTTP_HOST")
        if target.path in OPS_PATHS and self.http.is_ops_peer(env, origin):
            ctx.ops = True
            try:
                request._domain = parse_domain(host)
            except InvalidHost:
                pass  # the operator's probe needs no tenant
            return
        request._domain = parse_domain(host)
        if not self.http.hosts.allows(request.domain):
            raise InvalidHost(f"host {request.domain!r} is not served here")
        ctx.scope = bind_scope(self.runtime.scope(request.domain))

    def _request_id(self, env) -> str:
        """The ``X-Request-Id`` a trusted proxy sent (when it is a sane one), else a new id."""
        given = env.get("HTTP_X_REQUEST_ID")
        if given is not None and self.http.origins.trusted and REQUEST_ID.fullmatch(given) \
                and self.http.origins.is_trusted(env.get("REMOTE_ADDR", "")):
            return given
        return new_request_id()

    def _note_forwarded(self, env) -> None:
        """Forwarding headers from a peer that is not a trusted proxy: say so, at most once a minute per process,
        in the log and in the state store, where ``bastion check --deploy`` finds it."""
        now = time.monotonic()
        if now < self._next_forwarded_note or not self._note_lock.acquire(blocking=False):
            return
        try:
            if now < self._next_forwarded_note:
                return
            self._next_forwarded_note = now + FORWARDED_NOTE_EVERY
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
            self._note_lock.release()

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource, params) -> None:
        """Steps 2 to 5 of docs/protocol.md section 4 for a protected route, and steps 3, 6 to 10 for a signed one."""
        if "service" in params:
            req.context.service = params["service"]
        request: context.Request = req.context.request
        if not getattr(resource, "protected", False):
            if (not self.http.development and request.scheme != "https" and req.method in ("GET", "HEAD")
                    and not getattr(resource, "plain_http", False)):
                self._to_https(resp, request)
            return
        request._protected = True
        if not self.http.development and request.scheme != "https":
            raise RequireSSL("this server only accepts HTTPS")
        if req.method != "POST":
            self._admit(request)  # the route answers 405 itself, after the ban check
            return
        request._body = self._read_body(req, request, getattr(resource, "max_body", None))
        if getattr(resource, "signed", False):
            self._authenticate(req, request, params.get("service"))
        else:
            self._admit(request)

    def _to_https(self, resp: falcon.Response, request: context.Request) -> None:
        """Answer a page asked for over plain HTTP in production: 301 to the same host and target over HTTPS.

        The host is the request's domain (checked against the allowed hosts,
        without its port: HTTPS is on its default port, the proxy's), the
        target the one sent, so nothing the client wrote but a served host and
        a canonical path ends up in ``Location``.
        """
        target = urllib.parse.quote(request.path, safe=_TARGET_SAFE)
        if request.query is not None:
            target += "?" + urllib.parse.quote(request.query, safe=_TARGET_SAFE + "?")
        resp.status = 301
        resp.location = f"https://{request.domain}{target}"
        resp.content_type = falcon.MEDIA_TEXT
        resp.data = b""
        resp.complete = True  # the responder does not run; process_response adds the headers and the call line

    def _admit(self, request: context.Request) -> None:
        """Step 3: the auth plugin refuses a banned origin."""
        self.runtime.hook.bastion_admit(request=request, runtime=self.runtime)

    def _refuse(self, request: context.Request, error: BastionError) -> None:
        """Answer a step 4 or 5 error, unless the origin is banned (step 3 comes first)."""
        self._admit(request)
        raise error

    def _read_body(self, req: falcon.Request, request: context.Request, route_limit: int | None = None) -> bytes:
        """Steps 4 and 5: the body limit (the route's own, when it is lower), its type, no query string; then the
        body itself."""
        limit = self.http.max_body if route_limit is None else min(route_limit, self.http.max_body)
        length = req.content_length
        if length is not None and length > limit:
            self._refuse(request, PayloadTooLarge(f"request body over {limit} bytes"))
        chunked = length is None and "chunked" in (req.get_header("Transfer-Encoding") or "").lower()
        body = b""
        if chunked:
            body = req.stream.read(limit + 1)
            if len(body) > limit:
                self._refuse(request, PayloadTooLarge(f"request body over {limit} bytes"))
        if (length or body) and not _is_json(req.content_type):
            self._refuse(request, UnsupportedMediaType("the request body must be application/json"))
        if request.query is not None:
            self._refuse(request, InvalidCall("a query string is not accepted here"))
        if length:
            body = req.bounded_stream.read(length)
            if len(body) < length:
                raise InvalidCall("the request body ended before its Content-Length")
        return body

    def _authenticate(self, req: falcon.Request, request: context.Request, service: str | None) -> None:
        """Steps 3 and 6 to 10, once the whole body has arrived: every state check holds at that moment."""
        credentials = Credentials.parse(request.header("Authorization"))
        result = self.runtime.hook.bastion_authenticate(request=request, credentials=credentials, service=service,
                                                        runtime=self.runtime)
        if result is None:
            self._refuse(request, Unauthorized("no authenticator is installed"))
        if isinstance(result, Authentication):
            req.context.signer = ResponseSigner(result.key, credentials.nonce)
            if result.refusal is not None:
                raise result.refusal
            result = result.session
        request._session = result

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        """Add the security headers and the request id, sign the answer if the call was verified, write the call
        line and count the call, release the request."""
        ctx = req.context
        resp.set_header("X-Request-Id", ctx.request_id)
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.set_header("X-Frame-Options", "DENY")
        resp.set_header("Referrer-Policy", "no-referrer")
        if not self.http.development:
            resp.set_header("Strict-Transport-Security", HSTS)
        if getattr(req.context, "static", False):
            resp.set_header("Content-Security-Policy", STATIC_CSP)
        else:
            resp.set_header("Cache-Control", "no-store")
            resp.set_header("Content-Security-Policy", API_CSP)
        signer: ResponseSigner | None = getattr(req.context, "signer", None)
        if signer is not None and isinstance(resp.data, bytes):
            resp.set_header("Server-Authorization", signer.header(resp.status_code, resp.data))
        try:
            self._call_line(req, resp, resource)
        except Exception:  # the answer is ready: an accounting failure must not turn it into a 500
            log.exception("could not log or count the request")
        scope = getattr(req.context, "scope", None)
        if scope is not None:
            unbind_scope(scope)
            req.context.scope = None
        token = getattr(req.context, "token", None)
        if token is not None:
            context.reset(token)
            req.context.token = None
        token = getattr(ctx, "request_id_token", None)
        if token is not None:
            unbind_request_id(token)
            ctx.request_id_token = None

    def _call_line(self, req: falcon.Request, resp: falcon.Response, resource) -> None:
        """``bastion_calls_total``, the duration histogram, and the one ``bastion.call`` line of the request
        (at debug for static files and the operator's paths)."""
        ctx = req.context
        seconds = time.perf_counter() - ctx.started
        status = resp.status_code
        service = getattr(ctx, "service", None)
        static = getattr(ctx, "static", False)
        if service is not None:
            label = service if self.runtime.services.get(service) is not None else "(unknown)"
        elif static:
            label = "(static)"
        elif resource is not None:
            label = req.uri_template or "(none)"
        else:
            label = "(none)"
        self.metrics.call(label, status, seconds)
        level = logging.DEBUG if static or getattr(ctx, "ops", False) else logging.INFO
        if CALL.isEnabledFor(level):
            request: context.Request | None = getattr(ctx, "request", None)
            fields = {
                "domain": request.domain or None if request is not None else None,
                "origin": request.origin if request is not None else req.env.get("REMOTE_ADDR"),
                "method": req.method,
                "path": clip(request.path if request is not None else req.path),
                "service": clip(service),
                "user": request.user if request is not None else None,
                "status": status,
                "exc": getattr(ctx, "exc", None),
                "duration_ms": round(seconds * 1000, 3),
            }
            emit(CALL, level, Event("call", fields, ctx.request_id))


def _is_json(content_type: str | None) -> bool:
    return (content_type or "").split(";", 1)[0].strip().lower() == "application/json"


class ApiResource:
    """``POST /api/{service}``: authorize, bind, run (steps 11 to 14; the kernel authenticated the call)."""

    protected = True
    signed = True

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def on_post(self, req: falcon.Request, resp: falcon.Response, service: str) -> None:
        """Run a service for an authenticated caller."""
        rt = self.runtime
        request: context.Request = req.context.request
        verdicts = rt.hook.bastion_has_permission(session=request.session, service=service, request=request)
        if any(allowed is False for allowed in verdicts):
            raise Forbidden(f"you may not call {service}")
        svc = rt.services.get(service)
        if svc is None:
            raise NotFound(f"no such service: {service}")
        args, kwargs = parse_call(request.body)
        answer(resp, {"result": svc(args, kwargs)})


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


class RoutedSink:
    """A sink that passes through ``process_resource`` as a routed resource does (Falcon skips the resource
    middleware for sinks): what the request must pass is decided by the same attributes, here those of the
    static files (a page: unprotected, redirected to HTTPS in production)."""

    def __init__(self, sink, middleware: KernelMiddleware):
        self.sink = sink
        self.middleware = middleware

    def __call__(self, req: falcon.Request, resp: falcon.Response, **params) -> None:
        self.middleware.process_resource(req, resp, self.sink, params)
        if not resp.complete:
            self.sink(req, resp, **params)


class HealthResource:
    """``GET /healthz``: 200 when the records' and the state's backends both take writes, 503 otherwise.

    The answer says which: ``{"status": "ok", "records": "ok", "state": "ok"}``,
    or the 503 ServiceUnavailable body with ``records`` and ``state`` beside
    ``exc`` and ``err``, each ``"ok"`` or ``"unavailable"``. A ping writes
    (docs/storage.md), so a full disk or a read-only database is a 503 too.
    Answered over plain HTTP in production too: a load balancer probes a node directly.
    """

    plain_http = True

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Ping the records' backend and the state's (once when they are one)."""
        rt = self.runtime
        report: dict[str, str] = {}
        retry_after = None
        for part, driver in (("records", rt.records), ("state", rt.state)):
            if part == "state" and driver is rt.records:
                report["state"] = report["records"]
                continue
            try:
                driver.ping()
                report[part] = "ok"
            except ServiceUnavailable as exc:
                report[part] = "unavailable"
                retry_after = max(retry_after or 0, exc.extra.get("retry_after", 0))
                rt.metrics.storage_error(exc.backend or "unknown")
        if retry_after is not None:
            down = [part for part in ("records", "state") if report[part] != "ok"]
            raise ServiceUnavailable(f"storage unavailable: {' and '.join(down)}", retry_after=retry_after or None,
                                     **report)
        answer(resp, {"status": "ok", **report})


class MetricsResource:
    """``GET /metrics``: every worker's metrics in the Prometheus text format, for ``[metrics] allow`` only.

    To anyone else it is an unknown resource (404), as if it were not there. Answered over plain HTTP in
    production too: Prometheus scrapes a node directly.
    """

    plain_http = True

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Render the metrics."""
        if not getattr(req.context, "ops", False) or not self.runtime.metrics.enabled:
            raise NotFound(f"no such resource: {METRICS_PATH}")
        resp.status = 200
        resp.content_type = CONTENT_TYPE
        resp.data = self.runtime.metrics.render()


class ErrorHandler:
    """The one place where failures become docs/protocol.md section 2 answers."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def __call__(self, req: falcon.Request, resp: falcon.Response, ex: Exception, params: dict) -> None:
        error = self.translate(ex, getattr(req.context, "request_id", None))
        req.context.exc = error.exc
        body = error.body()
        if isinstance(error, Error):
            body["request_id"] = getattr(req.context, "request_id", None)
            if self.runtime.development:
                body["trace"] = "".join(traceback.format_exception(ex))
        elif isinstance(error, ServiceUnavailable) and error.backend:
            self.runtime.metrics.storage_error(error.backend)
        request = getattr(req.context, "request", None)
        if request is not None and request.protected and not isinstance(error, Error):
            try:
                self.runtime.hook.bastion_refused(request=request, error=error, runtime=self.runtime)
            except Exception:
                log.exception("bastion_refused failed")
        for name, value in error.headers.items():
            resp.set_header(name, value)
        answer(resp, body, error.status)

    def translate(self, ex: Exception, request_id: str | None = None) -> BastionError:
        """Map any exception to a protocol error; log the unexpected ones (the request id is their log id)."""
        if isinstance(ex, BastionError):
            return ex
        if isinstance(ex, falcon.HTTPMethodNotAllowed):
            allow = (ex.headers or {}).get("Allow", "")
            return MethodNotAllowed([m.strip() for m in allow.split(",") if m.strip()])
        if isinstance(ex, falcon.HTTPError):
            cls = _HTTP_ERRORS.get(ex.status_code, InvalidCall if ex.status_code < 500 else Error)
            if cls is Error:
                return self._unexpected(ex, request_id)
            return cls(*(filter(None, [ex.title, ex.description])))
        return self._unexpected(ex, request_id)

    def _unexpected(self, ex: Exception, request_id: str | None) -> Error:
        # The request id (in this line, the X-Request-Id header and the body) is what the operator looks for.
        log.error("unexpected error, request id %s: %s", request_id, type(ex).__name__, exc_info=ex)
        return Error(f"internal error; request id {request_id}" if request_id else "internal error")
