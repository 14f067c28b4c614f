"""``bastion check --deploy``: the problems of a configuration meant for production, as Django's ``check --deploy``.

Each plugin names its own through the ``bastion_deploy_checks`` hook (the
kernel's are :func:`kernel_problems`, registered like a plugin's in
:mod:`kernel.defaults`): a :class:`Problem` is an error (the command exits
non-zero) or a warning (shown; an error with ``--fail-level warning``), with
an id that stays the same across versions, a message that names the setting,
and a hint.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from dataclasses import dataclass

from kernel.core.driver import PROBE_DOMAIN
from kernel.core.hosts import DEVELOPMENT_HOSTS
from kernel.core.plugins import call_per_plugin
from kernel.core.urls import StorageURL

ERROR = "error"
WARNING = "warning"

#: Where the server notes forwarding headers from peers it does not trust (written by :mod:`kernel.http.app`).
NOTES_DOMAIN = PROBE_DOMAIN
FORWARDED_NOTE = "note:forwarded"


@dataclass(frozen=True)
class Problem:
    """One problem of a production configuration: ``level`` is ``"error"`` or ``"warning"``; ``id`` such as
    ``bastion.E001`` (``W`` for a warning) never changes meaning; ``message`` names the setting; ``hint`` says
    what to do."""

    id: str
    message: str
    hint: str = ""
    level: str = ERROR

    @classmethod
    def error(cls, id: str, message: str, hint: str = "") -> Problem:
        """An error: the configuration must not serve production as it is."""
        return cls(id, message, hint, ERROR)

    @classmethod
    def warning(cls, id: str, message: str, hint: str = "") -> Problem:
        """A warning: worth a look, acceptable when meant."""
        return cls(id, message, hint, WARNING)


def is_loopback_host(host: str | None) -> bool:
    """Whether a URL's host is this machine (``localhost``, a loopback address, a unix socket's empty host)."""
    if not host:
        return True
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def storage_urls(config) -> list[tuple[str, StorageURL]]:
    """The configured storage URLs with the key that names them: ``storage``, and ``state`` when it is another."""
    settings = config.bastion
    urls = [("storage", StorageURL(settings.storage))]
    if settings.state and settings.state != settings.storage:
        urls.append(("state", StorageURL(settings.state)))
    return urls


def kernel_problems(config, runtime) -> list[Problem]:
    """The kernel's own problems: ``[bastion]``, ``[server]``, ``[metrics]``, and what the server noticed."""
    settings = config.bastion
    problems: list[Problem] = []
    if settings.development:
        problems.append(Problem.error(
            "bastion.E001", "[bastion] development = true: plain HTTP is accepted, 500 answers carry tracebacks, a demo "
            "user is created, workers reload on code changes", "set development = false"))
    if runtime is not None and runtime.process_local:
        problems.append(Problem.error(
            "bastion.E002", f"[bastion] storage = {StorageURL(settings.storage).redacted}: the data lives in one "
            "process's memory, is lost at every restart, and gunicorn runs a single worker",
            "use sqlite:///..., postgresql://... or redis://..."))
    if not settings.allowed_hosts:
        problems.append(Problem.error(
            "bastion.E003", "[bastion] allowed_hosts is not set: production mode refuses to start without it",
            "list the host names served, such as example.com, *.example.com"))
    elif "*" in settings.allowed_hosts:
        problems.append(Problem.error(
            "bastion.E004", "[bastion] allowed_hosts holds *: any Host header is a tenant (forged hosts, DNS rebinding)",
            "list the host names served"))
    else:
        local = [h for h in settings.allowed_hosts if h in DEVELOPMENT_HOSTS]
        if local:
            problems.append(Problem.warning(
                "bastion.W005", f"[bastion] allowed_hosts holds {', '.join(local)}: development tenants, served to "
                "whoever reaches the server with that Host", "remove them unless they are meant"))
    problems += _forwarded(settings, runtime)
    everyone = [str(n) for n in config.metrics.allow if n.prefixlen == 0]
    if everyone:
        problems.append(Problem.error(
            "bastion.E008", f"[metrics] allow holds {', '.join(everyone)}: anyone may read /metrics, and /healthz "
            "under any Host", "allow the Prometheus servers' addresses only"))
    if settings.log_level == "debug":
        problems.append(Problem.warning("bastion.W009", "[bastion] log_level = debug: every static file and probe is "
                                        "logged", "use info"))
    server = config.server
    if server.reload == "on":
        problems.append(Problem.warning("bastion.W010", "[server] reload = on: workers restart when code changes",
                                        "use auto (off in production)"))
    host = server.bind.rsplit(":", 1)[0] if not server.bind.startswith("unix:") else ""
    if host and not is_loopback_host(host) and not settings.trusted_proxies:
        problems.append(Problem.warning(
            "bastion.W011", f"[server] bind = {server.bind} and no [bastion] trusted_proxies: clients reach gunicorn "
            "directly, in plain HTTP, which production refuses (403 RequireSSL)",
            "serve behind a TLS-terminating proxy (nginx) on the loopback, and list it in trusted_proxies"))
    problems += _passwords_in_file(config)
    return problems


