"""Every hook of the Bastion kernel: the whole surface it offers to plugins.

A plugin implements any of these with ``@hookimpl`` (``from kernel import
hookimpl``), taking any subset of the listed arguments. Arguments may be added
to a spec in later versions; none is ever removed. The kernel passes every
argument by keyword, with the names the spec gives (``tests/test_hookspecs.py``
checks every call site).

Five lifecycle hooks (``bastion_configure``, ``bastion_check``,
``bastion_startup``, ``bastion_deploy_checks``, ``bastion_storage_driver``)
take ``settings``: the plugin's own :class:`kernel.PluginSettings` (the
sections it claims, and the mode), different for each plugin. The kernel
calls each implementation of those on its own
(:func:`kernel.core.plugins.call_per_plugin`) to hand it its own. They also
still take ``config``, the whole :class:`kernel.Config`, for plugins written
before ``settings`` existed; a new plugin reads only its ``settings``.

A plugin is a module registered through the ``bastion`` entry-point group.
State that belongs to one runtime (a connection, a cache, settings read from
the INI) lives in an object the module builds in ``bastion_configure`` and
registers with ``runtime.register(obj)``: its methods are hook implementations
too, called for that runtime only, and it is unregistered when the runtime
closes.

The annotations name the kernel's own types, imported only for the type
checker, so that importing this module stays cheap. Two types belong to layers
above the core (docs/architecture.md, "Layers"), which the core may not import
even for the type checker: ``bastion_routes``'s ``routes`` (a
:class:`kernel.Routes`) and ``app`` (a ``falcon.App``), and the
:class:`kernel.Problem` that ``bastion_deploy_checks`` returns, are ``Any``
here and named in the docstrings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from pathlib import Path

    from kernel.core.config import Config, PluginSettings
    from kernel.core.context import Request
    from kernel.core.driver import Driver
    from kernel.core.errors import BastionError
    from kernel.core.runtime import Runtime
    from kernel.core.signing import Authentication, Credentials
    from kernel.core.store import Errors, Record
    from kernel.core.urls import StorageURL

hookspec = pluggy.HookspecMarker("bastion")

#: Marks a plugin's hook implementations (re-exported as ``kernel.hookimpl``).
hookimpl = pluggy.HookimplMarker("bastion")

# ---------------------------------------------------------------------------
# Lifecycle
# ---------------------------------------------------------------------------


@hookspec
def bastion_configure(settings: PluginSettings, config: Config, runtime: Runtime) -> None:
    """Read and validate the plugin's own INI section, and register what the plugin keeps for this runtime.

    Called by the kernel once per runtime, before any driver is opened. A
    plugin claims its section with ``settings.section(name, schema)``, which
    checks every key and raises :class:`kernel.ConfigError` naming file,
    section and key on a bad or unknown one (a section another plugin
    claimed is a ConfigError naming both); it may build an object holding
    its state and register it with ``runtime.register(obj, name)`` (as pytest
    plugins register objects in ``pytest_configure``).

    Args:
        settings: This plugin's :class:`kernel.PluginSettings`: its sections, the mode.
        config: The whole :class:`kernel.Config` (for older plugins; prefer ``settings``).
        runtime: The :class:`kernel.Runtime` being built: its ``config``,
            ``clock`` and ``development`` are set; its drivers are not open yet.

    Returns:
        Nothing.
    """


@hookspec
def bastion_check(settings: PluginSettings, config: Config, runtime: Runtime) -> None:
    """Check the plugin's configuration against what the runtime assembled: its services and models.

    Called by the kernel once per runtime, at the end of building it: after
    every ``bastion_configure``, once the drivers are open and the models
    and services registered, before ``bastion_startup`` — so also in
    commands that never start the runtime (``bastion check``) and in the
    check gunicorn's master makes before any worker starts. A plugin whose
    section names services or models (``[permissions]`` names services)
    checks those names here, with ``runtime.services.names()`` and
    ``runtime.models``, and raises :class:`kernel.ConfigError` naming file,
    section and key for one that does not exist, which stops the start like
    any bad key.

    Args:
        settings: This plugin's :class:`kernel.PluginSettings`, as ``bastion_configure`` claimed them.
        config: The whole :class:`kernel.Config` (for older plugins; prefer ``settings``).
        runtime: The :class:`kernel.Runtime`, its drivers open and its models
            and services registered, not started.

    Returns:
        Nothing.
    """


@hookspec
def bastion_startup(runtime: Runtime, settings: PluginSettings, config: Config) -> None:
    """Bootstrap the plugin once the storage is open.

    Called by the kernel in every worker process after configuration, drivers,
    models and services are ready and before the first request (for example,
    the auth plugin creates the ``[users]`` accounts here).

    Args:
        runtime: The :class:`kernel.Runtime` being started.
        settings: This plugin's :class:`kernel.PluginSettings`.
        config: The whole :class:`kernel.Config` (for older plugins; prefer ``settings``).

    Returns:
        Nothing; raising stops the start.
    """


@hookspec
def bastion_shutdown(runtime: Runtime) -> None:
    """Release what ``bastion_startup`` acquired.

    Called by the kernel when the runtime closes (worker exit, end of a test
    or of a CLI command), before the objects registered for the runtime are
    unregistered.

    Args:
        runtime: The :class:`kernel.Runtime` closing.

    Returns:
        Nothing; errors are logged, not raised.
    """


@hookspec
def bastion_cli(subparsers: argparse._SubParsersAction, runtime_factory: Callable[[], Runtime]) -> None:
    """Add sub-commands to the ``bastion`` command line.

    Called by ``kernel.cli`` while it builds its argparse parser, before any
    configuration is read.

    Args:
        subparsers: The parser's sub-commands: add parsers with
            ``subparsers.add_parser(...)`` and set ``func`` on them as a
            callable taking the parsed arguments.
        runtime_factory: Opens a started :class:`kernel.Runtime` from the
            configuration (close it when done).

    Returns:
        Nothing.
    """


@hookspec
def bastion_deploy_checks(settings: PluginSettings, config: Config, runtime: Runtime | None) -> list[Any] | None:
    """Name the problems of this configuration for production: ``bastion check --deploy``.

    Called by ``kernel.cli`` once per ``bastion check --deploy``. Look at the
    plugin's own settings and URLs (argon2 below OWASP's floor is the auth
    plugin's, SQLite with several nodes in mind the SQL plugin's, a remote
    state URL without a password the storage plugins'). Never put a secret in
    a message.

    Args:
        settings: This plugin's :class:`kernel.PluginSettings` (``storage_urls``: the kernel's storage URLs by key).
        config: The whole :class:`kernel.Config` checked (for older plugins; prefer ``settings``).
        runtime: A :class:`kernel.Runtime` built from it (its drivers open,
            not started), after the storage answered; None when the storage
            does not answer (checks that read the storage skip then).

    Returns:
        A list of :class:`kernel.Problem` (``Problem.error(id, message,
        hint)``, ``Problem.warning(...)``; the operations layer's type, which
        the core does not import), or None for none.
    """


@hookspec
def bastion_tenant_settings(domain: str, runtime: Runtime) -> list[tuple[str, str, str]] | None:
    """Say which values of the plugin's settings apply to one tenant, and where each comes from.

    Called by ``kernel.cli`` for ``bastion check --tenant DOMAIN``, on a
    runtime built from the configuration (drivers open, not started). A
    plugin whose settings differ per tenant (the auth plugin's ``[auth]``,
    overridden by ``[auth:alpha.example.com]`` and ``[auth:*.example.com]``)
    resolves ``domain`` as a request for it would be, and names every value
    that applies. The kernel knows none of the keys: it prints the rows.

    Args:
        domain: The tenant: a normalized host name (lowercase, no port, no trailing dot).
        runtime: The :class:`kernel.Runtime` built from the configuration.

    Returns:
        Rows ``(key, value, source)``: the key as the file writes it, its
        value as the file would write it, and where it comes from (a section
        such as ``[auth:alpha.example.com]``, or ``default``); or None when
        nothing of the plugin depends on the tenant.
    """


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------


@hookspec
def bastion_routes(routes: Any, app: Any, runtime: Runtime) -> None:
    """Add routes to the application.

    Called by :func:`kernel.http.app.create_app` once, after the kernel's own
    routes (``/api/{service}``, ``/healthz``) exist. A protected route gets
    the checks of docs/protocol.md section 4 before the handler runs (the
    pipeline's steps 2 to 5, step 3 through ``bastion_admit``); a signed one
    also steps 6 to 10 (7 to 10 through ``bastion_authenticate``), so that
    the handler finds ``request.session`` set. The auth plugin adds
    ``/auth/login`` (protected) and ``/auth/logout`` (protected and signed)
    here.

    Args:
        routes: A :class:`kernel.Routes` (of the HTTP layer, which the core
            does not import): ``routes.post(path, handler, protected=...,
            signed=...)`` and ``routes.get(path, handler)`` serve a function
            that takes the current :class:`kernel.Request` (and the path's
            fields) and returns a JSON value; it may raise any
            :class:`kernel.BastionError`, which the kernel's single error
            handler answers.
        app: The ``falcon.App``, for a plugin that needs Falcon itself (a
            Falcon resource whose class says ``protected = True`` or
            ``signed = True`` gets the same checks).
        runtime: The started :class:`kernel.Runtime` the application serves.

    Returns:
        Nothing.
    """


@hookspec
def bastion_static() -> list[tuple[str, str | Path]] | None:
    """Return static directories to serve, as ``(url_prefix, directory)`` pairs.

    Called by :func:`kernel.http.app.create_app` once. Files are served with
    content types, ETag and Last-Modified, ``index.html`` for folders, and
    never outside ``directory``. A directory named in ``[bastion] static``
    comes first at ``/``.

    Returns:
        A list of ``(url_prefix, directory)`` pairs, or None for none.
    """


# ---------------------------------------------------------------------------
# Auth
# ---------------------------------------------------------------------------


@hookspec
def bastion_admit(request: Request, credentials: Credentials | None, runtime: Runtime) -> Any:
    """Refuse a request to a protected route from an origin that may not be served: the pipeline's ``ban`` step.

    Called by the kernel at step 3 of docs/protocol.md section 4 for every
    request to a protected route, before its body is checked (steps 4 and
    5). Raise a :class:`kernel.BastionError` (the auth plugin raises Abusive
    for a banned origin) to refuse.

    Args:
        request: The :class:`kernel.Request`.
        credentials: For a ``POST`` to a signed route, the
            :class:`kernel.Credentials` parsed from its ``Authorization``
            header; None otherwise, or when the header is missing or
            malformed (step 6 refuses those).
        runtime: The :class:`kernel.Runtime` serving the request.

    Returns:
        None, or a value the kernel hands unchanged to
        ``bastion_authenticate`` as one of its ``admissions`` (the auth
        plugin reads the session together with the ban, in one round trip to
        the state store, and hands it on).
    """


@hookspec(firstresult=True)
def bastion_authenticate(request: Request, credentials: Credentials | None, service: str | None,
                         admissions: list[Any], runtime: Runtime) -> Authentication | Any | None:
    """Verify a signed call: steps 7 to 10 of docs/protocol.md section 4, the pipeline's ``authenticate`` step.

    Called by the kernel for every ``POST`` to a signed route
    (``/api/{service}``, ``/auth/logout``) that passed steps 1 to 6: the
    whole body has arrived, so that every check of stored state holds at
    the moment the call runs. Raise the protocol error of the first step
    that fails before the MAC verified; from then on every answer is signed.
    The kernel alone writes the session onto the request and signs the
    answers with the key returned.

    Args:
        request: The :class:`kernel.Request`, its body read whole.
        credentials: The :class:`kernel.Credentials` the kernel parsed from
            the ``Authorization`` header, or None when it is missing or
            malformed (the auth plugin then answers 401 Unauthorized).
        service: The service name, or None for a route that is not a service.
        admissions: The values ``bastion_admit`` returned for this request
            (possibly empty).
        runtime: The :class:`kernel.Runtime` serving the request.

    Returns:
        ``Authentication(session, key)`` on success (with ``expires=``, when
        the session now ends: the answer's ``Session-Expires``), or
        ``Authentication(session, key, refusal=error)`` to refuse with a
        signed answer (StaleCall, ReplayedCall). An authenticator that signs
        nothing may return the session itself. None from every plugin means
        no authenticator is installed, and the kernel answers 401
        Unauthorized. Stops at the first non-None result.
    """


@hookspec
def bastion_has_permission(session: Any, service: str, request: Request) -> bool | None:
    """Say whether the session may call the service.

    Called by the kernel at step 12 of docs/protocol.md section 4 for every
    signed call that passed steps 1 to 10. The default authorization is the
    ``permissions`` plugin (its ``[permissions]`` section: a service listed
    there is open only to the roles it names); any plugin may deny beside
    it, or replace it (``BASTION_LOAD_PLUGINS`` without ``permissions``).

    Args:
        session: The authenticated session.
        service: The service name (which may not exist: step 13 comes after).
        request: The :class:`kernel.Request`, whose ``user`` and ``roles``
            say who calls.

    Returns:
        False to deny (403 Forbidden), True or None to allow. Any False
        denies; an exception fails the call (500), so nothing runs.
    """


@hookspec
def bastion_refused(request: Request, error: BastionError, runtime: Runtime) -> None:
    """Observe a refused request to a protected route (``/api/*``, ``/auth/*``).

    Called by the pipeline's ``account`` step, once the answer is ready, for
    every protocol error answered on those routes (not the 500s); the auth
    plugin weighs abuse here.

    Args:
        request: The :class:`kernel.Request` refused.
        error: The :class:`kernel.BastionError` answered.
        runtime: The :class:`kernel.Runtime` serving the request.

    Returns:
        Nothing; an exception is logged and does not change the answer.
    """


# ---------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def bastion_storage_driver(url: StorageURL, settings: PluginSettings, config: Config,
                           clock: Callable[[], float]) -> Driver | None:
    """Open a storage driver for a URL whose scheme the plugin owns.

    Called by the kernel when a runtime opens, for ``[bastion] storage`` and
    ``[bastion] state``.

    Args:
        url: The :class:`kernel.StorageURL`.
        settings: This plugin's :class:`kernel.PluginSettings` (its options, the mode).
        config: The whole :class:`kernel.Config` (for older plugins; prefer ``settings``).
        clock: A callable returning Unix seconds, which every time-to-live
            must follow.

    Returns:
        An object implementing :class:`kernel.Driver`, or None when the
        scheme is not the plugin's. Stops at the first non-None result.
    """


@hookspec
def bastion_models() -> list[type] | None:
    """Return the model classes the plugin defines.

    Called by the kernel once per runtime. A model is a class with the
    classmethods ``initialize(record)``, ``validate(record)``,
    ``index(record)`` and ``to_dict(record)`` (see docs/storage.md; the fields
    ``initialize`` sets are the model's fields), and optionally ``history =
    True`` (every committed version kept, at most ``history_limit``; a
    removed record's until ``history_keep_removed`` more are removed).

    Returns:
        A list of classes, or None for none.
    """


@hookspec
def bastion_validate(model: type, record: Record, errors: Errors) -> None:
    """Add cross-cutting validation errors for a record about to be saved.

    Called by the storage unit of work for every inserted or updated record,
    after the model's own ``validate``. Any entry in ``errors`` makes the
    unit of work fail with 422 ValidationError.

    Args:
        model: The model class.
        record: The :class:`kernel.Record` about to be saved.
        errors: The auto-vivifying :class:`kernel.Errors`
            (``errors.text.invalid = value``).

    Returns:
        Nothing.
    """


# ---------------------------------------------------------------------------
# Services
# ---------------------------------------------------------------------------


@hookspec
def bastion_services() -> list[Callable[..., Any]] | None:
    """Return the plugin's service functions.

    Called by the kernel once per runtime. Each function is decorated with
    :func:`kernel.service` and becomes callable as ``POST /api/<name>``.

    Returns:
        A list of functions, or None for none.
    """


def hook_names() -> list[str]:
    """Return the names of every hook specified here."""
    return sorted(name for name, value in globals().items() if name.startswith("bastion_") and callable(value))


__all__ = ["hookspec", "hookimpl", "hook_names"]
