"""Imports wait for the environment: ``not_before`` and ``waits``.

An environment failure (database, disk) puts the import back in the queue
with ``not_before`` = now + the retry policy's pause for its ``waits``-th
wait; the claim skips it until then. Attempts are spent by internal failures
only (SPEC 5).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN, not a batch: the batch rebuilt SQLite's imports table
    # (its CHECK on mode makes alembic copy it) and lost AUTOINCREMENT, so
    # import ids restarted below ids already used in report names.
    op.add_column("imports", sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "imports", sa.Column("waits", sa.Integer(), nullable=False, server_default=sa.text("0"))
    )


def downgrade() -> None:
    with op.batch_alter_table("imports") as batch:
        batch.drop_column("waits")
        batch.drop_column("not_before")
