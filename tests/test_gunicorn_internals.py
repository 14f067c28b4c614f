"""The internals of gunicorn that Bastion's server layer relies on still have the shape it was written for.

``kernel/server/worker.py`` and its rooms subclass gunicorn 27's threaded worker (``ThreadWorker``, ``TConn``),
its parser and socket reader (``RequestParser``, ``SocketUnreader``), its logger, copy one of its methods
(``handle_request``) and mirror some of its rules (where a body ends); ``kernel/server/gunicorn_conf.py`` looks for
gunicorn's configuration loaders in the stack of its import, ``kernel/server/settings.py`` hands the master's
settings to workers that gunicorn forks, and ``kernel/server/serve.py`` binds the master's sockets itself. None of
this is gunicorn's public API, which is why setup.cfg pins gunicorn to one major release. A gunicorn upgrade that
changes any of it fails here, naming what to review, instead of misbehaving at run time.

Most checks are on shape (names, signatures, attributes) or behaviour (what a call does). The methods Bastion
copies, or whose order of calls its overrides depend on, are fingerprinted (a hash of their source): when one
fails, read gunicorn's change, bring the Bastion code it names in line, then update the fingerprint here.
"""

from __future__ import annotations

import configparser
import hashlib
import importlib.metadata
import inspect
import logging
import os
import re
import socket
import sys
from collections import deque
from pathlib import Path

import gunicorn
import pytest
from gunicorn import glogging, sock, systemd, util
from gunicorn.app.base import Application, BaseApplication
from gunicorn.app.wsgiapp import WSGIApplication
from gunicorn.arbiter import Arbiter
from gunicorn.config import Config
from gunicorn.http import errors as http_errors
from gunicorn.http import wsgi
from gunicorn.http.body import ChunkedReader, LengthReader
from gunicorn.http.message import Message, Request
from gunicorn.http.parser import RequestParser
from gunicorn.http.unreader import IterUnreader, SocketUnreader, Unreader
from gunicorn.http2 import negotiation
from gunicorn.workers import base
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, TConn, ThreadWorker

from kernel.core.config import Config as BastionConfig
from kernel.core.errors import ServiceUnavailable
from kernel.server import gunicorn_conf
from kernel.server.settings import ServerSettings
from kernel.server.worker import GUNICORN_MAJOR

ROOT = Path(__file__).resolve().parents[1]


# -- the pin ---------------------------------------------------------------------------------------------------


def test_setup_cfg_pins_the_major_the_worker_is_written_for():
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    requirements = [line.strip() for line in parser["options"]["install_requires"].splitlines()]
    [pin] = [line for line in requirements if re.match(r"gunicorn\b", line)]
    assert pin == f"gunicorn>={GUNICORN_MAJOR},<{GUNICORN_MAJOR + 1}"
    installed = importlib.metadata.version("gunicorn")
    assert gunicorn.version_info[0] == GUNICORN_MAJOR, (
        f"gunicorn {installed} is installed; kernel/server/ is written for gunicorn {GUNICORN_MAJOR}")


# -- signatures: the methods the worker overrides, and the callables it calls with these arguments ---------------


