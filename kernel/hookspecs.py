"""Every hook of the Bastion kernel: the whole surface it offers to plugins.

A plugin implements any of these with ``@hookimpl`` (``from kernel import
hookimpl``), taking any subset of the listed arguments. Arguments may be added
to a spec in later versions; none is ever removed.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("bastion")

# ---------------------------------------------------------------------------
# Lifecycle
# ---------------------------------------------------------------------------


@hookspec
def bastion_configure(config):
    """Read and validate the plugin's own INI section at start-up.

    Called by the kernel once per process, before any driver is opened, with
    the :class:`kernel.config.Config`. A plugin claims its section with
    ``config.section(name, schema)``, which checks every key and raises
    :class:`kernel.errors.ConfigError` naming file, section and key on a bad
    or unknown one. Returns nothing.
    """


@hookspec
def bastion_startup(runtime, config):
    """Bootstrap the plugin once the storage is open.

    Called by the kernel in every worker process after configuration, drivers,
    models and services are ready and before the first request (for example,
    the auth plugin creates the ``[users]`` accounts here). ``runtime`` is the
    :class:`kernel.runtime.Runtime`. Returns nothing; raising stops the start.
    """


@hookspec
def bastion_shutdown(runtime):
    """Release what ``bastion_startup`` acquired.

    Called by the kernel when the runtime closes (worker exit, end of a test
    or of a CLI command). Returns nothing; errors are logged, not raised.
    """


@hookspec
def bastion_cli(subparsers, runtime_factory):
    """Add sub-commands to the ``bastion`` command line.

    Called by ``kernel.cli`` while it builds its argparse parser. Add parsers
    with ``subparsers.add_parser(...)`` and set ``func`` on them as a callable
    taking the parsed arguments; ``runtime_factory()`` opens a
    :class:`kernel.runtime.Runtime` from the configuration. Returns nothing.
    """


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------


@hookspec
def bastion_routes(app, config, runtime):
    """Add Falcon routes to the application.

    Called by :func:`kernel.app.create_app` once, after the kernel's own
    routes (``/api/{service}``, ``/healthz``) exist; ``app`` is the
    ``falcon.App``. Resources raise :mod:`kernel.errors` exceptions, which the
    kernel's single error handler turns into PROTOCOL.md bodies. A resource
    whose class says ``protected = True`` gets the checks of PROTOCOL.md
    section 4 before its responder runs (steps 2 to 5, and step 3 through
    ``bastion_admit``); ``signed = True`` adds steps 6 to 10 through
    ``bastion_authenticate``, so that the responder finds ``request.session``
    set. The auth plugin adds ``/auth/login`` (protected) and
    ``/auth/logout`` (protected and signed) here. Returns nothing.
    """


@hookspec
def bastion_static():
    """Return static directories to serve, as ``(url_prefix, directory)`` pairs.

    Called by :func:`kernel.app.create_app` once. Files are served with
    content types, ETag and Last-Modified, ``index.html`` for folders, and
    never outside ``directory``. A directory named in ``[bastion] static``
    comes first at ``/``. Returns a list of pairs, or None for none.
    """


# ---------------------------------------------------------------------------
# Auth
# ---------------------------------------------------------------------------


@hookspec
def bastion_admit(request):
    """Refuse a request to a protected route from an origin that may not be served.

    Called by the kernel at step 3 of PROTOCOL.md section 4 for every request
    to a protected route that is not a signed call (``/auth/login``), and for
    a signed call refused at step 4 or 5 (so that a banned origin learns
    nothing more), with the :class:`kernel.context.Request`. The body is read
    when the request passed steps 4 and 5. Raise a
    :class:`kernel.errors.BastionError` (the auth plugin raises Abusive for a
    banned origin) to refuse. Returns nothing.
    """


@hookspec(firstresult=True)
def bastion_authenticate(request, service):
    """Verify a signed call and return its session.

    Called by the kernel for every ``POST`` to a signed route
    (``/api/{service}``, ``/auth/logout``) once the whole body has arrived, so
    that every check of state holds at the moment the call runs, with the
    :class:`kernel.context.Request` and the service name (None for a route that
    is not a service). Performs step 3 and steps 6 to 10 of PROTOCOL.md section
    4, raising the protocol error of the first that fails; sets
    ``request.signer`` as soon as the MAC verified so that every later answer
    is signed. Returns the session (an object with at least ``username``),
    which the kernel stores as ``request.session``.
    None from every plugin means no authenticator is installed, and the
    kernel answers 401 Unauthorized.
    Stops at the first non-None result.
    """


@hookspec
def bastion_has_permission(session, service):
    """Say whether the session may call the service.

    Called by the kernel at step 11 of PROTOCOL.md section 4, with the
    session returned by ``bastion_authenticate`` and the service name (which
    may not exist). Return False to deny (403 Forbidden), True or None to
    allow. Any False denies.
    """


@hookspec
def bastion_refused(request, error):
    """Observe a refused request to a protected route (``/api/*``, ``/auth/*``).

    Called by the kernel's error handler for every protocol error it answers
    on those paths, with the :class:`kernel.context.Request` and the
    :class:`kernel.errors.BastionError`; the auth plugin weighs abuse here.
    Returns nothing; an exception is logged and does not change the answer.
    """


# ---------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def bastion_storage_driver(url, config, clock):
    """Open a storage driver for a URL whose scheme the plugin owns.

    Called by the kernel at start-up for ``[bastion] storage`` and
    ``[bastion] state`` with the URL string, the :class:`kernel.config.Config`
    and the clock (a callable returning Unix seconds) every time-to-live must
    follow. Returns an object implementing :class:`kernel.driver.Driver`, or
    None when the scheme is not the plugin's.
    Stops at the first non-None result.
    """


@hookspec
def bastion_models():
    """Return the model classes the plugin defines.

    Called by the kernel once at start-up. A model is a class with the
    classmethods ``initialize(record)``, ``validate(record)``,
    ``index(record)`` and ``to_dict(record)`` (see :mod:`kernel.store`).
    Returns a list of classes, or None for none.
    """


@hookspec
def bastion_validate(model, record, errors):
    """Add cross-cutting validation errors for a record about to be saved.

    Called by the storage unit of work for every inserted or updated record,
    after the model's own ``validate``, with the model class, the
    :class:`kernel.store.Record` and the auto-vivifying
    :class:`kernel.store.Errors` (``errors.text.invalid = value``). Any entry
    makes the unit of work fail with 422 ValidationError. Returns nothing.
    """


# ---------------------------------------------------------------------------
# Services
# ---------------------------------------------------------------------------


@hookspec
def bastion_services():
    """Return the plugin's service functions.

    Called by the kernel once at start-up. Each function is decorated with
    :func:`kernel.services.service` and becomes callable as
    ``POST /api/<name>``. Returns a list of functions, or None for none.
    """


def hook_names() -> list[str]:
    """Return the names of every hook specified here."""
    return sorted(name for name, value in globals().items() if name.startswith("bastion_") and callable(value))


__all__ = ["hookspec", "hook_names"]
