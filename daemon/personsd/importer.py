"""One import, chunk by chunk (SPEC sections 2, 4 and 5).

The content's sha256 is computed (``digest``) when the import starts (the daemon's
intake only records the size). Each chunk of ``import.chunk_rows`` rows is
read and validated outside any transaction, an ``http`` carrier service is
asked about its new MDNs (no transaction open), then, in one write
transaction: every identifier the chunk names is fetched with a bounded
number of queries, the rows are applied in file order to that in-memory set
(so a row sees every row before it exactly as if rows ran one by one), the
result is written with bulk statements, the chunk's report lines are
appended and fsynced, and the checkpoint (byte offset, line, row, counts,
report lengths) is saved. A crash at any point leaves either the previous
chunk's checkpoint or this one's, never half.

The daemon and ``personsd import`` both call :func:`run`; the attempt
accounting, quarantine and archive are the caller's. Around the chunk loop:
``digest`` hashes the file, ``workarea`` holds the partial reports,
``store.statistics`` keeps the planner's statistics in step, ``store.keys``
makes person keys, ``publication`` ends the import and ``summary`` builds
its summary.json.

Over 400 lines on purpose: the chunk loop and its one write transaction; its side
jobs already live in the modules named above.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import structlog
from sqlalchemy import Connection, Engine

from personsd import digest, fileformat, layers, lookahead, reports, rules, validation, workarea
from personsd.config import Config
from personsd.digest import UNHASHED, sha256_of
from personsd.errors import ErrorKind, FileRejected, OperatorError, RowError
from personsd.fileformat import Layout
from personsd.logging import Event, ProgressReporter, get_logger
from personsd.outcome import Interrupted, Outcome, now
from personsd.phones import (
    CarrierCheck,
    offline_lookup,
)
from personsd.publication import check, fail, finish, publish, reject, tenant_name
from personsd.store import fields as store_fields
from personsd.store import imports as store_imports
from personsd.store import leases as store_leases
from personsd.store import overlay
from personsd.store import persons as store_persons
from personsd.store import tenants as store_tenants
from personsd.store.db import write_tx
from personsd.store.imports import Checkpoint, ImportRecord
from personsd.store.keys import PersonKeys
from personsd.store.leases import Lease
from personsd.store.statistics import Statistics
from personsd.workarea import work_paths

# Callers and tests name these through the importer, where they always lived.
__all__ = ["UNHASHED", "Interrupted", "Outcome", "fail", "publish", "work_paths"]

log = get_logger("personsd.importer")

_CREATING_KEYS = frozenset({"external_person_id", "mdn", "vibes_device_id"})
_TRANSIENT = ErrorKind.TRANSIENT_LOOKUP_FAILURE.error_class


def create(
    engine: Engine,
    *,
    tenant: str,
    path: Path,
    source: str,
    file_name: str | None = None,
    received_at: datetime | None = None,
    claimed_by: str | None = None,
    size: int | None = None,
    mode: str = "import",
) -> int:
    """Record an import of ``path`` for ``tenant``; returns its id.

    ``mode`` ``validate`` (a file dropped in ``/validate``) runs every rule and
    writes no person (``store.overlay``).

    It is queued for the daemon's workers, or, with ``claimed_by``, running at
    once for the caller (``personsd import``), so no daemon sharing the
    database can claim it between its creation and its run.

    With ``size`` (the daemon's intake) the file is not read: its sha256 and
    ``duplicate_of`` are found when the import starts (:func:`run`), in the
    tenant's worker, so a huge upload never holds up another tenant's intake.
    """
    sha256, size = (UNHASHED, size) if size is not None else sha256_of(path)
    with write_tx(engine) as conn:
        found = store_tenants.get_tenant(conn, tenant)
        if found is None:
            raise OperatorError(f"unknown tenant {tenant!r}")
        import_id = store_imports.create(
            conn,
            tenant_id=found.id,
            file_name=file_name or path.name,
            sha256=sha256,
            bytes=size,
            source=source,
            work_path=str(path),
            received_at=received_at or now(),
            mode=mode,
        )
        duplicate = (
            store_imports.find_duplicate(conn, found.id, sha256, import_id, mode=mode)
            if sha256 != UNHASHED
            else None
        )
        if claimed_by is not None:
            moment = now()
            store_imports.set_status(
                conn,
                import_id,
                "running",
                duplicate_of=duplicate,
                claimed_by=claimed_by,
                claimed_at=moment,
                started_at=moment,
                attempts=1,
            )
        elif duplicate is not None:
            store_imports.set_status(conn, import_id, "queued", duplicate_of=duplicate)
    return import_id


def run(
    engine: Engine,
    cfg: Config,
    import_id: int,
    *,
    carrier: CarrierCheck | None = None,
    stop: threading.Event | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
    validate_in: validation.Mode = "auto",
    lease: Lease | None = None,
) -> Outcome:
    """Run (or resume) an import to its end and publish its reports.

    ``on_chunk(rows_done, bytes_done)`` is called after every committed chunk.
    ``validate_in`` says where rows are read and validated (see ``validation``):
    ``auto`` takes a second process for big files on a multi-core machine.
    Raises :class:`Interrupted` when ``stop`` is set between chunks, and any
    internal error as is (the data of the failing chunk rolled back).
    With a ``lease`` (the daemon's claim, SPEC 12) every write is fenced by
    it: once another instance has taken the import over, the next write
    raises :class:`LeaseLost` and its transaction rolls back.
    """
    with engine.connect() as conn:
        record = store_imports.get(conn, import_id)
        tenant = tenant_name(conn, record.tenant_id)
    bound = log.bind(tenant=tenant, import_id=import_id, file=record.file_name)
    if record.status in ("completed", "rejected"):
        return publish(engine, cfg, import_id, lease=lease)

    resumed = record.next_offset is not None
    if record.mode == "validate" and not resumed:
        # A validation started over (never checkpointed) keeps nothing of a run before.
        with write_tx(engine) as conn:
            overlay.clear(conn, import_id)
    if record.status != "running":
        # The daemon's claim already made it running. No attempt is counted
        # here: attempts are spent by internal failures (the caller's).
        with write_tx(engine) as conn:
            store_imports.set_status(
                conn, import_id, "running", started_at=record.started_at or now()
            )
            record = store_imports.get(conn, import_id)
    bound.info(
        Event.IMPORT_RESUMED if resumed else Event.IMPORT_STARTED,
        # This run's number: the failed attempts before it, plus one.
        attempt=record.attempts + 1,
        row=record.next_row,
        bytes=record.bytes,
        mode=record.mode,
    )
    if record.sha256 == UNHASHED:
        record = digest.record(engine, record, stop, lease)

    try:
        fileformat.check_name(record.file_name)
        source = plain_source(engine, cfg, record)
        with source.open(max_row_bytes=cfg.imports.max_row_bytes) as fh:
            layout = fileformat.read_layout(fh, max_row_bytes=cfg.imports.max_row_bytes)
        _import_rows(
            engine,
            cfg,
            record,
            source,
            layout,
            carrier or lookahead.carrier_for(cfg),
            stop,
            on_chunk,
            bound,
            validate_in,
            lease,
        )
    except FileRejected as rejected:
        return reject(engine, cfg, record, rejected, lease)

    outcome = finish(engine, cfg, import_id, "completed", lease=lease)
    rows = outcome.summary.rows
    bound.info(
        Event.IMPORT_COMPLETED,
        rows=rows.total,
        succeeded=rows.succeeded,
        failed=rows.failed,
        created=rows.created,
        updated=rows.updated,
        mode=record.mode,
    )
    return outcome


def plain_source(engine: Engine, cfg: Config, record: ImportRecord) -> layers.Source:
    """The import's file with its encryption undone and compression checked (SPEC 11)."""
    with engine.connect() as conn:
        signer = store_tenants.pgp_verify_key(conn, record.tenant_id)
    return layers.prepare(
        Path(record.work_path),
        record.file_name,
        work=cfg.work_dir / str(record.id),
        pgp_home=cfg.pgp_home,
        signer=signer,
    )


def _import_rows(
    engine: Engine,
    cfg: Config,
    record: ImportRecord,
    source: layers.Source,
    layout: Layout,
    carrier: CarrierCheck,
    stop: threading.Event | None,
    on_chunk: Callable[[int, int], None] | None,
    bound: structlog.typing.FilteringBoundLogger,
    validate_in: validation.Mode,
    lease: Lease | None,
) -> None:
    point = record.checkpoint
    generation = workarea.generation(record, lease)
    errors_path, retry_path = work_paths(cfg, record.id, generation)
    errors_path.parent.mkdir(parents=True, exist_ok=True)
    workarea.adopt(cfg, record.id, generation, point)
    with engine.connect() as conn:
        fields = tuple(store_fields.list_fields(conn, record.tenant_id))
    job = validation.Job(
        path=str(source.path),
        compression=source.compression,
        layout=layout,
        fields=fields,
        offset=point.next_offset,
        line=point.next_line,
        row=point.next_row,
        chunk_rows=cfg.imports.chunk_rows,
        max_row_bytes=cfg.imports.max_row_bytes,
        # The offline check is pure: the validator process runs it for every
        # MDN ahead, so only the (rare) failures cost this process anything.
        precheck=carrier is offline_lookup,
    )
    with (
        reports.ErrorsWriter(errors_path, layout.fields) as errors_out,
        reports.RetryWriter(retry_path, layout) as retry_out,
        validation.open_chunks(job, validate_in, file_bytes=source.plain_bytes) as chunks,
    ):
        # Opened by name above: if the import was taken over meanwhile, these
        # may be the new holder's files, which must not be cut back.
        check(engine, lease)
        # Whatever a crashed run appended after its last checkpoint goes.
        errors_out.truncate(point.errors_bytes)
        retry_out.truncate(point.retry_bytes)
        progress = ProgressReporter(
            source.plain_bytes, start_rows=point.rows_total, start_bytes=point.next_offset or 0
        )
        statistics = Statistics(engine, enabled=record.mode == "import")
        for chunk in chunks:
            if stop is not None and stop.is_set():
                raise Interrupted(f"import {record.id} stopped at row {point.next_row}")
            statistics.grown(point.rows_created)
            lookups = lookahead.CountingCheck(lookahead.ahead(engine, record, chunk, carrier))
            point = _apply_chunk(
                engine, record, chunk, lookups, point, errors_out, retry_out, lease
            )
            chunks.advise(precheck=lookups.calls > 0)
            if on_chunk is not None:
                on_chunk(point.rows_total, point.next_offset or 0)
            shown = progress.update(point.rows_total, point.next_offset or 0)
            if shown is not None:
                bound.info(Event.IMPORT_PROGRESS, **shown.as_fields())
            del chunk  # freed before the next one is read, not after


def _apply_chunk(
    engine: Engine,
    record: ImportRecord,
    chunk: validation.ValidatedChunk,
    carrier: CarrierCheck,
    point: Checkpoint,
    errors_out: reports.ErrorsWriter,
    retry_out: reports.RetryWriter,
    lease: Lease | None,
) -> Checkpoint:
    rows = chunk.rows
    changes = [row for row in rows if isinstance(row, rules.RowChange)]
    lookups = [pair for change in changes for pair in change.lookups]
    report: list[reports.ReportLine] = []
    retry: list[tuple[str, ...]] = []
    counts = Counter[str]()
    error_counts = Counter[str](point.error_counts)

    validate = record.mode == "validate"
    with write_tx(engine) as conn:
        # The same lock and reads for a validation as for an import: it sees the
        # tenant's persons as the import would, and waits for a concurrent writer.
        store_persons.lock_tenant(conn, record.tenant_id)
        if lease is not None:
            _fence_chunk(conn, lease)
        loaded = store_persons.load(conn, record.tenant_id, lookups)
        if validate:
            loaded = overlay.load(conn, record.id, lookups, loaded)
        held = {column: {getattr(person, column) for person in loaded} for column in _CREATING_KEYS}
        creatable = {
            (change.key, change.key_value)
            for change in changes
            if change.key in held and change.key_value not in held[change.key]
        }
        ids = store_persons.allocate_ids(conn, len(creatable)) if creatable and not validate else []
        new_ids = overlay.new_ids(conn, record.id) if validate else _ids(conn, ids)
        persons = rules.PersonSet(loaded, new_ids=new_ids, new_key=PersonKeys())

        for row in rows:
            outcome: rules.Applied | tuple[RowError, ...]
            if isinstance(row, rules.RowChange):
                outcome = rules.apply(persons, row, carrier)
                if isinstance(outcome, rules.Applied):
                    counts[outcome.value] += 1
                    continue
            else:
                outcome = row.errors
            counts["failed"] += 1
            for error in outcome:
                report.append(
                    reports.ReportLine(line=row.line, row=row.row, error=error, values=row.values)
                )
                error_counts[error.error_class] += 1
            if any(error.error_class == _TRANSIENT for error in outcome):
                retry.append(row.values)

        if validate:
            # Never a person: what the chunk would have written goes to the overlay,
            # committed with the checkpoint so that a resumed validation sees it.
            overlay.store(conn, record.id, persons.created, persons.updated())
        else:
            store_persons.write(conn, record.tenant_id, persons.created, persons.updated())
        if report:
            errors_out.append(report)
        if retry:
            retry_out.append(retry)
        succeeded = counts["created"] + counts["updated"]
        point = Checkpoint(
            next_offset=chunk.end,
            next_line=chunk.next_line,
            next_row=chunk.last_row,
            rows_total=point.rows_total + len(rows),
            rows_succeeded=point.rows_succeeded + succeeded,
            rows_failed=point.rows_failed + counts["failed"],
            rows_created=point.rows_created + counts["created"],
            rows_updated=point.rows_updated + counts["updated"],
            error_counts=dict(error_counts),
            # Durable before the commit: a checkpoint never points past what is on disk.
            errors_bytes=errors_out.flush_and_sync(),
            retry_bytes=retry_out.flush_and_sync(),
            retry_rows=point.retry_rows + len(retry),
        )
        store_imports.save_checkpoint(conn, record.id, point, lease)
    return point


def _fence_chunk(conn: Connection, lease: Lease) -> None:
    """The lease checked before the chunk writes anything, report lines included.

    On PostgreSQL this also locks the import's row for the transaction (no
    takeover can slip in before the checkpoint). A holder frozen mid-chunk
    (SIGSTOP, a VM paused) loses its session after a lease idle in the
    transaction, so its locks do not hold up the instance that takes over:
    the daemon's engine sets that for every session (``db.connect``).
    """
    store_leases.fence(conn, lease)


def _ids(conn: Connection, reserved: list[int]) -> Iterator[int]:
    """The ids reserved for the chunk, then more on demand.

    The reservation covers every key value the chunk names that nobody holds;
    a row can still free a value (``[null]``) that a later row creates a person
    with, so in that rare case more ids are fetched, a few at a time.
    """
    yield from reserved
    while True:
        yield from store_persons.allocate_ids(conn, 16)
