"""A worker that starts during a storage outage keeps running, answering 503 until it can build the application.

A worker replaced after ``max_requests``, or after a crash, may start while the database fails over. gunicorn
counts an application that cannot be built as a failed boot, and a failed boot stops the whole server: the
outage of a storage would become the outage of every node. Instead the worker serves :class:`Starting`, which
answers 503 ServiceUnavailable and builds the application again at the next request, at most once a second,
until the storage answers; then it serves.
"""

from __future__ import annotations

import logging
import threading
import time
from http import HTTPStatus

from kernel.core.errors import ServiceUnavailable
from kernel.core.jsonio import dumps
from kernel.ops.logs import CALL, clip, log_event, new_request_id
from kernel.server.refusals import SECURITY_HEADERS


class Starting:
    """The application of a worker whose application could not be built while the storage was unavailable.

    Each request is answered 503 ServiceUnavailable (``retry_after``, the security headers), except that
    at most once every :attr:`RETRY` seconds one request first tries to build the application again
    (``load()``, gunicorn's application loader); once that succeeds, every request goes to it.
    """

    RETRY = 1.0

    def __init__(self, load, log):
        self._load = load
        self._log = log
        self._lock = threading.Lock()
        self._next = time.monotonic() + self.RETRY
        self.app = None

    def __call__(self, environ, start_response):
        app = self.app or self._retry()
        if app is not None:
            return app(environ, start_response)
        error = ServiceUnavailable()
        body = dumps(error.body())
        request_id = new_request_id()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                   ("X-Request-Id", request_id), *SECURITY_HEADERS, *error.headers.items()]
        log_event(CALL, logging.WARNING, "call", {
            "origin": environ.get("REMOTE_ADDR"), "method": environ.get("REQUEST_METHOD"),
            "path": clip(environ.get("PATH_INFO")), "status": error.status, "exc": error.exc,
            "err": "the application is not built yet: the storage does not answer", "by": "worker"}, request_id)
        start_response(f"{error.status} {HTTPStatus(error.status).phrase}", headers)
        return [body]

    def _retry(self):
        if time.monotonic() < self._next or not self._lock.acquire(blocking=False):
            return None
        try:
            if self.app is None and time.monotonic() >= self._next:
                try:
                    self.app = self._load()
                    self._log.info("the storage answers again: the application is ready")
                except ServiceUnavailable:
                    self._next = time.monotonic() + self.RETRY
            return self.app
        finally:
            self._lock.release()


__all__ = ["Starting"]
