"""Import records: each import's status, its life cycle and its resumable checkpoint.

Leases (an instance's fenced hold on a running import) are ``store.leases``;
claiming the next import to run is ``store.queue``.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    insert,
    select,
    update,
)

from personsd.errors import InternalError, OperatorError, UnknownImport
from personsd.store.leases import Lease, fence, fenced_update, release, renew
from personsd.store.models import (
    IMPORT_MODES,
    IMPORT_SOURCES,
    IMPORT_STATUSES,
    ImportRow,
)

# Leases were kept here before store.leases: their callers still find them.
__all__ = ["Lease", "fence", "release", "renew"]


class ImportStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    REJECTED = "rejected"
    FAILED = "failed"


# The import life cycle, the one place it is written down (docs/design.md):
# every status change goes through transition(). Finished imports never run
# again on their own: only the operator's `imports retry` re-queues a failed
# one. Staying in a status (the sha256, a report flag) is no transition.
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
    """The import with this id; an unknown id raises UnknownImport (ours to explain)."""
    row = conn.execute(_SELECT.where(ImportRow.id == import_id)).one_or_none()
    if row is None:
        raise UnknownImport(f"import {import_id} does not exist")
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
    """Store the checkpoint (in the chunk's transaction).

    With a ``lease`` the write is fenced and renews the lease: it changes the
    row only while the lease's generation and holder are still the row's, else
    it raises :class:`LeaseLost` and the caller's transaction (the chunk) rolls back.
    """
    values: dict[str, Any] = {name: getattr(checkpoint, name) for name in _CHECKPOINT_FIELDS}
    values["error_counts"] = json.dumps(dict(checkpoint.error_counts), sort_keys=True)
    if lease is None:
        _update(conn, import_id, values)
        return
    values["lease_expires"] = datetime.now(UTC) + timedelta(seconds=lease.seconds)
    fenced_update(conn, lease, values)


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


def _update(conn: Connection, import_id: int, values: Mapping[str, Any]) -> None:
    result = conn.execute(update(ImportRow).where(ImportRow.id == import_id).values(**values))
    if result.rowcount != 1:
        raise OperatorError(f"import {import_id} does not exist")


def recorded_paths(conn: Connection) -> set[str]:
    """The ``work_path`` of every import recorded, whatever its status."""
    return set(conn.execute(select(ImportRow.work_path)).scalars())


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