SIGNATURES = [
    # overridden by BastionWorker and its rooms (kernel/server/worker.py, gathering.py, limit.py, handling.py, refusals.py)
    (base.Worker.__init__, "(self, age, ppid, sockets, app, timeout, cfg, log)"),
    (ThreadWorker.__init__, "(self, *args, **kwargs)"),
    (ThreadWorker.init_process, "(self)"),
    (ThreadWorker.load_wsgi, "(self)"),
    (ThreadWorker.set_accept_enabled, "(self, enabled)"),
    (ThreadWorker.accept, "(self, listener)"),
    (ThreadWorker.on_client_socket_readable, "(self, conn, client)"),
    (ThreadWorker.finish_request, "(self, conn, fs)"),
    (ThreadWorker.murder_keepalived, "(self, force=False)"),
    (ThreadWorker.murder_pending, "(self)"),
    (ThreadWorker.wait_for_and_dispatch_events, "(self, timeout)"),
    (ThreadWorker._keepalive_after, "(self, conn, keepalive)"),
    (ThreadWorker.handle_request, "(self, req, conn)"),
    (ThreadWorker.handle_error, "(self, req, client, addr, exc)"),
    (ThreadWorker.enqueue_req, "(self, conn)"),
    # the connection, its parser and its socket reader (kernel/server/connection.py)
    (TConn.__init__, "(self, cfg, sock, client, server)"),
    (TConn.init, "(self)"),
    (TConn.set_timeout, "(self)"),
    (TConn.close, "(self, graceful=False)"),
    (RequestParser.__init__, "(self, cfg, source, source_addr)"),
    (RequestParser.__next__, "(self)"),
    (SocketUnreader.__init__, "(self, sock, max_chunk=8192)"),
    (SocketUnreader.chunk, "(self, size_hint=None)"),
    (Unreader.read, "(self, size=None, read_ahead=None)"),
    (Unreader.unread, "(self, data)"),
    (Unreader.take_buffered, "(self)"),
    (IterUnreader.__init__, "(self, iterable)"),
    (Request.__init__, "(self, cfg, unreader, peer_addr, req_number=1)"),
    # answering (kernel/server/handling.py, refusals.py)
    (wsgi.create, "(req, sock, client, server, cfg, response_class=None, response_args=())"),
    (wsgi.default_environ, "(req, sock, cfg)"),
    (wsgi.Response.__init__, "(self, req, sock, cfg)"),
    (wsgi.Response.start_response, "(self, status, headers, exc_info=None)"),
    (wsgi.Response.force_close, "(self)"),
    (wsgi.Response.should_close, "(self)"),
    (wsgi.Response.write, "(self, arg)"),
    (wsgi.Response.write_file, "(self, respiter)"),
    (wsgi.Response.close, "(self)"),
    (util.http_date, "(timestamp=None)"),
    (util.close, "(sock)"),
    (util.write_nonblock, "(sock, data, chunked=False)"),
    (util.close_on_exec, "(fd)"),
    (negotiation.prior_knowledge_allowed, "(cfg, peer_addr)"),
    (negotiation.upgrade_allowed, "(cfg, peer_addr)"),
    # the logger (kernel/server/logger.py)
    (glogging.Logger.__init__, "(self, cfg)"),
    (glogging.Logger.setup, "(self, cfg)"),
    (glogging.Logger.access, "(self, resp, req, environ, request_time)"),
    (glogging.Logger.reopen_files, "(self)"),
    (glogging.Logger.close_on_exec, "(self)"),
    # loading the settings (kernel/server/gunicorn_conf.py, serve.py)
    (Application.get_config_from_module_name, "(self, module_name)"),
    (Application.get_config_from_filename, "(self, filename)"),
    (BaseApplication.load_config, "(self)"),
    (BaseApplication.load, "(self)"),
    # binding the addresses before the master starts (kernel/server/serve.py's listen)
    (sock._sock_type, "(addr)"),
    (sock.BaseSocket.__init__, "(self, address, conf, log, fd=None)"),
    (sock.close_sockets, "(listeners, unlink=True)"),
    (systemd.listen_fds, "(unset_environment=True)"),
]


@pytest.mark.parametrize("function, signature", SIGNATURES, ids=[f.__qualname__ for f, _ in SIGNATURES])
def test_signatures(function, signature):
    assert str(inspect.signature(function)) == signature, f"gunicorn's {function.__module__}.{function.__qualname__}"


def test_close_graceful_takes_the_socket_first():
    """``util.close_graceful(sock)``: what handling.py calls when an answer broke off."""
    parameters = list(inspect.signature(util.close_graceful).parameters.values())
    assert parameters[0].name == "sock" and all(p.default is not inspect.Parameter.empty for p in parameters[1:])


# -- fingerprints: the code Bastion copies, or whose order of calls its overrides depend on ------------------------


