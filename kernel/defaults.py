"""The kernel's own hook implementations, registered like any plugin."""

from __future__ import annotations

from pathlib import Path

from kernel import hookimpl
from kernel.config import BASTION_SCHEMA, SERVER_SCHEMA

STATIC_DIR = Path(__file__).parent / "static"


def _check_user_key(key: str) -> None:
    user, sep, domain = key.rpartition("@")
    if not sep or not user or not domain:
        raise ValueError("expected username@domain")


@hookimpl
def bastion_configure(config):
    """Claim the kernel's sections: ``[bastion]``, ``[server]`` and ``[users]``."""
    config.section("bastion", BASTION_SCHEMA)
    config.section("server", SERVER_SCHEMA)
    config.raw_section("users", _check_user_key)


@hookimpl
def bastion_static():
    """Serve the browser client at ``/bastion/``."""
    return [("/bastion", str(STATIC_DIR))]
