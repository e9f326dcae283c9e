"""Shared state of several instances: SFTP failed logins and bans; db copy runs.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sftp_bans",
        sa.Column("address", sa.String(100), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("window_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("banned_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("address", name="pk_sftp_bans"),
    )
    op.create_index("ix_sftp_bans_banned_until", "sftp_bans", ["banned_until"])
    op.create_table(
        "db_copies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_db_copies"),
    )


def downgrade() -> None:
    op.drop_table("db_copies")
    op.drop_index("ix_sftp_bans_banned_until", table_name="sftp_bans")
    op.drop_table("sftp_bans")
