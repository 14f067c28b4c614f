"""Fixtures for the todo plugin's tests: an in-process app, and a caller of its services."""

from __future__ import annotations

import contextlib
import importlib.util
import re
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from kernel import BastionError
from kernel.testing import import_or_skip, skip_or_fail

# The test modules import ui_helpers.py, beside this file (pytest imports them with --import-mode=importlib).
sys.path.insert(0, str(Path(__file__).parent))


class Caller:
    """Calls the todo services as a request of one domain would, through the kernel's binding."""

    def __init__(self, runtime, domain: str):
        self.runtime = runtime
        self.domain = domain

    def __call__(self, name: str, *args, **kwargs):
        """Return the service's result; a protocol error propagates."""
        service = self.runtime.services.get(name)
        assert service is not None, f"no service {name!r}"
        with self.runtime.bind(self.domain):
            return service(list(args), kwargs)

    def error(self, name: str, *args, **kwargs) -> BastionError:
        """Return the protocol error the call raises (and fail if it succeeds)."""
        with pytest.raises(BastionError) as info:
            self(name, *args, **kwargs)
        return info.value


@pytest.fixture
def app(make_app):
    """An in-process app with only the in-memory storage and the todo plugin."""
    return make_app(only=["storage_mem", "todo"])


@pytest.fixture
def call(app) -> Caller:
    """Call services on ``localhost``."""
    return Caller(app.runtime, "localhost")


@pytest.fixture
def caller(app):
    """Make callers for other domains: ``caller("alpha.localhost")``."""
    return lambda domain: Caller(app.runtime, domain)


# -- a live server and a browser ------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the signature is the base class's
        pass


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


@contextlib.contextmanager
def serve_in_thread(wsgi_app) -> Iterator[int]:
    """Serve a WSGI app on 127.0.0.1 from a thread; yield its port."""
    server = make_server("127.0.0.1", 0, wsgi_app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="bastion-test-server", daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def live_url(make_app) -> Iterator[str]:
    """An in-process app (storage_mem, todo) served over HTTP on 127.0.0.1, as http://localhost:port."""
    import time

    app = make_app(only=["storage_mem", "todo"], clock=time.time)
    with serve_in_thread(app) as port:
        yield f"http://localhost:{port}"


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium, driven by Playwright."""
    sync_api = import_or_skip("playwright.sync_api", "Playwright is not installed (make test installs it)")
    if not Path(CHROMIUM).exists():
        skip_or_fail(f"{CHROMIUM} is not installed (Debian: apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def launch_chromium(browser):
    """Launch another Chromium with extra command-line flags (closed after the test)."""
    launched = []

    def launch(*flags: str):
        other = browser.browser_type.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *flags])
        launched.append(other)
        return other

    yield launch
    for other in launched:
        other.close()


@pytest.fixture
def serve():
    """``serve(wsgi_app)``: a context manager serving the app on 127.0.0.1; it yields the port."""
    return serve_in_thread


class PageErrors:
    """Collects every JavaScript error, console error and console warning of the pages it watches.

    Chromium's advice on the page's markup (the ``[DOM]`` messages, such as a
    password form without a username field) counts as a warning, whatever
    level Chromium logs it at.
    """

    # The browser logs every non-2xx fetch as a console error; the tests provoke those on purpose.
    NETWORK_LOG = re.compile(r"^Failed to load resource: the server responded with a status of (\d+)")

    def __init__(self, expected_statuses: Iterable[int] = ()):
        self.errors: list[str] = []
        self.expected_statuses = set(expected_statuses)

    def watch(self, page):
        page.on("pageerror", lambda exc: self.errors.append(f"{page.url}: page error: {exc}"))
        page.on("console", lambda msg: self._console(page, msg))
        return page

    def expect_statuses(self, *statuses: int) -> None:
        """Allow the browser's network log of these HTTP statuses."""
        self.expected_statuses.update(statuses)

    def _console(self, page, msg):
        if msg.type not in ("error", "warning") and not msg.text.startswith("[DOM]"):
            return
        network = self.NETWORK_LOG.match(msg.text)
        if network and int(network.group(1)) in self.expected_statuses:
            return
        self.errors.append(f"{page.url}: console {msg.type}: {msg.text}")


@pytest.fixture
def page_errors() -> Iterator[PageErrors]:
    """Fails the test if any watched page has a JavaScript or console error."""
    errors = PageErrors()
    yield errors
    assert errors.errors == []


@pytest.fixture
def context(browser, page_errors):
    """A fresh browser context whose new pages are watched for errors."""
    ctx = browser.new_context(viewport={"width": 900, "height": 800})
    ctx.on("page", page_errors.watch)
    ctx.set_default_timeout(10_000)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context):
    """A watched page."""
    return context.new_page()


# -- real gunicorn with the auth plugin ---------------------------------------

PASSWORD = "correct horse battery"
#: Users of the end-to-end tests: username@domain.
USERS = ("alice@localhost", "alice@alpha.localhost", "bob@beta.localhost")


@pytest.fixture(scope="session")
def password_hash() -> str:
    """A cheap argon2id hash of PASSWORD (the server is told to use the same cheap parameters)."""
    argon2 = import_or_skip("passlib.hash").argon2
    return argon2.using(type="ID", memory_cost=64, rounds=1).hash(PASSWORD)


def todo_sections(password_hash: str, storage="mem://", users=(), roles=None, permissions=None, **auth):
    """The sections and the plugins of a todo server: see :func:`todo_server`."""
    sections = {
        "bastion": {"development": True, "storage": storage},
        "auth": {"argon2_memory_cost": 64, "argon2_time_cost": 1, **auth},
        "users": {user: password_hash for user in (*USERS, *users)},
    }
    plugins = ["storage_mem" if storage == "mem://" else "storage_sql", "auth", "todo"]
    if roles:
        sections["roles"] = roles
    if permissions:
        sections["permissions"] = permissions
        plugins.append("permissions")
    return sections, plugins


@pytest.fixture
def todo_gunicorn(password_hash, gunicorn_server):
    """Like :func:`todo_server`, but returns the server (its port, and its configuration file beside its log)."""
    if importlib.util.find_spec("bastion_auth") is None:
        skip_or_fail("the auth plugin is not installed")

    def start(**settings):
        sections, plugins = todo_sections(password_hash, **settings)
        return gunicorn_server(sections, env={"BASTION_LOAD_PLUGINS": ",".join(plugins)})

    return start


@pytest.fixture
def todo_server(todo_gunicorn):
    """Start gunicorn (storage_mem, auth, todo) with USERS: ``todo_server(**auth_settings)`` returns its port.

    ``todo_server(storage="sqlite:///...")`` serves that database with storage_sql instead;
    ``users=("bob@localhost",)`` adds users (with the same password), ``roles={"alice@localhost": "auditor"}``
    gives roles, and ``permissions={"history": "auditor"}`` loads the permissions plugin with those rules.

    The servers stop after the test (the ``gunicorn_server`` fixture of kernel.testing).
    """
    return lambda **settings: todo_gunicorn(**settings).port
