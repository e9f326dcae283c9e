"""The schema, as typed SQLAlchemy models; ``migrations/versions`` must match it.

Constraint names come from a naming convention so that the hand-written
migration and the models agree on them.

Ids of tenants, custom fields, persons and imports are never reused (SQLite
``AUTOINCREMENT``; PostgreSQL sequences never go back): a custom value is
stored under its field's id and an outbox report is named after its import's
id, so a reused id would resurrect stale data.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

IMPORT_STATUSES = ("queued", "running", "completed", "rejected", "failed")
IMPORT_SOURCES = ("sftp", "watcher", "cli")
# SPEC 4 and 11: ``validate`` runs every rule and writes no person.
IMPORT_MODES = ("import", "validate")
TENANT_NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,63}"


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out; SQLite keeps them as naive UTC text."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: the database stores aware UTC times only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def sqlite_timestamp(value: datetime) -> str:
    """The text ``UtcDateTime`` stores on SQLite, for raw-SQL bulk paths."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


# SQLite makes a column the rowid (and allows AUTOINCREMENT) only when it is
# declared exactly INTEGER PRIMARY KEY; PostgreSQL gets 64 bits.
PersonIdType = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UtcDateTime()}


class TenantRow(Base):
    __tablename__ = "tenants"
    __table_args__ = (
        UniqueConstraint("name"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    password_hash: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    # SPEC 10: how often the partner is expected to send (None: no expectation)
    # and the tenant's own webhook URL (None: notify.url).
    expect_every_seconds: Mapped[int | None] = mapped_column(Integer)
    notify_url: Mapped[str | None] = mapped_column(Text)
    # SPEC 11: the partner's public key (armoured) whose signature files must carry.
    pgp_verify_key: Mapped[str | None] = mapped_column(Text)
    pgp_verify_fingerprint: Mapped[str | None] = mapped_column(String(64))


class TenantKeyRow(Base):
    __tablename__ = "tenant_keys"
    __table_args__ = (UniqueConstraint("tenant_id", "key_type", "key_data"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    key_type: Mapped[str] = mapped_column(String(64))
    key_data: Mapped[str] = mapped_column(Text)  # base64, as in authorized_keys
    comment: Mapped[str] = mapped_column(Text)


class CustomFieldRow(Base):
    __tablename__ = "custom_fields"
    __table_args__ = (
        UniqueConstraint("tenant_id", "name"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(32))
    charset: Mapped[str] = mapped_column(String(16))
    max_length: Mapped[int] = mapped_column(Integer)
    options: Mapped[str] = mapped_column(Text)  # JSON list of option keys, in order
    created_at: Mapped[datetime]


class PersonRow(Base):
    __tablename__ = "persons"
    __table_args__ = (
        UniqueConstraint("tenant_id", "external_person_id"),
        UniqueConstraint("tenant_id", "mdn"),
        UniqueConstraint("tenant_id", "vibes_device_id"),
        UniqueConstraint("person_key"),
        # Export and count walk one tenant's persons by id.
        Index(None, "tenant_id", "person_id"),
        {"sqlite_autoincrement": True},
    )

    person_id: Mapped[int] = mapped_column(PersonIdType, primary_key=True, autoincrement=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    person_key: Mapped[str] = mapped_column(String(36))
    external_person_id: Mapped[str | None] = mapped_column(String(255))
    mdn: Mapped[str | None] = mapped_column(String(32))
    vibes_device_id: Mapped[str | None] = mapped_column(String(255))
    # JSON object: str(custom field id) -> text, or list of option keys.
    attributes: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ImportRow(Base):
    __tablename__ = "imports"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'running', 'completed', 'rejected', 'failed')", name="status"
        ),
        CheckConstraint("source IN ('sftp', 'watcher', 'cli')", name="source"),
        Index(None, "tenant_id", "status", "id"),
        Index(None, "tenant_id", "sha256"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    file_name: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))
    work_path: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    duplicate_of: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(Text)
    claimed_at: Mapped[datetime | None]
    next_offset: Mapped[int | None] = mapped_column(BigInteger)
    next_line: Mapped[int | None] = mapped_column(BigInteger)
    next_row: Mapped[int] = mapped_column(BigInteger)
    rows_total: Mapped[int] = mapped_column(BigInteger)
    rows_succeeded: Mapped[int] = mapped_column(BigInteger)
    rows_failed: Mapped[int] = mapped_column(BigInteger)
    rows_created: Mapped[int] = mapped_column(BigInteger)
    rows_updated: Mapped[int] = mapped_column(BigInteger)
    error_counts: Mapped[str] = mapped_column(Text)  # JSON object: error class -> count
    errors_bytes: Mapped[int] = mapped_column(BigInteger)
    retry_bytes: Mapped[int] = mapped_column(BigInteger)
    retry_rows: Mapped[int] = mapped_column(BigInteger)
    file_error_class: Mapped[str | None] = mapped_column(Text)
    file_error_message: Mapped[str | None] = mapped_column(Text)
    reports_published: Mapped[bool] = mapped_column(Boolean)
    # SPEC 12: the instance holding a running import, until when, and the
    # fencing token every write of the import checks (bumped by each claim).
    # The holder stays after the import ends: it records who ran it.
    lease_holder: Mapped[str | None] = mapped_column(Text)
    lease_expires: Mapped[datetime | None]
    lease_generation: Mapped[int] = mapped_column(BigInteger, server_default="0")
    mode: Mapped[str] = mapped_column(
        String(16),
        CheckConstraint("mode IN ('import', 'validate')", name="ck_imports_mode"),
        server_default="import",
    )

    # An environment failure's pause: not claimed before this moment (SPEC 5).
    not_before: Mapped[datetime | None]
    waits: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # Runs that ended without a clean stop (kill -9, a crash, a lost instance).
    abrupt_ends: Mapped[int] = mapped_column(Integer, server_default=text("0"))


class ValidationPersonRow(Base):
    """What a running validation would have written so far (``store.overlay``).

    person_id is the real one for persons the file changes, negative for
    persons it would create (no id is taken from the persons sequence).
    """

    __tablename__ = "validation_persons"
    __table_args__ = (
        Index(None, "import_id", "external_person_id"),
        Index(None, "import_id", "mdn"),
        Index(None, "import_id", "vibes_device_id"),
    )

    import_id: Mapped[int] = mapped_column(
        ForeignKey("imports.id", ondelete="CASCADE"), primary_key=True
    )
    person_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    person_key: Mapped[str] = mapped_column(String(36))
    external_person_id: Mapped[str | None] = mapped_column(String(255))
    mdn: Mapped[str | None] = mapped_column(String(32))
    vibes_device_id: Mapped[str | None] = mapped_column(String(255))
    attributes: Mapped[str] = mapped_column(Text)


class SftpBanRow(Base):
    """Failed logins and bans per client address, shared by every instance (SPEC 12).

    One row per address: ``failures`` counted since ``window_started_at`` (a
    window of ``SftpLimits.failed_window_seconds`` opened by the first
    failure), and the ban, if any, until ``banned_until``.
    """

    __tablename__ = "sftp_bans"
    __table_args__ = (Index(None, "banned_until"),)

    address: Mapped[str] = mapped_column(String(100), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    window_started_at: Mapped[datetime]
    banned_until: Mapped[datetime | None]


class DbCopyRow(Base):
    """``personsd db copy`` runs into this database: a row without ``finished_at`` may resume."""

    __tablename__ = "db_copies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(Text)  # the source URL, without its password
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


DELIVERY_STATUSES = ("pending", "delivered", "failed")


class DeliveryRow(Base):
    """A webhook delivery (SPEC 10), written with the import's final status."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("delivery_id"),
        CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="status"),
        Index(None, "status", "next_attempt_at"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[str] = mapped_column(String(36))  # X-Personsd-Delivery
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    import_id: Mapped[int] = mapped_column(ForeignKey("imports.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(32))  # X-Personsd-Event
    url: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)  # the summary JSON, exactly as signed
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]
    # Also the lease of a delivery in flight: pushed past the request's timeout
    # when claimed, so a sender that dies mid-request leaves it due again.
    next_attempt_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)


metadata = Base.metadata
