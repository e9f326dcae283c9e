"""The end of an import: its reports published to the outbox, its status final.

The importer's chunk loop ends here (:func:`finish`, :func:`reject`); the
caller who spent an import's last attempt ends it with :func:`fail`;
``personsd republish`` and a resumed finished import call :func:`publish`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy import Connection, Engine

from personsd import digest, layers, metrics, reports, webhooks
from personsd.config import Config
from personsd.errors import FileRejected, InternalError
from personsd.logging import Event, get_logger
from personsd.outcome import Outcome, now
from personsd.store import imports as store_imports
from personsd.store import leases as store_leases
from personsd.store import overlay
from personsd.store import tenants as store_tenants
from personsd.store.db import write_tx
from personsd.store.imports import ImportRecord
from personsd.store.leases import Lease
from personsd.summary import summary_of
from personsd.workarea import generation, work_paths

# The importer's own: its log lines keep the logger name they always had.
log = get_logger("personsd.importer")


def tenant_name(conn: Connection, tenant_id: int) -> str:
    """The name of an import's tenant; an internal error when there is none."""
    name = store_tenants.tenant_name(conn, tenant_id)
    if name is None:
        raise InternalError(f"import of unknown tenant id {tenant_id}")
    return name


def check(engine: Engine, lease: Lease | None) -> None:
    """Raise LeaseLost unless ``lease`` still holds (no-op without one)."""
    if lease is not None:
        with write_tx(engine) as conn:
            store_leases.fence(conn, lease)


def reject(
    engine: Engine,
    cfg: Config,
    record: ImportRecord,
    rejected: FileRejected,
    lease: Lease | None,
) -> Outcome:
    """End an import whose file as a whole is refused: one-line errors report, rejected."""
    errors_path, _ = work_paths(cfg, record.id, generation(record, lease))
    errors_path.parent.mkdir(parents=True, exist_ok=True)
    check(engine, lease)
    reports.rejected_report(errors_path, rejected.error_class, rejected.message, rejected.line)
    outcome = finish(
        engine,
        cfg,
        record.id,
        "rejected",
        lease=lease,
        file_error_class=rejected.error_class,
        file_error_message=rejected.message,
    )
    log.warning(
        Event.IMPORT_REJECTED,
        tenant=outcome.summary.tenant,
        import_id=record.id,
        file=record.file_name,
        error_class=rejected.error_class,
        message=rejected.message,
        line=rejected.line,
    )
    return outcome


def finish(
    engine: Engine,
    cfg: Config,
    import_id: int,
    status: str,
    *,
    lease: Lease | None = None,
    **changes: Any,
) -> Outcome:
    """Publish the reports as ``status``, then record the import as finished.

    In this order so that a full disk or a crash while publishing leaves the
    import running, to be resumed (from its last checkpoint: no chunk is
    redone) and published again, same bytes but ``finished_at``: a finished
    import never goes back to the queue (store.imports.TRANSITIONS). The
    webhook's delivery row is written in the transaction that ends the import
    (SPEC 10); with a ``lease``, both steps only while it holds (SPEC 12).
    A decrypted work copy (SPEC 11) goes first, whichever way the import ends.
    """
    layers.discard(cfg.work_dir / str(import_id))
    changes = {"finished_at": now(), **changes}
    check(engine, lease)
    with engine.connect() as conn:
        record = store_imports.get(conn, import_id)
        tenant = tenant_name(conn, record.tenant_id)
    final = dataclasses.replace(record, status=status, **changes)
    summary = _publish_files(cfg, final, tenant)
    with write_tx(engine) as conn:
        if lease is not None:
            store_leases.fence(conn, lease)
        store_imports.set_status(conn, import_id, status, reports_published=True, **changes)
        webhooks.enqueue(conn, cfg, import_id)
        if status != "failed":  # a failed validation keeps its overlay: `imports retry` resumes it
            overlay.clear(conn, import_id)
        record = store_imports.get(conn, import_id)
    metrics.import_ended(summary)
    return Outcome(record=record, summary=summary)


def publish(engine: Engine, cfg: Config, import_id: int, *, lease: Lease | None = None) -> Outcome:
    """Publish a finished import's reports to the outbox again (idempotent; summary last).

    With a ``lease``, only while it holds (checked before and after writing).
    """
    check(engine, lease)
    with engine.connect() as conn:
        record = store_imports.get(conn, import_id)
        tenant = tenant_name(conn, record.tenant_id)
    if record.status not in ("completed", "rejected", "failed"):
        raise InternalError(f"import {import_id} is {record.status}, not finished")
    summary = _publish_files(cfg, record, tenant)
    with write_tx(engine) as conn:
        if lease is not None:
            store_leases.fence(conn, lease)
        store_imports.set_status(conn, import_id, record.status, reports_published=True)
        record = store_imports.get(conn, import_id)
    return Outcome(record=record, summary=summary)


def _publish_files(cfg: Config, record: ImportRecord, tenant: str) -> reports.Summary:
    """Write ``record``'s reports into the outbox (summary last); its summary."""
    import_id = record.id
    summary = summary_of(record, tenant)
    errors_path, retry_path = work_paths(cfg, import_id, record.lease_generation)
    if not errors_path.exists():
        # Failed before a single row was read: the header section may be unknown.
        errors_path.parent.mkdir(parents=True, exist_ok=True)
        reports.ErrorsWriter(errors_path, ()).close()
    outbox = cfg.outbox(tenant)
    outbox.mkdir(parents=True, exist_ok=True)
    # Temp files go next to the partial reports (personsd's, same filesystem);
    # a directory found at a report's name is moved to state/displaced/<tenant>/.
    reports.publish_all(
        outbox,
        record.file_name,
        import_id,
        errors_path,
        retry_path if record.retry_rows > 0 else None,
        summary,
        displaced=cfg.state_dir / "displaced" / tenant,
    )
    return summary


def fail(
    engine: Engine,
    cfg: Config,
    import_id: int,
    reason: str,
    *,
    attempts: int | None = None,
    lease: Lease | None = None,
) -> Outcome:
    """Give up on an import after its last attempt: reports published, status failed.

    ``attempts``: the count to record (the caller's, who spent the last one).
    """
    with engine.connect() as conn:
        record = store_imports.get(conn, import_id)
    if record.sha256 == digest.UNHASHED:
        try:
            digest.record(engine, record, None, lease)
        except OSError as exc:  # the summary says sha256 null
            log.warning(Event.IMPORT_UNHASHED, import_id=import_id, error=repr(exc)[:300])
    changes: dict[str, Any] = {"last_error": reason[:2000]}
    if attempts is not None:
        changes["attempts"] = attempts
    outcome = finish(engine, cfg, import_id, "failed", lease=lease, **changes)
    log.error(
        Event.IMPORT_FAILED,
        tenant=outcome.summary.tenant,
        import_id=import_id,
        file=outcome.record.file_name,
        reason=reason[:500],
        attempts=outcome.record.attempts,
    )
    return outcome
