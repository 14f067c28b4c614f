"""Bastion storage on SQL databases through SQLAlchemy 2: ``sqlite:///`` and ``postgresql://``.

Records, their index entries and the auth plugin's short-lived state live in
four tables created by Alembic revisions shipped in this package. In
development mode the driver creates or upgrades them when it opens; in
production ``bastion initdb`` does, and the driver refuses an old schema.
See docs/storage-sql.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bastion_storage_sql import cli, deploy
from bastion_storage_sql import settings as options
from bastion_storage_sql.driver import SqlDriver
from bastion_storage_sql.engine import is_sql_url
from kernel import PluginSettings, Problem, StorageURL, hookimpl

__all__ = ["SqlDriver"]


@hookimpl
def bastion_configure(settings: PluginSettings) -> None:
    """Claim and check the ``[storage_sql]`` section."""
    options.read(settings)


@hookimpl
def bastion_storage_driver(url: StorageURL, settings: PluginSettings | None,
                           clock: Callable[[], float] | None) -> SqlDriver | None:
    """Open a :class:`SqlDriver` for sqlite and postgresql URLs, else return None."""
    if not is_sql_url(url):
        return None
    development = settings.development if settings is not None else False
    return SqlDriver(url, clock=clock or time.time, options=options.read(settings),
                     schema="upgrade" if development else "check")


@hookimpl
def bastion_deploy_checks(settings: PluginSettings) -> list[Problem]:
    """SQLite with several nodes in mind, PostgreSQL over the network without a password or verified TLS."""
    return deploy.problems(settings.storage_urls)


@hookimpl
def bastion_cli(subparsers):
    """Add ``bastion initdb``."""
    cli.add_commands(subparsers)
