"""The Falcon front end: ``create_app(runtime)`` builds the WSGI application of a runtime.

Building the app has no side effect: the runtime was opened (and started) before, by :mod:`kernel.wsgi`, a test
or a command. Every request goes through one :class:`~kernel.http.pipeline.Pipeline`, the numbered steps of
docs/protocol.md section 4 in order (printed by ``python -m kernel.http.pipeline``); Falcon's middleware and the
``/api`` resource only hand it the request at each phase::

    process_request   -> the request phase   target, origin, host (1)
    process_resource  -> the route phase     transport (2), ban (3), body (4, 5), credentials (6),
                                             authenticate (7-10)
    ApiResource       -> the call phase      authorize (12), service (13), bind (14), run (15)
    process_response  -> the answer phase    sign, headers, account (the call line, bastion_refused)

A refusal anywhere is an exception that the one :class:`ErrorHandler` answers; the answer phase runs after it.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterable
from pathlib import Path

import falcon

from kernel.core.errors import (
    BastionError,
    Error,
    InvalidCall,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from kernel.core.runtime import Runtime
from kernel.core.signing import SCHEME
from kernel.http.pipeline import (
    API_CSP,
    HEALTH_PATH,
    HSTS,
    METRICS_PATH,
    OPS_PATHS,
    Call,
    Phase,
    Pipeline,
    Route,
    Step,
    default_steps,
    new_call,
    parse_call,
)
from kernel.http.routes import Routes, answer
from kernel.http.settings import HttpSettings
from kernel.http.static_files import StaticFiles
from kernel.ops.metrics import CONTENT_TYPE

log = logging.getLogger("bastion.http")

_HTTP_ERRORS: dict[int, type[BastionError]] = {
    400: InvalidCall, 404: NotFound, 413: PayloadTooLarge, 415: UnsupportedMediaType,
}

__all__ = ["API_CSP", "HSTS", "HEALTH_PATH", "METRICS_PATH", "OPS_PATHS", "BastionApp", "HttpSettings", "create_app",
           "parse_call", "PipelineMiddleware", "ErrorHandler"]


class BastionApp(falcon.App):
    """A Falcon app that knows its :class:`Runtime` and its :class:`Pipeline`."""

    runtime: Runtime
    pipeline: Pipeline


def create_app(runtime: Runtime, steps: Iterable[Step] | None = None) -> BastionApp:
    """Build the WSGI application of a started ``runtime``: the pipeline, kernel routes, plugin routes, static
    files, one error handler. Nothing else happens: no driver is opened, no plugin started.

    ``steps`` replaces the pipeline's steps (:func:`kernel.http.pipeline.default_steps`, in docs/protocol.md's
    order): for tests that need to see what a changed order would let through.
    """
    if not runtime.started:
        raise RuntimeError("start the runtime before building its app (Runtime(...).start())")
    http = HttpSettings.from_config(runtime.config)
    pipeline = Pipeline(default_steps(runtime, http) if steps is None else steps)
    middleware = PipelineMiddleware(pipeline, http)
    app = BastionApp(middleware=[middleware])
    app.runtime = runtime
    app.pipeline = pipeline
    app.req_options.auto_parse_form_urlencoded = False
    app.resp_options.secure_cookies_by_default = True
    app.add_route("/api/{service}", ApiResource(pipeline))
    app.add_route(HEALTH_PATH, HealthResource(runtime))
    app.add_route(METRICS_PATH, MetricsResource(runtime))
    runtime.hook.bastion_routes(routes=Routes(app), app=app, runtime=runtime)
    mounts: list[tuple[str, str | Path]] = [("/", str(http.static_dir))] if http.static_dir else []
    for pairs in runtime.hook.bastion_static():
        mounts.extend(pairs or [])
    if mounts:
        app.add_sink(RoutedSink(StaticFiles(mounts), middleware), "/")
    app.add_error_handler((Exception, falcon.HTTPError, BastionError), ErrorHandler(runtime))
    return app


class PipelineMiddleware:
    """Binds each request's context, runs the pipeline's phases as Falcon hands the request over, and unbinds.

    What a request must pass is decided by the route it matched (a resource's ``protected``, ``signed``,
    ``plain_http`` and ``max_body`` attributes, :class:`Route`), never by a prefix of its path.
    """

    def __init__(self, pipeline: Pipeline, http: HttpSettings):
        self.pipeline = pipeline
        self.http = http
        #: Each resource's :class:`Route`, read once (resources and sinks are made with the app and live as long).
        self._routes: dict[int, tuple[object, Route]] = {}

    def route_of(self, resource: object) -> Route:
        """The :class:`Route` of a resource, from its class attributes the first time it is asked for."""
        known = self._routes.get(id(resource))
        if known is not None and known[0] is resource:
            return known[1]
        route = Route.of(resource)
        self._routes[id(resource)] = (resource, route)  # the resource held: its id is never another's
        return route

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        """A new :class:`Call`, its context bound, then the ``request`` phase (target, origin, host)."""
        call = new_call(req, resp, self.http)
        req.context.call = call
        self.pipeline.begin(call)
        self.pipeline.run(Phase.REQUEST, call)

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource, params) -> None:
        """The ``route`` phase (steps 2 to 10), for what the matched resource asks."""
        call: Call = req.context.call
        call.route = self.route_of(resource)
        if "service" in params:
            call.service = params["service"]
        call.request._protected = call.route.protected
        self.pipeline.run(Phase.ROUTE, call)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        """The ``answer`` phase (signature, headers, accounting), then the context unbound."""
        call: Call | None = getattr(req.context, "call", None)
        if call is None:  # process_request never ran (Falcon refused the request before any middleware)
            return
        try:
            self.pipeline.run(Phase.ANSWER, call)
        finally:
            self.pipeline.finish(call)


class ApiResource:
    """``POST /api/{service}``: the ``call`` phase (steps 12 to 15; the route phase authenticated the call)."""

    protected = True
    signed = True

    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline

    def on_post(self, req: falcon.Request, resp: falcon.Response, service: str) -> None:
        """Authorize, look up, bind and run the service."""
        self.pipeline.run(Phase.CALL, req.context.call)


class RoutedSink:
    """A sink that passes through the ``route`` phase as a routed resource does (Falcon skips the resource
    middleware for sinks): what the request must pass is decided by the same attributes, here those of the
    static files (a page: unprotected, redirected to HTTPS in production)."""

    def __init__(self, sink, middleware: PipelineMiddleware):
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
        if not req.context.call.ops or not self.runtime.metrics.enabled:
            raise NotFound(f"no such resource: {METRICS_PATH}")
        resp.status = 200
        resp.content_type = CONTENT_TYPE
        resp.data = self.runtime.metrics.render()


#: The challenge of every 401 (RFC 9110, section 11.6.1): the scheme of a signed call's ``Authorization``.
CHALLENGE = ("WWW-Authenticate", SCHEME)


def answer_headers(status: int, body: dict) -> list[tuple[str, str]]:
    """The headers an error's body implies, whatever raised it (docs/protocol.md section 2): ``Retry-After`` equal
    to the body's ``retry_after``, and ``WWW-Authenticate`` on a 401."""
    headers = []
    if "retry_after" in body:
        headers.append(("Retry-After", str(body["retry_after"])))
    if status == 401:
        headers.append(CHALLENGE)
    return headers


