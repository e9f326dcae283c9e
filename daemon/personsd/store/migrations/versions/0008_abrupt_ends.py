"""Imports count how often their run ended abruptly: ``abrupt_ends``.

A run that ends without a clean stop (kill -9, a crash, a lost instance)
spends no attempt (those are for internal failures, SPEC 5), but is counted
here, so that a file that kills the process is caught after
``workers.MAX_ABRUPT_ENDS`` runs instead of looping for ever.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN: a batch would rebuild SQLite's imports table.
    op.add_column(
        "imports",
        sa.Column("abrupt_ends", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )


def downgrade() -> None:
    with op.batch_alter_table("imports") as batch:
        batch.drop_column("abrupt_ends")
