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
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

import falcon

from kernel import context
from kernel.config import Config
from kernel.errors import (
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
    Unauthorized,
    UnsupportedMediaType,
)
from kernel.hosts import DEVELOPMENT_HOSTS, HostMatcher, Origins, parse_domain
from kernel.jsonio import loads
from kernel.routes import Routes, answer
from kernel.runtime import Runtime
from kernel.signing import Authentication, Credentials, ResponseSigner
from kernel.static_files import STATIC_CSP, StaticFiles
from kernel.store import bind_scope, unbind_scope
from kernel.target import parse_target

log = logging.getLogger("bastion.http")

API_CSP = "default-src 'none'; frame-ancestors 'none'"
HSTS = "max-age=31536000; includeSubDomains"
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

    @classmethod
    def from_config(cls, config: Config) -> HttpSettings:
        """Read and check the settings; ConfigError names what is wrong."""
        settings = config.bastion
        hosts = settings.allowed_hosts or (DEVELOPMENT_HOSTS if settings.development else ())
        if not hosts:
            raise ConfigError(f"{config.label}: [bastion] allowed_hosts: required in production mode; "
                              "accepted: a list of host names such as example.com, *.example.com")
        static_dir = config.resolve_path(settings.static) if settings.static else None
        if static_dir is not None and not static_dir.is_dir():
            raise ConfigError(f"{config.label}: [bastion] static = {settings.static!r}: not a directory")
        trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = settings.trusted_proxies
        return cls(settings.development, HostMatcher(hosts), Origins(trusted), settings.max_body, static_dir)


class BastionApp(falcon.App):
    """A Falcon app that knows its :class:`Runtime`."""

    runtime: Runtime


def create_app(runtime: Runtime) -> BastionApp:
    """Build the WSGI application of a started ``runtime``: kernel routes, plugin routes, static files, one error
    handler. Nothing else happens: no driver is opened, no plugin started."""
    if not runtime.started:
        raise RuntimeError("start the runtime before building its app (Runtime(...).start())")
    http = HttpSettings.from_config(runtime.config)
    app = BastionApp(middleware=[KernelMiddleware(runtime, http)])
    app.runtime = runtime
    app.req_options.auto_parse_form_urlencoded = False
    app.resp_options.secure_cookies_by_default = True
    app.add_route("/api/{service}", ApiResource(runtime))
    app.add_route("/healthz", HealthResource(runtime))
    runtime.hook.bastion_routes(routes=Routes(app), app=app, config=runtime.config, runtime=runtime)
    mounts = [("/", str(http.static_dir))] if http.static_dir else []
    for pairs in runtime.hook.bastion_static():
        mounts.extend(pairs or [])
    if mounts:
        app.add_sink(StaticFiles(mounts), "/")
    app.add_error_handler((Exception, falcon.HTTPError, BastionError), ErrorHandler(runtime))
    return app


class KernelMiddleware:
    """Binds each request to its tenant and applies the checks and headers of docs/protocol.md.

    What a request must pass is decided by the route it matched (a resource's
    ``protected`` and ``signed`` attributes), never by a prefix of its path:
    ``process_request`` runs for every request, ``process_resource`` once
    routing has found the resource.
    """

    def __init__(self, runtime: Runtime, http: HttpSettings):
        self.runtime = runtime
        self.http = http

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The canonical target and step 1 (allowed host), then make the request current."""
        origin, scheme = self.http.origins.resolve(req.env)
        request = context.Request("", origin=origin, scheme=scheme, method=req.method, path=req.path, headers=req.env)
        req.context.request = request
        req.context.token = context.set_current(request)
        target = parse_target(req.env)
        request._path, request._query = target.path, target.query
        # RFC 9112 section 3.2.2: the authority of an absolute-form target is the host, whatever Host says.
        request._domain = parse_domain(target.authority if target.authority is not None else req.env.get("HTTP_HOST"))
        if not self.http.hosts.allows(request.domain):
            raise InvalidHost(f"host {request.domain!r} is not served here")
        req.context.scope = bind_scope(self.runtime.scope(request.domain))

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource, params) -> None:
        """Steps 2 to 5 of docs/protocol.md section 4 for a protected route, and steps 3, 6 to 10 for a signed one."""
        if not getattr(resource, "protected", False):
            return
        request: context.Request = req.context.request
        request._protected = True
        if not self.http.development and request.scheme != "https":
            raise RequireSSL("this server only accepts HTTPS")
        if req.method != "POST":
            self._admit(request)  # the route answers 405 itself, after the ban check
            return
        request._body = self._read_body(req, request)
        if getattr(resource, "signed", False):
            self._authenticate(req, request, params.get("service"))
        else:
            self._admit(request)

    def _admit(self, request: context.Request) -> None:
        """Step 3: the auth plugin refuses a banned origin."""
        self.runtime.hook.bastion_admit(request=request, runtime=self.runtime)

    def _refuse(self, request: context.Request, error: BastionError) -> None:
        """Answer a step 4 or 5 error, unless the origin is banned (step 3 comes first)."""
        self._admit(request)
        raise error

    def _read_body(self, req: falcon.Request, request: context.Request) -> bytes:
        """Steps 4 and 5: the body limit, its type, no query string; then the body itself."""
        limit = self.http.max_body
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
        """Add the security headers, sign the answer if the call was verified, release the request."""
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
        scope = getattr(req.context, "scope", None)
        if scope is not None:
            unbind_scope(scope)
            req.context.scope = None
        token = getattr(req.context, "token", None)
        if token is not None:
            context.reset(token)
            req.context.token = None


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


class HealthResource:
    """``GET /healthz``: 200 when the storage answers reads and writes, 503 otherwise."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Ping the storage."""
        self.runtime.ping()
        answer(resp, {"status": "ok"})


class ErrorHandler:
    """The one place where failures become docs/protocol.md section 2 answers."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def __call__(self, req: falcon.Request, resp: falcon.Response, ex: Exception, params: dict) -> None:
        error = self.translate(ex)
        body = error.body()
        if isinstance(error, Error) and self.runtime.development:
            body["trace"] = "".join(traceback.format_exception(ex))
        request = getattr(req.context, "request", None)
        if request is not None and request.protected and not isinstance(error, Error):
            try:
                self.runtime.hook.bastion_refused(request=request, error=error, runtime=self.runtime)
            except Exception:
                log.exception("bastion_refused failed")
        for name, value in error.headers.items():
            resp.set_header(name, value)
        answer(resp, body, error.status)

    def translate(self, ex: Exception) -> BastionError:
        """Map any exception to a protocol error; log the unexpected ones under a log id."""
        if isinstance(ex, BastionError):
            return ex
        if isinstance(ex, falcon.HTTPMethodNotAllowed):
            allow = (ex.headers or {}).get("Allow", "")
            return MethodNotAllowed([m.strip() for m in allow.split(",") if m.strip()])
        if isinstance(ex, falcon.HTTPError):
            cls = _HTTP_ERRORS.get(ex.status_code, InvalidCall if ex.status_code < 500 else Error)
            if cls is Error:
                return self._unexpected(ex)
            return cls(*(filter(None, [ex.title, ex.description])))
        return self._unexpected(ex)

    def _unexpected(self, ex: Exception) -> Error:
        log_id = uuid.uuid4().hex[:12]
        log.error("unexpected error, log id %s", log_id, exc_info=ex)
        return Error(f"internal error; log id {log_id}")
