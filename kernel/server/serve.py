"""``bastion serve``: gunicorn run as a library, with the settings of :mod:`kernel.server.gunicorn_conf`.

``bastion [--config FILE] serve`` is ``gunicorn -c python:kernel.server.gunicorn_conf kernel.wsgi:app``
without gunicorn's command line: the configuration file is ``--config``, else ``$BASTION_CONFIG``,
else ``./bastion.ini`` (else the defaults), from any working directory, in production as in
development. Its path is made absolute and put in ``$BASTION_CONFIG`` before anything reads it, so the
master (the ``[server]`` section, read once and handed to the workers: :mod:`kernel.server.settings`) and
every worker's application (:mod:`kernel.wsgi`) read the same file, and a worker that gunicorn starts again
later still finds it.

The process stays gunicorn's master (the same pid: a service manager's main process). It never
imports a plugin: the command is dispatched before the CLI loads the plugins' commands, and the
packaged settings open the runtime in a short-lived child. So workers import the plugins
themselves, and a development reload sees new plugin code.

The master binds the ``[server] bind`` addresses itself, once, first (:func:`listen`): an address that cannot be
had (already in use, not this machine's) stops the start at once with one line naming it and the key, before the
storage is opened or gunicorn makes anything (its metrics folder), instead of gunicorn's five attempts a second
apart and its messages. gunicorn then serves on those sockets as on its own. Sockets handed over by systemd or by
a master being replaced (``USR2``) are left to gunicorn.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gunicorn import sock, systemd
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.config import Config as GunicornConfig

from kernel.core.config import Config, load_config
from kernel.core.errors import ConfigError

#: The module of gunicorn's settings (``gunicorn -c python:kernel.server.gunicorn_conf``); ``gunicorn_settings()`` reads them.
SETTINGS_MODULE = "kernel.server.gunicorn_conf"
#: The WSGI application every worker loads.
APP = "kernel.wsgi:app"


def config_path(explicit: str | None, environ=os.environ) -> Path | None:
    """The configuration file ``bastion serve`` runs with: ``explicit``, ``$BASTION_CONFIG``, ``./bastion.ini``, or None."""
    chosen = explicit or environ.get("BASTION_CONFIG") or ("bastion.ini" if Path("bastion.ini").is_file() else None)
    return Path(chosen).resolve() if chosen else None


class BastionApplication(BaseApplication):
    """gunicorn's application: the settings of :data:`SETTINGS_MODULE`, the app of :mod:`kernel.wsgi`.

    ``listeners``: the sockets :func:`listen` bound for the addresses of ``[server] bind``, served by the master.
    """

    def __init__(self, listeners: Sequence = ()):
        self.listeners = list(listeners)
        super().__init__(usage="bastion serve", prog="bastion serve")

    def load_config(self) -> None:
        """Read the packaged settings: the configuration file, read here in the master (again on a SIGHUP reload)."""
        settings = importlib.import_module(SETTINGS_MODULE).gunicorn_settings()
        for name, value in settings.items():
            self.cfg.set(name.lower(), value)
        self.cfg.set("default_proc_name", APP)

    def load(self):
        """Build the application in the worker (never in the master): :mod:`kernel.wsgi`."""
        # By name, as plain gunicorn loads it (``gunicorn kernel.wsgi:app``): the WSGI entry point is the module
        # that puts the layers together, above this one.
        from gunicorn.util import import_app

        return import_app(APP)

    def run(self) -> None:
        """Run gunicorn's master until it stops, on :attr:`listeners` (when they are its addresses: the file could
        have changed since they were bound; else it binds its own)."""
        arbiter = Arbiter(self)
        if self.listeners and [listener.cfg_addr for listener in self.listeners] == self.cfg.address:
            arbiter.LISTENERS = self.listeners
        else:
            sock.close_sockets(self.listeners)
        try:
            arbiter.run()
        except RuntimeError as exc:  # as gunicorn's own run() reports it
            sys.exit(f"\nError: {exc}\n")


class CannotListen(Exception):
    """An address of ``[server] bind`` cannot be listened on: the server does not start (the message is one line)."""


def listen(config: Config) -> list:
    """gunicorn's listening sockets for the addresses of ``config``'s ``[server] bind``, each bound once; [] when
    gunicorn is to find its own (sockets inherited from systemd or from the master it replaces, ``fd://``).

    Raises :class:`CannotListen`, having closed those already bound, when an address cannot be had.
    """
    settings = GunicornConfig()
    settings.set("bind", [config.server.bind])
    inherited = systemd.listen_fds(unset_environment=False) or "GUNICORN_FD" in os.environ
    if inherited or any(isinstance(address, int) for address in settings.address):
        return []
    listeners: list = []
    for address in settings.address:
        try:
            listeners.append(sock._sock_type(address)(address, settings, logging.getLogger("gunicorn.error")))
        except OSError as exc:
            sock.close_sockets(listeners)
            raise CannotListen(_cannot_listen(address, exc, config.label)) from None
    return listeners


def _cannot_listen(address, exc: OSError, label: str) -> str:
    """The line that says which address cannot be listened on, why, and which key of which file names it."""
    if isinstance(address, tuple):
        host = f"[{address[0]}]" if ":" in address[0] else address[0]  # an IPv6 address in brackets
        where = f"{host}:{address[1]}"
    else:
        where = f"unix:{address}"
    reason = (exc.strerror or str(exc)).lower()
    return f"cannot listen on {where}: {reason}; stop what uses it, or set another address in [server] bind ({label})"


HELP = "run the server: gunicorn with the [server] settings of the configuration file"
DESCRIPTION = ("Run Bastion under gunicorn with the [server] settings of the configuration file (--config, "
               "else $BASTION_CONFIG, else ./bastion.ini), in the mode its [bastion] development says.")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``serve`` to the ``bastion`` command's sub-commands (for ``bastion --help``)."""
    return subparsers.add_parser("serve", help=HELP, description=DESCRIPTION)


def main(argv: Sequence[str], explicit_config: str | None) -> int:
    """Run ``bastion serve`` (``argv``: what follows ``serve``) until gunicorn stops; return the exit status."""
    argparse.ArgumentParser(prog="bastion serve", description=DESCRIPTION).parse_args(list(argv))  # --help; no stray argument
    path = config_path(explicit_config)
    if path is not None:
        if not path.is_file():
            print(f"bastion: {path}: cannot read configuration: no such file", file=sys.stderr)
            return 1
        os.environ["BASTION_CONFIG"] = str(path)
    else:
        os.environ.pop("BASTION_CONFIG", None)
    try:
        listeners = listen(load_config())  # before anything is opened or made: a taken address stops at once
    except (ConfigError, CannotListen) as exc:
        print(f"bastion: {exc}", file=sys.stderr)
        return 1
    BastionApplication(listeners).run()  # exits through sys.exit when gunicorn stops
    return 0
