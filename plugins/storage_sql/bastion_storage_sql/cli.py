"""``bastion initdb``: create or upgrade the schema of every configured SQL storage."""

from __future__ import annotations

import argparse

from bastion_storage_sql import migrate, settings
from bastion_storage_sql.engine import create_engine, is_sql_url, redact
from kernel import load_config


def add_commands(subparsers) -> None:
    """Add ``initdb`` to the ``bastion`` command line."""
    parser = subparsers.add_parser(
        "initdb", help="create or upgrade the SQL schema of [bastion] storage and state",
        description="Create the Bastion tables in the SQL databases of [bastion] storage and state, or upgrade "
                    "them to this version. Safe to run again, and while servers run.")
    parser.set_defaults(func=initdb)


def initdb(args: argparse.Namespace) -> int:
    """Create or upgrade the schema of each SQL URL of the configuration; print what was done."""
    # The configuration is read directly rather than through a Runtime: a
    # runtime opens the drivers, which refuse to start on a missing schema.
    config = load_config(getattr(args, "config", None))
    options = settings.read(config)
    storage = config.bastion.storage
    urls = list(dict.fromkeys([storage, config.bastion.state or storage]))
    sql_urls = [url for url in urls if is_sql_url(url)]
    if not sql_urls:
        print(f"initdb: {config.label}: no SQL storage configured ([bastion] storage = {redact(storage)}); "
              "nothing to do")
        return 0
    for url in sql_urls:
        engine = create_engine(url, options)
        try:
            before, after = migrate.upgrade(engine)
        finally:
            engine.dispose()
        if before.current is None:
            print(f"initdb: {redact(url)}: created the schema at revision {after.current}")
        elif before.up_to_date:
            print(f"initdb: {redact(url)}: the schema is already at revision {after.current}")
        else:
            print(f"initdb: {redact(url)}: upgraded the schema from revision {before.current} to {after.current}")
    return 0
