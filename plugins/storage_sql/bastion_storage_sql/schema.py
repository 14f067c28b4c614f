"""The tables of the SQL driver, as SQLAlchemy Core objects.

The Alembic revisions in ``migrations/versions`` create exactly these tables;
``tests/test_schema.py`` proves that the two never drift apart.

* ``bastion_records`` — one row per record, keyed by (domain, model, id);
  ``seq`` orders a model's records by creation (updates keep it).
* ``bastion_index`` — one row per indexed field of a record, holding
  :func:`kernel.core.driver.index_token` of its value; its primary key starts with
  (domain, model, field, token), so an equality filter is an index range scan.
* ``bastion_state`` — plain short-lived keys; ``n`` holds integer values (so
  that counters increment in SQL), ``value`` every other JSON value.
* ``bastion_windows`` — members of windows, each with its own expiry.
* ``bastion_history`` — the kept versions of records whose model keeps
  history, ``n`` numbering each record's entries in commit order (a deleted
  record's history outlives it, so there is no foreign key to the record).
* ``bastion_history_removed`` — the removed records whose history is kept,
  ``n`` the number of each one's latest removal among its model's in its
  domain (1, 2, 3, ...): the commit that removes drops the histories of the
  lowest numbers the model's bound leaves out (``Change.keep_removed``).

Every expiry is an absolute Unix time computed from the driver's clock.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

#: Alembic's version table, named so that it never collides with an application's own.
VERSION_TABLE = "bastion_sql_version"

#: Index tokens longer than this are stored as a digest (PostgreSQL B-tree rows are bounded).
MAX_TOKEN = 200

metadata = sa.MetaData()

# SQLite stores the narrow, key-only tables without a rowid: the primary key is the table. Typed as Table's
# **kw: a dict[str, bool] unpacked into Table(...) would also have to fit its typed keywords (autoload_with, ...).
_WITHOUT_ROWID: dict[str, Any] = {"sqlite_with_rowid": False}

records = sa.Table(
    "bastion_records", metadata,
    sa.Column("domain", sa.String, primary_key=True),
    sa.Column("model", sa.String, primary_key=True),
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("vsn", sa.Integer, nullable=False),
    # PostgreSQL numbers rows with an identity column; SQLite writers are
    # serialised, so the driver computes max + 1 within the write transaction.
    sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    sa.Index("ix_bastion_records_order", "domain", "model", "seq"),
)

index_entries = sa.Table(
    "bastion_index", metadata,
    sa.Column("domain", sa.String, primary_key=True),
    sa.Column("model", sa.String, primary_key=True),
    sa.Column("field", sa.String, primary_key=True),
    sa.Column("token", sa.String, primary_key=True),
    sa.Column("id", sa.String, primary_key=True),
    sa.ForeignKeyConstraint(["domain", "model", "id"], [records.c.domain, records.c.model, records.c.id],
                            name="fk_bastion_index_record", ondelete="CASCADE"),
    # Finds a record's entries when it is updated or deleted.
    sa.Index("ix_bastion_index_record", "domain", "model", "id"),
    **_WITHOUT_ROWID,
)

state = sa.Table(
    "bastion_state", metadata,
    sa.Column("domain", sa.String, primary_key=True),
    sa.Column("key", sa.String, primary_key=True),
    sa.Column("value", sa.Text, nullable=True),
    sa.Column("n", sa.BigInteger, nullable=True),
    sa.Column("expires", sa.Double, nullable=False),
    sa.Index("ix_bastion_state_expires", "expires"),
    **_WITHOUT_ROWID,
)

windows = sa.Table(
    "bastion_windows", metadata,
    sa.Column("domain", sa.String, primary_key=True),
    sa.Column("key", sa.String, primary_key=True),
    sa.Column("member", sa.String, primary_key=True),
    sa.Column("weight", sa.BigInteger, nullable=False),
    sa.Column("expires", sa.Double, nullable=False),
    sa.Index("ix_bastion_windows_expires", "expires"),
    **_WITHOUT_ROWID,
)

history = sa.Table(
    "bastion_history", metadata,
    sa.Column("domain", sa.String, primary_key=True),
    sa.Column("model", sa.String, primary_key=True),
    sa.Column("id", sa.String, primary_key=True),
    # 1, 2, 3, ... per record in commit order; the oldest entries are trimmed, the numbers never reused.
    sa.Column("n", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("vsn", sa.Integer, nullable=False),
    sa.Column("committed_at", sa.Double, nullable=False),
    sa.Column("committed_by", sa.String, nullable=True),
    # The version's data as JSON; NULL for a deletion.
    sa.Column("data", sa.Text, nullable=True),
)

removals = sa.Table(
    "bastion_history_removed", metadata,
    sa.Column("domain", sa.String, primary_key=True),
    sa.Column("model", sa.String, primary_key=True),
    sa.Column("id", sa.String, primary_key=True),
    # The number of the record's latest removal, counted per domain and model; removing it again renumbers it.
    sa.Column("n", sa.BigInteger, nullable=False),
    # The newest removal (the next number) and the oldest ones (those to drop) are the ends of one range.
    sa.Index("ix_bastion_history_removed_order", "domain", "model", "n"),
    **_WITHOUT_ROWID,
)
