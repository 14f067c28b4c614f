"""The removed records whose history is kept, numbered by removal, so that the commit that removes can bound them.

The records a database at revision 0002 had removed keep their history as
before: the upgrade numbers them, per domain and model, in the order of their
deletion entries (the last entry of their history), so that the removals that
follow drop the oldest of them beyond the model's bound, a few per commit,
as they drop any other.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_WITHOUT_ROWID = {"sqlite_with_rowid": False}


def upgrade() -> None:
    op.create_table(
        "bastion_history_removed",
        sa.Column("domain", sa.String, primary_key=True),
        sa.Column("model", sa.String, primary_key=True),
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("n", sa.BigInteger, nullable=False),
        **_WITHOUT_ROWID,
    )
    op.create_index("ix_bastion_history_removed_order", "bastion_history_removed", ["domain", "model", "n"])
    # A record is removed when its history's last entry is a deletion (data NULL).
    op.execute(
        "INSERT INTO bastion_history_removed (domain, model, id, n) "
        "SELECT h.domain, h.model, h.id, "
        "ROW_NUMBER() OVER (PARTITION BY h.domain, h.model ORDER BY h.committed_at, h.id) "
        "FROM bastion_history AS h "
        "WHERE h.data IS NULL AND h.n = (SELECT max(l.n) FROM bastion_history AS l "
        "WHERE l.domain = h.domain AND l.model = h.model AND l.id = h.id)"
    )


def downgrade() -> None:
    op.drop_table("bastion_history_removed")