class ErrorHandler:
    """The one place where failures become docs/protocol.md section 2 answers."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def __call__(self, req: falcon.Request, resp: falcon.Response, error: Exception, params: dict) -> None:
        call: Call | None = getattr(req.context, "call", None)
        request_id = call.request_id if call is not None else None
        answered = self.translate(error, request_id)
        body = answered.body()
        if isinstance(answered, Error):
            body["request_id"] = request_id
            if self.runtime.development:
                body["trace"] = "".join(traceback.format_exception(error))
        elif isinstance(answered, ServiceUnavailable) and answered.backend:
            self.runtime.metrics.storage_error(answered.backend)
        if call is not None:
            call.error = answered  # the answer phase weighs it (bastion_refused) and writes it in the call line
        for name, value in answered.headers.items():
            resp.set_header(name, value)
        for name, value in answer_headers(answered.status, body):
            resp.set_header(name, value)
        answer(resp, body, answered.status)

    def translate(self, ex: Exception, request_id: str | None = None) -> BastionError:
        """Map any exception to a protocol error; log the unexpected ones (the request id is their log id)."""
        if isinstance(ex, BastionError):
            return ex
        if isinstance(ex, falcon.HTTPMethodNotAllowed):
            allow = dict(ex.headers or {}).get("Allow", "")
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
