"""The kernel's own hook implementations, registered like any plugin."""

from __future__ import annotations

from pathlib import Path

from kernel.config import BASTION_SCHEMA, SERVER_SCHEMA
from kernel.hookspecs import hookimpl

STATIC_DIR = Path(__file__).parent / "static"


@hookimpl
def bastion_configure(config):
    """Claim the kernel's sections: ``[bastion]`` and ``[server]``."""
    config.section("bastion", BASTION_SCHEMA)
    config.section("server", SERVER_SCHEMA)


@hookimpl
def bastion_static():
    """Serve the browser client at ``/bastion/``."""
    return [("/bastion", str(STATIC_DIR))]
