"""What personsd is doing, read from the database (SPEC 7 ``status``, SPEC 10 gauges).

One snapshot serves ``personsd status`` and the metrics that describe state
(queue depth, last completed, expected interval, pending notifications):
they come from the database, not from a process's memory, so they are right
after a restart and the same whichever instance is asked.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, select

from personsd import durations
from personsd.store.models import DeliveryRow, ImportRow, TenantRow

# A running import's ``next_offset`` counts bytes of the file already read.
_FINISHED = ("completed", "rejected", "failed")


@dataclass(frozen=True, kw_only=True, slots=True)
class Running:
    import_id: int
    file: str
    rows: int
    bytes_done: int
    bytes: int

    @property
    def percent(self) -> float:
        return 100.0 * self.bytes_done / self.bytes if self.bytes else 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class Finished:
    import_id: int
    file: str
    status: str
    rows: int
    failed: int
    finished_at: datetime | None


@dataclass(frozen=True, kw_only=True, slots=True)
class TenantState:
    name: str
    queued: int = 0
    oldest_queued_at: datetime | None = None
    running: tuple[Running, ...] = ()
    last_finished: Finished | None = None
    last_completed_at: datetime | None = None
    expect_every_seconds: int | None = None
    failed: int = 0  # imports that ended failed, ever

    def overdue(self, now: datetime) -> bool:
        """No completed import for 1.1 × the expected interval (the alert's rule)."""
        if self.expect_every_seconds is None or self.last_completed_at is None:
            return False
        since = (now - self.last_completed_at).total_seconds()
        return since > 1.1 * self.expect_every_seconds


@dataclass(frozen=True, kw_only=True, slots=True)
class Snapshot:
    taken_at: datetime
    tenants: tuple[TenantState, ...] = ()
    notifications_pending: int = 0
    oldest_notification_at: datetime | None = None
    recent_failures: tuple[Finished, ...] = field(default=())


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def counts(conn: Connection, now: datetime | None = None) -> Snapshot:
    """The cheap part, for every scrape: counts and times per tenant, pending deliveries."""
    now = now or datetime.now(UTC)
    tenants = conn.execute(
        select(TenantRow.id, TenantRow.name, TenantRow.expect_every_seconds).order_by(
            TenantRow.name
        )
    ).all()
    grouped = conn.execute(
        select(
            ImportRow.tenant_id,
            ImportRow.status,
            func.count(),
            func.min(ImportRow.received_at),
            func.max(ImportRow.finished_at),
        ).group_by(ImportRow.tenant_id, ImportRow.status)
    ).all()
    per: dict[int, dict[str, Any]] = {t.id: {} for t in tenants}
    for tenant_id, status, count, oldest, newest in grouped:
        per.setdefault(tenant_id, {})[status] = (count, _aware(oldest), _aware(newest))
    pending, oldest_pending = conn.execute(
        select(func.count(), func.min(DeliveryRow.created_at)).where(
            DeliveryRow.status == "pending"
        )
    ).one()
    states = []
    for tenant in tenants:
        stats = per.get(tenant.id, {})
        queued = stats.get("queued", (0, None, None))
        states.append(
            TenantState(
                name=tenant.name,
                queued=queued[0],
                oldest_queued_at=queued[1],
                last_completed_at=stats.get("completed", (0, None, None))[2],
                expect_every_seconds=tenant.expect_every_seconds,
                failed=stats.get("failed", (0, None, None))[0],
            )
        )
    return Snapshot(
        taken_at=now,
        tenants=tuple(states),
        notifications_pending=int(pending),
        oldest_notification_at=_aware(oldest_pending),
    )


def snapshot(conn: Connection, now: datetime | None = None, failures: int = 5) -> Snapshot:
    """:func:`counts` plus the running and last finished imports and recent failures."""
    base = counts(conn, now)
    names = dict(conn.execute(select(TenantRow.id, TenantRow.name)).all())
    running: dict[str, list[Running]] = {}
    for row in conn.execute(
        select(
            ImportRow.id,
            ImportRow.tenant_id,
            ImportRow.file_name,
            ImportRow.next_row,
            ImportRow.next_offset,
            ImportRow.bytes,
        )
        .where(ImportRow.status == "running")
        .order_by(ImportRow.id)
    ):
        running.setdefault(names.get(row.tenant_id, "?"), []).append(
            Running(
                import_id=row.id,
                file=row.file_name,
                rows=row.next_row,
                bytes_done=row.next_offset or 0,
                bytes=row.bytes,
            )
        )
    latest = (
        select(func.max(ImportRow.id))
        .where(ImportRow.status.in_(_FINISHED))
        .group_by(ImportRow.tenant_id)
        .scalar_subquery()
    )
    finished_columns = (
        ImportRow.id,
        ImportRow.tenant_id,
        ImportRow.file_name,
        ImportRow.status,
        ImportRow.rows_total,
        ImportRow.rows_failed,
        ImportRow.finished_at,
    )
    last: dict[str, Finished] = {
        names.get(row.tenant_id, "?"): _finished(row)
        for row in conn.execute(select(*finished_columns).where(ImportRow.id.in_(latest)))
    }
    recent = tuple(
        _finished(row)
        for row in conn.execute(
            select(*finished_columns)
            .where(ImportRow.status == "failed")
            .order_by(ImportRow.id.desc())
            .limit(failures)
        )
    )
    tenants = tuple(
        TenantState(
            name=t.name,
            queued=t.queued,
            oldest_queued_at=t.oldest_queued_at,
            running=tuple(running.get(t.name, ())),
            last_finished=last.get(t.name),
            last_completed_at=t.last_completed_at,
            expect_every_seconds=t.expect_every_seconds,
            failed=t.failed,
        )
        for t in base.tenants
    )
    return Snapshot(
        taken_at=base.taken_at,
        tenants=tenants,
        notifications_pending=base.notifications_pending,
        oldest_notification_at=base.oldest_notification_at,
        recent_failures=recent,
    )


def _finished(row: Any) -> Finished:
    return Finished(
        import_id=row.id,
        file=row.file_name,
        status=row.status,
        rows=row.rows_total,
        failed=row.rows_failed,
        finished_at=_aware(row.finished_at),
    )


def disk_free(root: Path) -> int | None:
    """Free bytes on the root's filesystem for personsd's user; None when unknown."""
    try:
        return shutil.disk_usage(root).free
    except OSError:
        return None


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def as_dict(
    snap: Snapshot, *, database: str | None, database_error: str | None, disk: int | None
) -> dict[str, Any]:
    """``personsd status --json``."""
    now = snap.taken_at

    def since(moment: datetime | None) -> float | None:
        return None if moment is None else round((now - moment).total_seconds(), 1)

    return {
        "taken_at": _time(now),
        "database": {"url": database, "up": database_error is None, "error": database_error},
        "disk_free_bytes": disk,
        "notifications_pending": snap.notifications_pending,
        "tenants": [
            {
                "tenant": t.name,
                "queued": t.queued,
                "oldest_queued_seconds": since(t.oldest_queued_at),
                "running": [
                    {
                        "import_id": r.import_id,
                        "file": r.file,
                        "rows": r.rows,
                        "percent": round(r.percent, 1),
                    }
                    for r in t.running
                ],
                "last_finished": None
                if t.last_finished is None
                else {
                    "import_id": t.last_finished.import_id,
                    "file": t.last_finished.file,
                    "status": t.last_finished.status,
                    "rows": t.last_finished.rows,
                    "failed_rows": t.last_finished.failed,
                    "finished_at": _time(t.last_finished.finished_at),
                },
                "last_completed_at": _time(t.last_completed_at),
                "since_last_completed_seconds": since(t.last_completed_at),
                "expect_every_seconds": t.expect_every_seconds,
                "overdue": t.overdue(now),
                "failed_imports": t.failed,
            }
            for t in snap.tenants
        ],
        "recent_failures": [
            {
                "import_id": f.import_id,
                "file": f.file,
                "finished_at": _time(f.finished_at),
            }
            for f in snap.recent_failures
        ],
    }


def render(snap: Snapshot, *, database: str, database_error: str | None, disk: int | None) -> Any:
    """``personsd status`` on a terminal: a rich renderable."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    now = snap.taken_at
    table = Table(title="personsd status", title_justify="left")
    for column in ("tenant", "queued", "running", "last finished", "since completed", "expected"):
        table.add_column(column)
    for t in snap.tenants:
        running = "\n".join(
            f"#{r.import_id} {r.file}: {r.rows} rows, {r.percent:.0f}%" for r in t.running
        )
        last = "-"
        if t.last_finished is not None:
            f = t.last_finished
            last = f"#{f.import_id} {f.status}: {f.rows} rows, {f.failed} errors"
        since = (
            "-"
            if t.last_completed_at is None
            else durations.render((now - t.last_completed_at).total_seconds())
        )
        expected = (
            "-" if t.expect_every_seconds is None else durations.render(t.expect_every_seconds)
        )
        since_text = Text(since, style="bold red" if t.overdue(now) else "")
        if t.overdue(now):
            since_text.append(" OVERDUE", style="bold red")
        table.add_row(
            Text(t.name), str(t.queued), Text(running or "-"), Text(last), since_text, expected
        )
    lines: list[Any] = [table]
    if snap.recent_failures:
        failures = Text("Recent failures:\n", style="bold")
        for f in snap.recent_failures:
            failures.append(f"  #{f.import_id} {f.file} at {_time(f.finished_at)}\n")
        lines.append(failures)
    db_line = Text("database: ")
    if database_error is None:
        db_line.append("up", style="green")
    else:
        db_line.append(f"DOWN ({database_error})", style="bold red")
    db_line.append(f"  {database}")
    lines.append(db_line)
    disk_text = "unknown" if disk is None else f"{disk / 1024**3:.1f} GiB free"
    lines.append(Text(f"disk: {disk_text}"))
    lines.append(Text(f"notifications pending: {snap.notifications_pending}"))
    return Group(*lines)
