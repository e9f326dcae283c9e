"""``imports.heartbeat_at`` dropped: written by every claim, checkpoint and hashing
pause, read by nothing. A running import's liveness is its lease (0002,
``lease_expires``), renewed by the holder's heartbeat and by every fenced write.

SQLite's own ``ALTER TABLE … DROP COLUMN`` (SQLite 3.35, which personsd's
``RETURNING`` already needs), not a batch: a batch rebuilds SQLite's imports
table and loses AUTOINCREMENT (see 0002), so import ids could be given again.

0009, not 0003: the development migrations squashed into 0002 were numbered
0003..0008, and a database stamped with one of them must still be refused
(docs/decisions.md), not taken for one at this revision.

Revision ID: 0009
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_column("imports", "heartbeat_at")


def downgrade() -> None:
    # Nullable: added without rebuilding SQLite's table; a downgraded row has none.
    op.add_column("imports", sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
