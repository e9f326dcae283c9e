"""The import queue: which import an instance runs next, claimed under a lease."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, bindparam, exists, func, or_, select, update
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement

from personsd.store.imports import ImportRecord, get
from personsd.store.leases import Lease
from personsd.store.models import ImportRow, UtcDateTime

# Arbitrary constant shared by every instance: serialises claims so that two
# instances never start two imports of one tenant at once.
_CLAIM_LOCK = 0x696D706F7274 & 0x7FFF_FFFF_FFFF_FFFF


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
