"""Import records: the queue, each import's status and its resumable checkpoint."""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement

from personsd.errors import InternalError, LeaseLost, OperatorError
from personsd.store.models import (
    IMPORT_MODES,
    IMPORT_SOURCES,
    IMPORT_STATUSES,
    ImportRow,
    UtcDateTime,
)


class ImportStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    REJECTED = "rejected"
    FAILED = "failed"


# The import life cycle, the one place it is written down (docs/design.md):
# every status change goes through transition(). Finished imports never run
# again on their own: only the operator's `imports retry` re-queues a failed
# one. Staying in a status (a heartbeat, a report flag) is no transition.
TRANSITIONS: frozenset[tuple[ImportStatus, ImportStatus]] = frozenset(
    {
        (ImportStatus.QUEUED, ImportStatus.RUNNING),  # claimed (or `personsd import`)
        (ImportStatus.RUNNING, ImportStatus.QUEUED),  # waits, or retries after a bug
        (ImportStatus.RUNNING, ImportStatus.COMPLETED),
        (ImportStatus.RUNNING, ImportStatus.REJECTED),
        (ImportStatus.RUNNING, ImportStatus.FAILED),  # its last attempt spent
        # Given up before it ran again: a paused import whose failure is final
        # (importer.fail works on whatever is not finished).
        (ImportStatus.QUEUED, ImportStatus.FAILED),
        (ImportStatus.FAILED, ImportStatus.QUEUED),  # `personsd imports retry`
    }
)
FINISHED = frozenset({ImportStatus.COMPLETED, ImportStatus.REJECTED, ImportStatus.FAILED})


class IllegalTransition(InternalError):
    """A status change the life cycle does not allow: a bug, or another instance's work."""


def transition(current: str, new: str) -> ImportStatus:
    """``new`` as a status if ``current -> new`` is allowed; raises IllegalTransition."""
    before, after = ImportStatus(current), ImportStatus(new)
    if before != after and (before, after) not in TRANSITIONS:
        raise IllegalTransition(f"import status {before} cannot become {after}")
    return after


# Arbitrary constant shared by every instance: serialises claims so that two
# instances never start two imports of one tenant at once.
_CLAIM_LOCK = 0x696D706F7274 & 0x7FFF_FFFF_FFFF_FFFF


