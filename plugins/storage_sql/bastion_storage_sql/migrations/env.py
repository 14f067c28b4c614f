"""Alembic environment of the SQL driver: always run programmatically on a given connection.

:mod:`bastion_storage_sql.migrate` opens the connection, takes the migration
lock and passes the connection in ``config.attributes["connection"]``; the
caller commits, so the lock and the migration share one transaction.
"""

from alembic import context
from bastion_storage_sql.schema import VERSION_TABLE, metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - guards against a stray `alembic upgrade`
    raise RuntimeError("run `bastion initdb`: the SQL driver's migrations need a connection from bastion_storage_sql")

context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
