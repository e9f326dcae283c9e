"""Tenants' PGP verify keys (SPEC 7 and 11): the partner's public key and its fingerprint.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable columns: SQLite adds them without rebuilding the table.
    op.add_column("tenants", sa.Column("pgp_verify_key", sa.Text(), nullable=True))
    op.add_column("tenants", sa.Column("pgp_verify_fingerprint", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("pgp_verify_fingerprint")
        batch.drop_column("pgp_verify_key")
