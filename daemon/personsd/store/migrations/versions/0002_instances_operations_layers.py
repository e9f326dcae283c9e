"""Everything this release adds to 0001, in one step (the development migrations
0002..0008, squashed before release):

- leases on running imports (SPEC 12): holder, expiry and fencing generation;
- shared state of several instances: SFTP failed logins and bans; db copy runs;
- operations (SPEC 10): a tenant's expected cadence and webhook URL; the webhook
  deliveries outbox;
- validate-only drops: ``imports.mode`` and the per-validation overlay of persons;
- imports wait for the environment: ``not_before`` and ``waits``. An environment
  failure (database, disk) puts the import back in the queue with ``not_before``
  = now + the retry policy's pause for its ``waits``-th wait; the claim skips it
  until then. Attempts are spent by internal failures only (SPEC 5);
- tenants' PGP verify keys (SPEC 7 and 11): the partner's public key and its
  fingerprint;
- imports count how often their run ended abruptly: ``abrupt_ends``. A run that
  ends without a clean stop (kill -9, a crash, a lost instance) spends no attempt
  (those are for internal failures, SPEC 5), but is counted here, so that a file
  that kills the process is caught after ``workers.MAX_ABRUPT_ENDS`` runs instead
  of looping for ever.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    _add_leases()
    _add_shared_state()
    _add_operations()
    _add_validate()
    _add_import_waits()
    _add_pgp_verify_key()
    _add_abrupt_ends()


def downgrade() -> None:
    _drop_abrupt_ends()
    _drop_pgp_verify_key()
    _drop_import_waits()
    _drop_validate()
    _drop_operations()
    _drop_shared_state()
    _drop_leases()


def _add_leases() -> None:
    with op.batch_alter_table("imports") as batch:
        batch.add_column(sa.Column("lease_holder", sa.Text(), nullable=True))
        batch.add_column(sa.Column("lease_expires", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("lease_generation", sa.BigInteger(), nullable=False, server_default="0")
        )


def _drop_leases() -> None:
    with op.batch_alter_table("imports") as batch:
        batch.drop_column("lease_generation")
        batch.drop_column("lease_expires")
        batch.drop_column("lease_holder")


def _add_shared_state() -> None:
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


def _drop_shared_state() -> None:
    op.drop_table("db_copies")
    op.drop_index("ix_sftp_bans_banned_until", table_name="sftp_bans")
    op.drop_table("sftp_bans")


def _add_operations() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("expect_every_seconds", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("notify_url", sa.Text(), nullable=True))
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("delivery_id", sa.String(36), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("import_id", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_deliveries"),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            ondelete="CASCADE",
            name="fk_deliveries_tenant_id_tenants",
        ),
        sa.ForeignKeyConstraint(
            ["import_id"],
            ["imports.id"],
            ondelete="CASCADE",
            name="fk_deliveries_import_id_imports",
        ),
        sa.UniqueConstraint("delivery_id", name="uq_deliveries_delivery_id"),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'failed')", name="ck_deliveries_status"
        ),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_deliveries_status_next_attempt_at", "deliveries", ["status", "next_attempt_at"]
    )


def _drop_operations() -> None:
    op.drop_table("deliveries")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("notify_url")
        batch.drop_column("expect_every_seconds")


def _add_validate() -> None:
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


def _drop_validate() -> None:
    op.drop_table("validation_persons")
    with op.batch_alter_table("imports") as batch:
        batch.drop_column("mode")


def _add_import_waits() -> None:
    # Plain ADD COLUMN, not a batch: the batch rebuilt SQLite's imports table
    # (its CHECK on mode makes alembic copy it) and lost AUTOINCREMENT, so
    # import ids restarted below ids already used in report names.
    op.add_column("imports", sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "imports", sa.Column("waits", sa.Integer(), nullable=False, server_default=sa.text("0"))
    )


def _drop_import_waits() -> None:
    with op.batch_alter_table("imports") as batch:
        batch.drop_column("waits")
        batch.drop_column("not_before")


def _add_pgp_verify_key() -> None:
    # Nullable columns: SQLite adds them without rebuilding the table.
    op.add_column("tenants", sa.Column("pgp_verify_key", sa.Text(), nullable=True))
    op.add_column("tenants", sa.Column("pgp_verify_fingerprint", sa.String(64), nullable=True))


def _drop_pgp_verify_key() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("pgp_verify_fingerprint")
        batch.drop_column("pgp_verify_key")


def _add_abrupt_ends() -> None:
    # Plain ADD COLUMN: a batch would rebuild SQLite's imports table.
    op.add_column(
        "imports",
        sa.Column("abrupt_ends", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )


def _drop_abrupt_ends() -> None:
    with op.batch_alter_table("imports") as batch:
        batch.drop_column("abrupt_ends")
