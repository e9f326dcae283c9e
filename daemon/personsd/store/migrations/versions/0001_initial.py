"""Initial schema: tenants, their keys and custom fields, persons, imports.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _timestamp(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _counter(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.BigInteger(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=True),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_tenants"),
        sa.UniqueConstraint("name", name="uq_tenants_name"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "tenant_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("key_type", sa.String(64), nullable=False),
        sa.Column("key_data", sa.Text(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tenant_keys"),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            ondelete="CASCADE",
            name="fk_tenant_keys_tenant_id_tenants",
        ),
        sa.UniqueConstraint(
            "tenant_id", "key_type", "key_data", name="uq_tenant_keys_tenant_id_key_type_key_data"
        ),
    )
    op.create_table(
        "custom_fields",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("charset", sa.String(16), nullable=False),
        sa.Column("max_length", sa.Integer(), nullable=False),
        sa.Column("options", sa.Text(), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_custom_fields"),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            ondelete="CASCADE",
            name="fk_custom_fields_tenant_id_tenants",
        ),
        sa.UniqueConstraint("tenant_id", "name", name="uq_custom_fields_tenant_id_name"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "persons",
        # SQLite needs exactly INTEGER PRIMARY KEY for a rowid alias with
        # AUTOINCREMENT; PostgreSQL gets bigserial (sequence persons_person_id_seq).
        sa.Column(
            "person_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("person_key", sa.String(36), nullable=False),
        sa.Column("external_person_id", sa.String(255), nullable=True),
        sa.Column("mdn", sa.String(32), nullable=True),
        sa.Column("vibes_device_id", sa.String(255), nullable=True),
        sa.Column("attributes", sa.Text(), nullable=False),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("person_id", name="pk_persons"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], ondelete="CASCADE", name="fk_persons_tenant_id_tenants"
        ),
        sa.UniqueConstraint(
            "tenant_id", "external_person_id", name="uq_persons_tenant_id_external_person_id"
        ),
        sa.UniqueConstraint("tenant_id", "mdn", name="uq_persons_tenant_id_mdn"),
        sa.UniqueConstraint(
            "tenant_id", "vibes_device_id", name="uq_persons_tenant_id_vibes_device_id"
        ),
        sa.UniqueConstraint("person_key", name="uq_persons_person_key"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_persons_tenant_id_person_id", "persons", ["tenant_id", "person_id"])
    if op.get_bind().dialect.name == "sqlite":
        # store.persons.allocate_ids advances this row; it must exist before
        # the first insert (SQLite would otherwise create it then).
        op.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('persons', 0)")
    op.create_table(
        "imports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("file_name", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("work_path", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _timestamp("received_at"),
        _timestamp("started_at", nullable=True),
        _timestamp("finished_at", nullable=True),
        sa.Column("duplicate_of", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("claimed_by", sa.Text(), nullable=True),
        _timestamp("claimed_at", nullable=True),
        _timestamp("heartbeat_at", nullable=True),
        sa.Column("next_offset", sa.BigInteger(), nullable=True),
        sa.Column("next_line", sa.BigInteger(), nullable=True),
        _counter("next_row"),
        _counter("rows_total"),
        _counter("rows_succeeded"),
        _counter("rows_failed"),
        _counter("rows_created"),
        _counter("rows_updated"),
        sa.Column("error_counts", sa.Text(), nullable=False),
        _counter("errors_bytes"),
        _counter("retry_bytes"),
        _counter("retry_rows"),
        sa.Column("file_error_class", sa.Text(), nullable=True),
        sa.Column("file_error_message", sa.Text(), nullable=True),
        sa.Column("reports_published", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_imports"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], ondelete="CASCADE", name="fk_imports_tenant_id_tenants"
        ),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'completed', 'rejected', 'failed')",
            name="ck_imports_status",
        ),
        sa.CheckConstraint("source IN ('sftp', 'watcher', 'cli')", name="ck_imports_source"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_imports_tenant_id_status_id", "imports", ["tenant_id", "status", "id"])
    op.create_index("ix_imports_tenant_id_sha256", "imports", ["tenant_id", "sha256"])


def downgrade() -> None:
    op.drop_table("imports")
    op.drop_table("persons")
    op.drop_table("custom_fields")
    op.drop_table("tenant_keys")
    op.drop_table("tenants")
