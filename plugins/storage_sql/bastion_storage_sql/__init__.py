"""Bastion storage on SQL databases through SQLAlchemy 2: ``sqlite:///`` and ``postgresql://``.

Records, their index entries and the auth plugin's short-lived state live in
four tables created by Alembic revisions shipped in this package. In
development mode the driver creates or upgrades them when it opens; in
production ``bastion initdb`` does, and the driver refuses an old schema.
See docs/storage-sql.md.
"""

from __future__ import annotations

import time

from bastion_storage_sql import cli, deploy, settings
from bastion_storage_sql.driver import SqlDriver
from bastion_storage_sql.engine import is_sql_url
from kernel import hookimpl

__all__ = ["SqlDriver"]


@hookimpl
def bastion_configure(config):
    """Claim and check the ``[storage_sql]`` section."""
    settings.read(config)


@hookimpl
def bastion_storage_driver(url, config, clock):
    """Open a :class:`SqlDriver` for sqlite and postgresql URLs, else return None."""
    if not is_sql_url(url):
        return None
    development = config.bastion.development if config is not None else False
    return SqlDriver(url, clock=clock or time.time, options=settings.read(config),
                     schema="upgrade" if development else "check")


@hookimpl
def bastion_deploy_checks(config):
    """SQLite with several nodes in mind, PostgreSQL over the network without a password or verified TLS."""
    return deploy.problems(config)


@hookimpl
def bastion_cli(subparsers):
    """Add ``bastion initdb``."""
    cli.add_commands(subparsers)
