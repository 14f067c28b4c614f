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
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gunicorn.app.base import BaseApplication

#: The module of gunicorn's settings (``gunicorn -c python:kernel.server.gunicorn_conf``); ``gunicorn_settings()`` reads them.
SETTINGS_MODULE = "kernel.server.gunicorn_conf"
#: The WSGI application every worker loads.
APP = "kernel.wsgi:app"


def config_path(explicit: str | None, environ=os.environ) -> Path | None:
    """The configuration file ``bastion serve`` runs with: ``explicit``, ``$BASTION_CONFIG``, ``./bastion.ini``, or None."""
    chosen = explicit or environ.get("BASTION_CONFIG") or ("bastion.ini" if Path("bastion.ini").is_file() else None)
    return Path(chosen).resolve() if chosen else None


class BastionApplication(BaseApplication):
    """gunicorn's application: the settings of :data:`SETTINGS_MODULE`, the app of :mod:`kernel.wsgi`."""

    def __init__(self):
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
    BastionApplication().run()  # exits through sys.exit when gunicorn stops
    return 0
