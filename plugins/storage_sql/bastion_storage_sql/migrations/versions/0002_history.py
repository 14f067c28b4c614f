"""Record history: the kept versions of records whose model keeps history.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bastion_history",
        sa.Column("domain", sa.String, primary_key=True),
        sa.Column("model", sa.String, primary_key=True),
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("n", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("vsn", sa.Integer, nullable=False),
        sa.Column("committed_at", sa.Double, nullable=False),
        sa.Column("committed_by", sa.String, nullable=True),
        sa.Column("data", sa.Text, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("bastion_history")
