"""The summary.json of an import as the database records it (model: ``reports.Summary``)."""

from __future__ import annotations

from datetime import UTC, datetime

from personsd import layers, reports
from personsd.digest import UNHASHED
from personsd.store.imports import ImportRecord


def summary_of(record: ImportRecord, tenant: str) -> reports.Summary:
    """The summary.json of an import as the database records it."""
    file_error = None
    if record.status == "rejected" and record.file_error_class and record.file_error_message:
        file_error = reports.FileError(
            error_class=record.file_error_class, message=record.file_error_message
        )
    return reports.Summary(
        import_id=record.id,
        tenant=tenant,
        file=record.file_name,
        sha256=record.sha256 if record.sha256 != UNHASHED else None,
        bytes=record.bytes,
        status=record.status,  # type: ignore[arg-type]
        received_at=record.received_at.replace(tzinfo=record.received_at.tzinfo or UTC),
        started_at=_aware(record.started_at),
        finished_at=_aware(record.finished_at),
        rows=reports.RowCounts(
            total=record.rows_total,
            succeeded=record.rows_succeeded,
            failed=record.rows_failed,
            created=record.rows_created,
            updated=record.rows_updated,
        ),
        # SPEC 4 counts error lines by class; a rejected file's report has one.
        errors=(
            {file_error.error_class: 1}
            if file_error is not None
            else {k: v for k, v in record.error_counts.items() if v}
        ),
        file_error=file_error,
        reports=reports.Reports.of(record.file_name, record.id, retry=record.retry_rows > 0),
        duplicate_of=record.duplicate_of,
        mode=record.mode,  # type: ignore[arg-type]
        layers=layers.split_name(record.file_name)[1],
    )


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)