FINGERPRINTS = {
    # kernel/server/handling.py's handle_request is a copy of it, changed.
    ThreadWorker.handle_request: "6d0de5b919102efc",
    # Calls, in a thread, conn.init(), next(conn.parser), handle_request, _keepalive_after, handle_error; does not
    # wait for a first byte when conn.data_ready (kernel/server/gathering.py's hand_over sets it).
    ThreadWorker.handle: "ca85c9be3df75da4",
    # The main loop: accepting up to worker_connections, wait_for_and_dispatch_events, murder_keepalived and
    # murder_pending, murder_keepalived(force=True) at the end (kernel/server/worker.py, gathering.py, limit.py).
    ThreadWorker.run: "f92c7394d85715a4",
    # kernel/server/gathering.py's finish_request does the same for gathered connections (keep-alive, linger).
    ThreadWorker.finish_request: "616e7bb15a009ff7",
    # kernel/server/worker.py's accept replaces it.
    ThreadWorker.accept: "f8dcead3dce5c851",
    # kernel/server/framing.py's BODY_FIELDS: only Content-Length and Transfer-Encoding give a request a body.
    Message.set_body_reader: "e3ba33f5ac7ca542",
    # kernel/server/framing.py's ChunkedEnd follows its rules (tests/test_worker.py compares them on examples).
    ChunkedReader: "c1aa79e0ae048701",
}


@pytest.mark.parametrize("code", list(FINGERPRINTS), ids=[c.__qualname__ for c in FINGERPRINTS])
def test_the_code_bastion_copies_or_follows_is_unchanged(code):
    found = hashlib.sha256(inspect.getsource(code).encode()).hexdigest()[:16]
    assert found == FINGERPRINTS[code], (
        f"gunicorn {gunicorn.__version__} changed {code.__module__}.{code.__qualname__}: read the change, bring the "
        "Bastion code this test's comment names in line with it, then update the fingerprint")


# -- attributes and behaviour --------------------------------------------------------------------------------------


def _cfg(**settings) -> Config:
    cfg = Config()
    for name, value in settings.items():
        cfg.set(name, value)
    return cfg


def test_the_thread_worker_has_the_state_the_worker_reads_and_writes():
    worker = ThreadWorker(1, os.getpid(), [], None, 30, _cfg(threads=3, worker_connections=7), logging.getLogger("t"))
    try:
        assert (worker.worker_connections, worker.max_keepalived) == (7, 4)
        assert isinstance(worker.keepalived_conns, deque) and isinstance(worker.pending_conns, deque)
        assert (worker.nr_conns, worker._accepting, worker.alive, worker.nr) == (0, False, True, 0)
        for name in ("max_requests", "cfg", "log", "app", "sockets", "tmp", "poller"):
            assert hasattr(worker, name), name
    finally:
        worker.tmp.close()
    assert isinstance(STOP_KEEPALIVE_LINGER, (int, float))


def test_the_settings_the_worker_reads_exist():
    cfg = Config()
    for name in ("threads", "is_ssl", "proxy_protocol", "keepalive", "worker_connections", "loglevel", "reload",
                 "pre_request", "post_request", "limit_request_line", "limit_request_field_size"):
        assert hasattr(cfg, name), name


def test_a_connection_keeps_the_parser_it_was_given_when_a_thread_sets_it_up():
    """kernel/server/connection.py gives a gathered connection its parser before gunicorn's TConn.init runs."""
    ours, theirs = socket.socketpair()
    try:
        conn = TConn(_cfg(), ours, ("127.0.0.1", 1), ("127.0.0.1", 2))
        for name in ("cfg", "sock", "client", "server", "timeout", "parser", "initialized", "is_http2", "data_ready"):
            assert hasattr(conn, name), name
        assert conn.parser is None and conn.data_ready is False and conn.initialized is False
        given = object()
        conn.parser = given
        conn.init()
        assert conn.parser is given and conn.initialized and conn.sock.getblocking()
    finally:
        ours.close()
        theirs.close()


