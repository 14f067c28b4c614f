"""Records, index entries, state keys and windows.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_WITHOUT_ROWID = {"sqlite_with_rowid": False}


def upgrade() -> None:
    op.create_table(
        "bastion_records",
        sa.Column("domain", sa.String, primary_key=True),
        sa.Column("model", sa.String, primary_key=True),
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("vsn", sa.Integer, nullable=False),
        sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
    )
    op.create_index("ix_bastion_records_order", "bastion_records", ["domain", "model", "seq"])
    op.create_table(
        "bastion_index",
        sa.Column("domain", sa.String, primary_key=True),
        sa.Column("model", sa.String, primary_key=True),
        sa.Column("field", sa.String, primary_key=True),
        sa.Column("token", sa.String, primary_key=True),
        sa.Column("id", sa.String, primary_key=True),
        sa.ForeignKeyConstraint(["domain", "model", "id"],
                                ["bastion_records.domain", "bastion_records.model", "bastion_records.id"],
                                name="fk_bastion_index_record", ondelete="CASCADE"),
        **_WITHOUT_ROWID,
    )
    op.create_index("ix_bastion_index_record", "bastion_index", ["domain", "model", "id"])
    op.create_table(
        "bastion_state",
        sa.Column("domain", sa.String, primary_key=True),
        sa.Column("key", sa.String, primary_key=True),
        sa.Column("value", sa.Text, nullable=True),
        sa.Column("n", sa.BigInteger, nullable=True),
        sa.Column("expires", sa.Double, nullable=False),
        **_WITHOUT_ROWID,
    )
    op.create_index("ix_bastion_state_expires", "bastion_state", ["expires"])
    op.create_table(
        "bastion_windows",
        sa.Column("domain", sa.String, primary_key=True),
        sa.Column("key", sa.String, primary_key=True),
        sa.Column("member", sa.String, primary_key=True),
        sa.Column("weight", sa.BigInteger, nullable=False),
        sa.Column("expires", sa.Double, nullable=False),
        **_WITHOUT_ROWID,
    )
    op.create_index("ix_bastion_windows_expires", "bastion_windows", ["expires"])


def downgrade() -> None:
    op.drop_table("bastion_windows")
    op.drop_table("bastion_state")
    op.drop_table("bastion_index")
    op.drop_table("bastion_records")
