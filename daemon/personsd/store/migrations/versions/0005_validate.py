"""Validate-only drops: imports.mode and the per-validation overlay of persons.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A column-level CHECK is the one form SQLite's ADD COLUMN takes without a
    # table rebuild; existing rows are imports.
    op.add_column(
        "imports",
        sa.Column(
            "mode",
            sa.String(16),
            sa.CheckConstraint("mode IN ('import', 'validate')", name="ck_imports_mode"),
            nullable=False,
            server_default="import",
        ),
    )
    op.create_table(
        "validation_persons",
        sa.Column("import_id", sa.Integer(), nullable=False),
        sa.Column("person_id", sa.BigInteger(), nullable=False),
        sa.Column("person_key", sa.String(36), nullable=False),
        sa.Column("external_person_id", sa.String(255), nullable=True),
        sa.Column("mdn", sa.String(32), nullable=True),
        sa.Column("vibes_device_id", sa.String(255), nullable=True),
        sa.Column("attributes", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("import_id", "person_id", name="pk_validation_persons"),
        sa.ForeignKeyConstraint(
            ["import_id"],
            ["imports.id"],
            ondelete="CASCADE",
            name="fk_validation_persons_import_id_imports",
        ),
    )
    for column in ("external_person_id", "mdn", "vibes_device_id"):
        op.create_index(
            f"ix_validation_persons_import_id_{column}", "validation_persons", ["import_id", column]
        )


def downgrade() -> None:
    op.drop_table("validation_persons")
    with op.batch_alter_table("imports") as batch:
        batch.drop_column("mode")
