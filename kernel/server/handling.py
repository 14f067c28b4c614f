"""A request in a pool thread: the application runs with a body deadline and a deferred ``100 Continue``.

The ``Handling`` mixin of :class:`kernel.server.worker.BastionWorker`. gunicorn's thread (``ThreadWorker.handle``)
parses the request the main loop gathered and calls :meth:`Handling.handle_request`, a copy of gunicorn 27's
``ThreadWorker.handle_request`` with three changes: ``wsgi.input`` answers a malformed body 400
(:class:`kernel.server.refusals.RequestBody`); every socket read while the application runs is bounded by
``[server] body_timeout`` (:class:`kernel.server.connection.BastionUnreader`); and ``100 Continue``, which gunicorn
sends before the application has seen the request, is sent when the application first reads the body (or
was sent by the main loop already). tests/test_gunicorn_internals.py fails when gunicorn's original changes,
so that the copy is compared with it again.

After the answer, a body the main loop did not gather whole and the application did not read is not drained
by the thread (a slow client would hold it): :meth:`Handling._keepalive_after` closes the connection instead.
"""

from __future__ import annotations

from datetime import datetime

from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.http import wsgi

from kernel.server.connection import BastionUnreader
from kernel.server.framing import body_consumed
from kernel.server.refusals import RequestBody, peer
from kernel.server.room import Room


class Handling(Room):
    """gunicorn's ``handle_request`` and ``_keepalive_after``, for requests the main loop gathered (a worker mixin)."""

    def _keepalive_after(self, conn, keepalive):
        # A body the loop did not gather whole and the application did not read is not drained by a thread
        # (a slow client would hold it): the connection closes. Draining a gathered body reads only the
        # buffer, and can meet malformed chunks after the answer went out: nothing more may be written then.
        if keepalive and getattr(conn, "gathers", False) and not conn.whole_body and not body_consumed(conn.parser.mesg):
            self.log.debug("Closing connection: unread request body")
            return False
        try:
            return super()._keepalive_after(conn, keepalive)
        except (http_errors.ParseException, http_errors.NoMoreData) as exc:
            self.log.debug("Closing connection: unread request body not drained (%s)", type(exc).__name__)
            return False

    def handle_request(self, req, conn):
        """gunicorn 27's ``ThreadWorker.handle_request``, with the body deadline and the deferred 100 Continue."""
        unreader = getattr(conn.parser, "unreader", None)
        if not isinstance(unreader, BastionUnreader):
            return super().handle_request(req, conn)
        # gunicorn would send "100 Continue" in wsgi.create(), before the application has seen the request;
        # the main loop may have sent it already, before gathering the body.
        expect_continue = req._expected_100_continue and not getattr(conn, "continued", False)
        req._expected_100_continue = False
        environ = {}
        resp = None
        try:
            self.cfg.pre_request(self, req)
            request_start = datetime.now()
            resp, environ = wsgi.create(req, conn.sock, conn.client, conn.server, self.cfg)
            environ["wsgi.multithread"] = True
            environ["wsgi.input"] = RequestBody(req.body, resp, self.log, peer(conn.client))
            self.nr += 1
            if self.nr >= self.max_requests:
                if self.alive:
                    self.log.info("Autorestarting worker after current request.")
                    self.alive = False
                resp.force_close()
            if not self.alive or not self.cfg.keepalive:
                resp.force_close()
            elif len(self.keepalived_conns) >= self.max_keepalived:
                resp.force_close()

            def start_response(status, headers, exc_info=None):
                unreader.response_started()
                return resp.start_response(status, headers, exc_info)

            unreader.start_body(req, resp, expect_continue, self.body_timeout)
            respiter = self.wsgi(environ, start_response)
            try:
                if isinstance(respiter, environ["wsgi.file_wrapper"]):
                    resp.write_file(respiter)
                else:
                    for item in respiter:
                        resp.write(item)
                resp.close()
            finally:
                self.log.access(resp, req, environ, datetime.now() - request_start)
                if hasattr(respiter, "close"):
                    respiter.close()
            if resp.should_close():
                self.log.debug("Closing connection.")
                return False
        except OSError:
            raise
        except (Exception, SystemExit):
            if resp and resp.headers_sent:
                # Timeout abort is SystemExit. If the response started, writing an error answer corrupts it.
                self.log.exception("Error handling request")
                util.close_graceful(conn.sock)
                raise StopIteration() from None
            raise
        finally:
            unreader.end_body()
            try:
                self.cfg.post_request(self, req, environ, resp)
            except Exception:
                self.log.exception("Exception in post_request hook")
        return True


__all__ = ["Handling"]