def test_a_parsed_request_tells_its_framing_and_its_expectation():
    """What the main loop reads of gunicorn's parse of a head (kernel/server/gathering.py's ``look``)."""
    head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
    req = Request(Config(), IterUnreader((head + b"abc",)), ("127.0.0.1", 1), 1)
    assert isinstance(req.body.reader, LengthReader) and req.body.reader.length == 3
    assert req._expected_100_continue is True
    assert req.unreader.buf.getvalue() == b"abc"  # what followed the head
    assert (req.method, req.path, req.version) == ("POST", "/x", (1, 1))

    chunked = Request(Config(), IterUnreader((b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",)),
                      ("127.0.0.1", 1), 1)
    reader = chunked.body.reader
    assert isinstance(reader, ChunkedReader) and reader.parser is not None
    assert isinstance(reader.limit_chunk_size_line, int) and isinstance(reader.limit_trailer_section, int)

    bodiless = Request(Config(), IterUnreader((b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",)), ("127.0.0.1", 1), 1)
    assert isinstance(bodiless.body.reader, LengthReader) and bodiless.body.reader.length == 0


def test_the_parser_counts_requests_and_keeps_the_last():
    parser = RequestParser(Config(), iter([b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]), ("127.0.0.1", 1))
    assert (parser.mesg, parser.req_count) == (None, 0)
    req = next(parser)
    assert parser.mesg is req and parser.req_count == 1 and isinstance(parser.unreader, Unreader)


def test_the_socket_reader_reads_through_chunk_and_gives_back_what_was_unread():
    """kernel/server/connection.py's BastionUnreader overrides ``chunk``: every socket read goes through it."""

    class Counted(SocketUnreader):
        def __init__(self):
            super().__init__(None)
            self.pieces = [b"xyz", b""]

        def chunk(self, size_hint=None):
            return self.pieces.pop(0)

    reader = Counted()
    reader.unread(b"ab")
    assert reader.read() == b"ab"
    assert reader.read() == b"xyz" and reader.pieces == [b""]
    reader.unread(b"left")
    assert reader.take_buffered() == b"left" and reader.take_buffered() == b""


def test_wsgi_create_sends_100_continue_only_as_the_request_says():
    """kernel/server/handling.py clears ``_expected_100_continue`` so that gunicorn does not send it itself."""
    head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n"
    for expected in (True, False):
        ours, theirs = socket.socketpair()
        try:
            req = Request(Config(), IterUnreader((head,)), ("127.0.0.1", 1), 1)
            req._expected_100_continue = expected
            resp, environ = wsgi.create(req, ours, ("127.0.0.1", 1), ("127.0.0.1", 2), Config())
            for name in ("headers_sent", "status", "response_length"):
                assert hasattr(resp, name), name
            assert "wsgi.file_wrapper" in environ
            theirs.setblocking(False)
            try:
                sent = theirs.recv(100)
            except BlockingIOError:
                sent = b""
            assert sent == (b"HTTP/1.1 100 Continue\r\n\r\n" if expected else b"")
        finally:
            ours.close()
            theirs.close()


def test_gunicorns_parse_errors_carry_what_the_refusals_read():
    for name in ("InvalidRequestLine", "InvalidRequestMethod", "InvalidHTTPVersion", "LimitRequestLine",
                 "InvalidHeaderName", "ObsoleteFolding", "UnsupportedTransferCoding", "ExpectationFailed",
                 "InvalidChunkSize", "ChunkMissingTerminator", "InvalidChunkExtension", "InvalidProxyLine",
                 "InvalidProxyHeader", "InvalidSchemeHeaders", "InvalidH2CPreface", "InvalidHeader",
                 "LimitRequestHeaders", "ForbiddenProxyRequest", "InvalidResponseHeader", "InvalidResponseHeaderName",
                 "NoMoreData", "ParseException"):
        assert issubclass(getattr(http_errors, name), Exception), name
    assert http_errors.InvalidHeader("HOST").hdr == "HOST"
    assert http_errors.LimitRequestHeaders("limit request headers fields").msg == "limit request headers fields"


def test_a_failed_application_load_reaches_the_worker():
    """kernel/server/worker.py's load_wsgi catches ServiceUnavailable from gunicorn's ``Worker.load_wsgi``."""

    class App:
        def wsgi(self):
            raise ServiceUnavailable()

    worker = base.Worker(1, os.getpid(), [], App(), 30, Config(), logging.getLogger("t"))
    try:
        with pytest.raises(ServiceUnavailable):
            worker.load_wsgi()
    finally:
        worker.tmp.close()


def test_the_master_makes_each_worker_then_forks_it():
    """kernel/server/settings.py: a worker finds what the master published because gunicorn forks it from the master."""
    source = inspect.getsource(Arbiter.spawn_worker)
    made, forked, runs = source.find("self.worker_class("), source.find("os.fork()"), source.find("worker.init_process()")
    assert 0 <= made < forked < runs, "gunicorn's Arbiter.spawn_worker no longer forks the worker from the master"
    assert "os.exec" not in source


def test_the_master_binds_only_when_it_was_given_no_listeners():
    """kernel/server/serve.py binds the addresses itself and hands the sockets to the master (``Arbiter.LISTENERS``)."""
    source = inspect.getsource(Arbiter.start)
    given = source.find("if not self.LISTENERS:")
    assert 0 <= given < source.find("sock.create_sockets("), "gunicorn's Arbiter.start no longer keeps given listeners"
    cfg = _cfg(bind=["127.0.0.1:0"])
    [address] = cfg.address
    listener = sock._sock_type(address)(address, cfg, logging.getLogger("test"))
    try:
        assert listener.cfg_addr == address and listener.getsockname()[0] == "127.0.0.1"
    finally:
        sock.close_sockets([listener])


def test_the_worker_notes_code_reloading_in_the_words_the_logger_knows():
    """kernel/server/logger.py makes that one warning an INFO line in development mode, where reloading is the mode's."""
    from kernel.server.logger import BastionLogger

    assert f'self.log.warning("{BastionLogger.RELOADER_ON}")' in inspect.getsource(base.Worker.init_process)


def test_the_logger_is_made_with_the_settings_and_set_up_again_on_a_reload():
    """kernel/server/logger.py configures logging in ``setup``, which gunicorn's Arbiter runs at start and reload."""
    assert "self.setup(cfg)" in inspect.getsource(glogging.Logger.__init__)
    source = inspect.getsource(Arbiter.setup)
    assert "self.cfg.logger_class(app.cfg)" in source and "self.log.setup(app.cfg)" in source
    assert "self.cfg.on_starting(self)" in inspect.getsource(Arbiter.start)


# -- how gunicorn loads a configuration (kernel/server/gunicorn_conf.py) -------------------------------------------


@pytest.fixture
def probe_module(tmp_path, monkeypatch):
    """A module that records whether gunicorn_conf would see gunicorn's configuration loader importing it."""
    name = f"bastion_loader_probe_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text("from kernel.server.gunicorn_conf import _loaded_by_gunicorn\n"
                                         "seen = _loaded_by_gunicorn()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, tmp_path / f"{name}.py"
    sys.modules.pop(name, None)
    sys.modules.pop("__config__", None)


def test_gunicorn_imports_a_python_configuration_through_its_loader(probe_module):
    name, _ = probe_module
    loader = object.__new__(WSGIApplication)  # only the loading methods, no command line
    assert loader.get_config_from_module_name(name)["seen"] is True
    assert gunicorn_conf._loaded_by_gunicorn() is False  # from anywhere else


def test_gunicorn_executes_a_configuration_file_through_its_loader(probe_module):
    _, path = probe_module
    loader = object.__new__(WSGIApplication)
    assert loader.get_config_from_filename(str(path))["seen"] is True


def test_gunicorn_takes_a_configurations_attributes_that_are_settings(probe_module):
    """``-c python:NAME`` and ``-c FILE`` go through those loaders; the names that are gunicorn settings are set."""
    name, path = probe_module
    path.write_text(path.read_text() + "workers = 5\nnot_a_setting = 1\n")
    for location, module in ((f"python:{name}", name), (str(path), "__config__")):
        loader = object.__new__(WSGIApplication)
        loader.cfg = Config()
        loader.load_config_from_module_name_or_filename(location)
        assert sys.modules[module].seen is True, location
        assert loader.cfg.workers == 5


def test_every_setting_bastion_gives_is_one_of_gunicorns():
    settings = {name: getattr(gunicorn_conf, name) for name in gunicorn_conf.FIXED}
    settings.update(ServerSettings.from_config(BastionConfig.from_dict({})).gunicorn())
    cfg = Config()
    for name, value in settings.items():
        assert name in cfg.settings, name
        cfg.set(name, value)  # gunicorn's own validation
    assert cfg.worker_class_str == "kernel.server.worker.BastionWorker"
    assert cfg.logger_class.__name__ == "BastionLogger"
    # The module's other public names are not gunicorn settings, which gunicorn would take too.
    others = {name for name in vars(gunicorn_conf) if not name.startswith("_")} - set(settings)
    assert not others & set(cfg.settings), others & set(cfg.settings)


# -- kernel/server/framing.py's length_framing reads the common head as gunicorn's parser does ----------------------

_CALL = (b"POST /api/get_all HTTP/1.1\r\nHost: alpha.localhost\r\nContent-Type: application/json\r\n"
         b"Authorization: Bastion-HMAC sid=\"x\", ts=\"1\", nonce=\"n\", mac=\"m\"\r\nContent-Length: 12\r\n\r\n")
FRAMING_HEADS = [
    _CALL,
    _CALL.replace(b"Content-Length: 12", b"content-length:\t0 "),
    _CALL.replace(b"Content-Length: 12", b"CONTENT-LENGTH: 2000000"),
    _CALL.replace(b"/api/get_all", b"http://alpha.localhost/api/get_all?x=1"),
    _CALL.replace(b"HTTP/1.1", b"HTTP/1.0"),
    _CALL.replace(b"Content-Length: 12", b"Content-Length: 12\r\nContent-Length: 12"),
    _CALL.replace(b"Content-Length: 12", b"Content-Length: 12\r\nTransfer-Encoding: chunked"),
    _CALL.replace(b"Content-Length: 12", b"Content-Length: 0x12"),
    _CALL.replace(b"Content-Length: 12", b"Content-Length: -1"),
    _CALL.replace(b"Content-Length: 12", b"Content-Length: 1 2"),
    _CALL.replace(b"Host: alpha.localhost", b"Host : alpha.localhost"),
    _CALL.replace(b"Host: alpha.localhost", b"Host: alpha\x00.localhost"),
    _CALL.replace(b"Host: alpha.localhost", b"Host: alpha.localhost\r\n folded"),
    _CALL.replace(b"Host: alpha.localhost", b"Expect: 100-continue"),
    _CALL.replace(b"POST", b"post"),
    _CALL.replace(b"POST /api/get_all", b"POST  /api/get_all"),
    _CALL.replace(b"HTTP/1.1", b"HTTP/2.0"),
    _CALL.replace(b"Content-Length: 12", b"".join(b"X-%d: 1\r\n" % n for n in range(120)) + b"Content-Length: 12"),
]


@pytest.mark.parametrize("head", FRAMING_HEADS, ids=range(len(FRAMING_HEADS)))
def test_the_worker_reads_a_common_heads_framing_as_gunicorns_parser_does(head):
    """Where :func:`length_framing` answers (it reads the common head of a call without a parse), gunicorn's parser
    reads the same head with the same end, the same Content-Length body, the same method and path; anything else
    it leaves to the parser."""
    from kernel.server.framing import length_framing

    body = b"{}" + b" " * 10
    framing = length_framing(head + body)
    try:
        request = Request(Config(), IterUnreader((head + body,)), ("127.0.0.1", 1), 1)
    except Exception:
        request = None
    if framing is None:
        return  # the parser's, as before
    assert request is not None, "the fast path read a head the parser refuses before its body"
    end, length, read = framing
    assert isinstance(request.body.reader, LengthReader) and request.body.reader.length == length
    assert end == len(head) and not request._expected_100_continue
    assert (read.method, read.path) == (request.method, request.path)


def test_the_fast_path_reads_the_common_call():
    from kernel.server.framing import length_framing

    assert length_framing(_CALL)[:2] == (len(_CALL), 12)
    assert [length_framing(head) is not None for head in FRAMING_HEADS[:5]] == [True] * 5