def _non_negative(obj: object, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class Checkpoint:
    """Where an import stands after its last committed chunk.

    ``next_offset``/``next_line`` are None until the first chunk: the reader
    then starts at the body of the file. ``errors_bytes``/``retry_bytes`` are
    the committed lengths of the partial reports, to truncate to on resume.
    """

    next_offset: int | None = None
    next_line: int | None = None
    next_row: int = 0
    rows_total: int = 0
    rows_succeeded: int = 0
    rows_failed: int = 0
    rows_created: int = 0
    rows_updated: int = 0
    error_counts: Mapping[str, int] = field(default_factory=dict)
    errors_bytes: int = 0
    retry_bytes: int = 0
    retry_rows: int = 0

    def __post_init__(self) -> None:
        _non_negative(self, tuple(f.name for f in fields(self) if f.name != "error_counts"))
        object.__setattr__(self, "error_counts", dict(self.error_counts))
        for name, value in self.error_counts.items():
            if not isinstance(name, str) or not isinstance(value, int) or value < 0:
                raise ValueError(f"error_counts: bad entry {name!r}: {value!r}")


_CHECKPOINT_FIELDS = tuple(f.name for f in fields(Checkpoint))


@dataclass(frozen=True, kw_only=True, slots=True)
class ImportRecord:
    """One row of the imports table."""

    id: int
    tenant_id: int
    file_name: str
    sha256: str
    bytes: int
    status: str
    source: str
    work_path: str
    attempts: int
    received_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duplicate_of: int | None
    last_error: str | None
    claimed_by: str | None
    claimed_at: datetime | None
    heartbeat_at: datetime | None
    next_offset: int | None
    next_line: int | None
    next_row: int
    rows_total: int
    rows_succeeded: int
    rows_failed: int
    rows_created: int
    rows_updated: int
    error_counts: Mapping[str, int]
    errors_bytes: int
    retry_bytes: int
    retry_rows: int
    file_error_class: str | None
    file_error_message: str | None
    reports_published: bool
    not_before: datetime | None
    waits: int
    abrupt_ends: int = 0
    lease_holder: str | None = None
    lease_expires: datetime | None = None
    lease_generation: int = 0
    mode: str = "import"

    def __post_init__(self) -> None:
        if self.status not in IMPORT_STATUSES:
            raise ValueError(f"unknown import status {self.status!r}")
        if self.mode not in IMPORT_MODES:
            raise ValueError(f"unknown import mode {self.mode!r}")
        if self.source not in IMPORT_SOURCES:
            raise ValueError(f"unknown import source {self.source!r}")

    @property
    def checkpoint(self) -> Checkpoint:
        return Checkpoint(**{name: getattr(self, name) for name in _CHECKPOINT_FIELDS})


_RECORD_FIELDS = tuple(f.name for f in fields(ImportRecord))
_SELECT = select(*(getattr(ImportRow, name) for name in _RECORD_FIELDS))
# Columns set_status may change; the identity of an import is fixed.
_SETTABLE = frozenset(_RECORD_FIELDS) - {"id", "tenant_id", "status", "mode"}


def _record(row: Any) -> ImportRecord:
    values = dict(row._mapping)
    values["error_counts"] = json.loads(values["error_counts"])
    values["reports_published"] = bool(values["reports_published"])
    return ImportRecord(**values)


def create(
    conn: Connection,
    *,
    tenant_id: int,
    file_name: str,
    sha256: str,
    bytes: int,
    source: str,
    work_path: str,
    status: str = "queued",
    received_at: datetime,
    duplicate_of: int | None = None,
    mode: str = "import",
) -> int:
    """Record a new import and return its id (ids are never reused)."""
    if mode not in IMPORT_MODES:
        raise ValueError(f"unknown import mode {mode!r}")
    if status not in IMPORT_STATUSES:
        raise ValueError(f"unknown import status {status!r}")
    if source not in IMPORT_SOURCES:
        raise ValueError(f"unknown import source {source!r}")
    counters = {
        name: 0
        for name in _CHECKPOINT_FIELDS
        if name not in ("next_offset", "next_line", "error_counts")
    }
    stmt = (
        insert(ImportRow)
        .values(
            tenant_id=tenant_id,
            file_name=file_name,
            sha256=sha256,
            bytes=bytes,
            status=status,
            source=source,
            work_path=work_path,
            attempts=0,
            received_at=received_at,
            duplicate_of=duplicate_of,
            error_counts="{}",
            reports_published=False,
            mode=mode,
            waits=0,
            **counters,
        )
        .returning(ImportRow.id)
    )
    return int(conn.execute(stmt).scalar_one())


def get(conn: Connection, import_id: int) -> ImportRecord:
    """The import with this id; an unknown id is an OperatorError."""
    row = conn.execute(_SELECT.where(ImportRow.id == import_id)).one_or_none()
    if row is None:
        raise OperatorError(f"import {import_id} does not exist")
    return _record(row)


def list_imports(conn: Connection, tenant_id: int | None = None) -> list[ImportRecord]:
    """Every import (of one tenant, if given), oldest first."""
    stmt = _SELECT.order_by(ImportRow.id)
    if tenant_id is not None:
        stmt = stmt.where(ImportRow.tenant_id == tenant_id)
    return [_record(row) for row in conn.execute(stmt)]


def save_checkpoint(
    conn: Connection, import_id: int, checkpoint: Checkpoint, lease: Lease | None = None
) -> None:
    """Store the checkpoint (in the chunk's transaction); it doubles as a heartbeat.

    With a ``lease`` the write is fenced: it changes the row only while the
    lease's generation and holder are still the row's, else it raises
    :class:`LeaseLost` and the caller's transaction (the chunk) rolls back.
    """
    values: dict[str, Any] = {name: getattr(checkpoint, name) for name in _CHECKPOINT_FIELDS}
    values["error_counts"] = json.dumps(dict(checkpoint.error_counts), sort_keys=True)
    now = datetime.now(UTC)
    values["heartbeat_at"] = now
    if lease is None:
        _update(conn, import_id, values)
        return
    values["lease_expires"] = now + timedelta(seconds=lease.seconds)
    _fenced_update(conn, lease, values)


def set_status(conn: Connection, import_id: int, status: str, **changes: Any) -> None:
    """Set the status and any other columns (``finished_at=…``, ``last_error=…``).

    The change must be a legal transition (:func:`transition`); the current
    status is read with the row locked, so a concurrent change cannot slip in.
    """
    if status not in IMPORT_STATUSES:
        raise ValueError(f"unknown import status {status!r}")
    unknown = set(changes) - _SETTABLE
    if unknown:
        raise ValueError(f"not a settable import column: {', '.join(sorted(unknown))}")
    current = conn.execute(
        select(ImportRow.status).where(ImportRow.id == import_id).with_for_update()
    ).scalar()
    if current is None:
        raise OperatorError(f"import {import_id} does not exist")
    transition(current, status)
    if "error_counts" in changes:
        changes["error_counts"] = json.dumps(dict(changes["error_counts"]), sort_keys=True)
    _update(conn, import_id, {"status": status, **changes})


@dataclass(frozen=True, kw_only=True, slots=True)
class Lease:
    """An instance's hold on a running import: the fencing token of its writes."""

    import_id: int
    holder: str
    generation: int
    seconds: float

    def __post_init__(self) -> None:
        if not self.holder:
            raise ValueError("a lease needs a holder")
        _non_negative(self, ("import_id", "generation"))
        if not self.seconds > 0:
            raise ValueError(f"lease seconds must be positive, got {self.seconds!r}")


def fence(conn: Connection, lease: Lease) -> None:
    """Check (and renew) the lease in the caller's transaction; LeaseLost if it is gone.

    On PostgreSQL the row stays locked until the transaction ends, so no other
    instance can take the import over while this transaction writes for it.
    """
    _fenced_update(
        conn, lease, {"lease_expires": datetime.now(UTC) + timedelta(seconds=lease.seconds)}
    )


def renew(conn: Connection, leases: list[Lease]) -> list[Lease]:
    """The heartbeat: extend each lease still held; returns those found lost.

    A row locked right now is skipped, not waited for: it is this instance's
    own chunk in progress (its checkpoint renews the lease) or a claim that
    ends in milliseconds; waiting would hold up the renewal of the others.
    """
    lost = []
    for lease in leases:
        row = conn.execute(
            select(ImportRow.lease_generation, ImportRow.lease_holder)
            .where(ImportRow.id == lease.import_id)
            .with_for_update(skip_locked=True)
        ).one_or_none()
        if row is None and conn.dialect.name == "postgresql":
            continue
        try:
            fence(conn, lease)
        except LeaseLost:
            lost.append(lease)
    return lost


def release(conn: Connection, lease: Lease) -> None:
    """Give the lease up (a clean stop): any instance may take the import over now.

    No expiry at all (rather than one in the past) tells the next claim that
    the run ended cleanly: it counts no abrupt end.
    """
    _fenced_update(conn, lease, {"lease_expires": None})


def _fenced_update(conn: Connection, lease: Lease, values: Mapping[str, Any]) -> None:
    result = conn.execute(
        update(ImportRow)
        .where(
            ImportRow.id == lease.import_id,
            ImportRow.lease_generation == lease.generation,
            ImportRow.lease_holder == lease.holder,
        )
        .values(**values)
    )
    if result.rowcount != 1:
        raise LeaseLost(
            f"import {lease.import_id}: lease generation {lease.generation} of"
            f" {lease.holder} is no longer current"
        )


def _update(conn: Connection, import_id: int, values: Mapping[str, Any]) -> None:
    result = conn.execute(update(ImportRow).where(ImportRow.id == import_id).values(**values))
    if result.rowcount != 1:
        raise OperatorError(f"import {import_id} does not exist")


def find_duplicate(
    conn: Connection, tenant_id: int, sha256: str, before_id: int, *, mode: str = "import"
) -> int | None:
    """The latest import of the tenant before ``before_id`` with the same content.

    Only one of the same ``mode``: the import of a file validated before is
    no repeat (the validation wrote nothing).
    """
    stmt = (
        select(ImportRow.id)
        .where(
            ImportRow.tenant_id == tenant_id,
            ImportRow.sha256 == sha256,
            ImportRow.id < before_id,
            ImportRow.mode == mode,
        )
        .order_by(ImportRow.id.desc())
        .limit(1)
    )
    return conn.execute(stmt).scalar()


@dataclass(frozen=True, kw_only=True, slots=True)
class Claim:
    """A claimed import, its lease, and whose expired lease it took over (if any)."""

    record: ImportRecord
    lease: Lease
    taken_from: str | None


def claim_next(
    conn: Connection,
    *,
    instance: str,
    tenants_busy: set[int],
    lease_seconds: float,
    single_daemon: bool = False,
) -> Claim | None:
    """Claim the next import to run, or None; call it in a write transaction.

    A candidate is the oldest unfinished import of its tenant (received_at,
    then file name, then id), so one tenant's files run one at a time and in
    order, whichever instance runs them. It is either queued or running under
    a lease that has expired (its instance died or froze: taken over, resumed
    from its checkpoint). A tenant with an import running under a live lease,
    or in ``tenants_busy`` (what this instance runs now), is skipped, and so is
    a tenant whose queued import waits out a pause (``not_before`` ahead).
    ``single_daemon`` (SQLite, where a lock file keeps out a second daemon):
    every daemon-run import not in ``tenants_busy`` is abandoned, whatever its
    lease says. Imports run by ``personsd import`` (source ``cli``) are never
    taken. Claiming sets the lease (holder, expiry, generation + 1) and makes
    the import running; it spends no attempt: attempts are spent by internal
    failures only, so a stop, a crash or a takeover costs none.
    """
    now = datetime.now(UTC)
    if conn.dialect.name == "postgresql":
        # Claims of all instances queue here: "is this tenant busy?" and "take
        # its oldest file" must be one step, which row locks alone cannot give.
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_CLAIM_LOCK})")

    def held(row: Any) -> ColumnElement[bool]:
        """Running under a lease nobody may take over now."""
        if single_daemon:
            return and_(row.status == "running", row.source == "cli")
        # This instance's own lease, outside tenants_busy: left by its previous
        # process (a restart under a configured cluster.instance).
        free = or_(
            row.lease_expires.is_(None), row.lease_expires < now, row.lease_holder == instance
        )
        return and_(row.status == "running", or_(row.source == "cli", ~free))

    other = aliased(ImportRow)
    earlier = aliased(ImportRow)
    live = exists().where(
        other.tenant_id == ImportRow.tenant_id, other.status == "running", held(other)
    )
    # An unfinished import of the tenant that goes before this one.
    before = exists().where(
        earlier.tenant_id == ImportRow.tenant_id,
        earlier.status.in_(("queued", "running")),
        earlier.source != "cli",
        or_(
            earlier.received_at < ImportRow.received_at,
            and_(
                earlier.received_at == ImportRow.received_at,
                or_(
                    earlier.file_name < ImportRow.file_name,
                    and_(earlier.file_name == ImportRow.file_name, earlier.id < ImportRow.id),
                ),
            ),
        ),
    )
    paused = aliased(ImportRow)
    waiting = exists().where(
        paused.tenant_id == ImportRow.tenant_id,
        paused.status == "queued",
        paused.not_before > now,
    )
    stmt = (
        select(
            ImportRow.id,
            ImportRow.status,
            ImportRow.lease_holder,
            ImportRow.claimed_by,
            ImportRow.lease_expires,
        )
        .where(
            ImportRow.status.in_(("queued", "running")),
            ImportRow.source != "cli",
            ImportRow.tenant_id.not_in(tenants_busy),
            # A pause (SPEC 5) holds the tenant's later files too: they keep their order.
            ~waiting,
            ~live,
            ~before,
        )
        .order_by(ImportRow.received_at, ImportRow.file_name, ImportRow.id)
        .limit(1)
        .with_for_update(skip_locked=True, of=ImportRow)
    )
    found = conn.execute(stmt).one_or_none()
    if found is None:
        return None
    import_id, status, holder, claimed_by, expires = found
    # Running with a lease nobody gave up: its last run ended abruptly (a
    # clean stop releases the lease, see release()).
    abrupt = status == "running" and expires is not None
    conn.execute(
        update(ImportRow)
        .where(ImportRow.id == import_id)
        .values(
            status="running",
            claimed_by=instance,
            claimed_at=now,
            heartbeat_at=now,
            lease_holder=instance,
            lease_expires=now + timedelta(seconds=lease_seconds),
            lease_generation=ImportRow.lease_generation + 1,
            abrupt_ends=ImportRow.abrupt_ends + (1 if abrupt else 0),
            started_at=func.coalesce(ImportRow.started_at, bindparam(None, now, UtcDateTime())),
        )
    )
    record = get(conn, import_id)
    lease = Lease(
        import_id=import_id,
        holder=instance,
        generation=record.lease_generation,
        seconds=lease_seconds,
    )
    taken_from = (holder or claimed_by or "?") if status == "running" else None
    return Claim(record=record, lease=lease, taken_from=taken_from)