def _forwarded(settings, runtime) -> list[Problem]:
    """What the server noted of forwarding headers from peers that are not trusted proxies."""
    if runtime is None or runtime.process_local:
        return []
    try:
        note = runtime.state.get(NOTES_DOMAIN, FORWARDED_NOTE)
    except Exception:  # noqa: BLE001 - the storage check reports an unreachable storage
        return []
    if not isinstance(note, dict):
        return []
    headers = ", ".join(note.get("headers") or ["X-Forwarded-For"])
    peer = note.get("peer") or "?"
    if not settings.trusted_proxies:
        return [Problem.error(
            "bastion.E006", f"{headers} arrive (last from {peer}) and [bastion] trusted_proxies is empty: behind a "
            "proxy, every client has the proxy's address (one ban, one metrics allow list for all) and HTTPS is "
            "not seen (403 RequireSSL)", f"if {peer} is your proxy, add it to trusted_proxies")]
    return [Problem.warning(
        "bastion.W007", f"{headers} arrive from {peer}, which is not in [bastion] trusted_proxies: they are ignored",
        f"add {peer} to trusted_proxies if it is a proxy of yours; otherwise clients send them, and nothing is amiss")]


def _passwords_in_file(config) -> list[Problem]:
    """A storage URL whose password is written in the file, rather than taken from the environment."""
    if not config.path:
        return []
    written = []
    for key in ("storage", "state"):
        raw = config.parser.get("bastion", key, raw=True, fallback="") if config.parser.has_section("bastion") else ""
        if raw and "${" not in raw and StorageURL(raw).redacted != raw:
            written.append(key)
    if not written:
        return []
    try:
        readable = bool(os.stat(config.path).st_mode & (stat.S_IRGRP | stat.S_IROTH))
    except OSError:
        readable = False
    where = " (and the file is readable by other users)" if readable else ""
    return [Problem.warning(
        "bastion.W012", f"[bastion] {' and '.join(written)}: a password is written in {config.path}{where}",
        "write ${NAME} in the URL and pass the password in the environment variable NAME")]


def collect(config, runtime, pm) -> list[Problem]:
    """Every plugin's problems (and the kernel's), errors first, in the order the plugins gave them."""
    found: list[Problem] = []
    for result in call_per_plugin(pm, "bastion_deploy_checks", config.for_plugin, config=config, runtime=runtime):
        found.extend(result or [])
    return sorted(found, key=lambda p: p.level != ERROR)


__all__ = ["Problem", "ERROR", "WARNING", "kernel_problems", "collect", "is_loopback_host", "storage_urls"]
