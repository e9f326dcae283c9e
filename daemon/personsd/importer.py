"""One import, chunk by chunk (SPEC sections 2, 4 and 5).

The content's sha256 is computed here when the import starts (the daemon's
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
accounting, quarantine and archive are the caller's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, text

from personsd import fileformat, layers, metrics, reports, rules, validation, webhooks
from personsd.config import Config
from personsd.errors import ErrorKind, FileRejected, InternalError, OperatorError, RowError
from personsd.fileformat import Layout
from personsd.logging import Event, ProgressReporter, get_logger
from personsd.phones import (
    CarrierCheck,
    HttpCarrierLookup,
    ask_all,
    carrier_check,
    offline_lookup,
)
from personsd.store import fields as store_fields
from personsd.store import imports as store_imports
from personsd.store import overlay
from personsd.store import persons as store_persons
from personsd.store import tenants as store_tenants
from personsd.store.db import write_tx
from personsd.store.imports import Checkpoint, ImportRecord, Lease

log = get_logger("personsd.importer")

_CREATING_KEYS = frozenset({"external_person_id", "mdn", "vibes_device_id"})
_TRANSIENT = ErrorKind.TRANSIENT_LOOKUP_FAILURE.error_class
_READ_BUFFER = 1 << 20
# A namespace for the per-tenant advisory lock, so it cannot clash with
# another application's locks on a shared PostgreSQL.
_LOCK_NAMESPACE = 0x7E25
# While a big file is hashed at the import's start, its heartbeat is refreshed this often.
_HASH_HEARTBEAT_SECONDS = 30.0


class Interrupted(InternalError):
    """Stopped between chunks on request; the import resumes from its checkpoint."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Outcome:
    """What one run of an import ended with."""

    record: ImportRecord
    summary: reports.Summary


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# The sha256 of an import the intake queued without reading it (see create).
UNHASHED = ""


def sha256_of(
    path: Path,
    stop: threading.Event | None = None,
    on_block: Callable[[int], None] | None = None,
) -> tuple[str, int]:
    """The file's sha256 and size, streamed; :class:`Interrupted` when ``stop`` is set.

    ``on_block(bytes_read)`` is called after every block (1 MiB).
    """
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while block := fh.read(_READ_BUFFER):
            digest.update(block)
            size += len(block)
            if stop is not None and stop.is_set():
                raise Interrupted(f"stopped while hashing {path.name}")
            if on_block is not None:
                on_block(size)
    return digest.hexdigest(), size


def work_paths(cfg: Config, import_id: int, generation: int = 0) -> tuple[Path, Path]:
    """The partial errors and retry reports of an import, in personsd's work area.

    Each daemon claim (lease ``generation`` > 0, SPEC 12) writes its own
    copies in a folder of its own, seeded from the previous claim's
    checkpointed lengths: a holder frozen past its lease that wakes up can
    only ever write into files that nobody reads any more.
    """
    folder = cfg.work_dir / str(import_id)
    if generation > 0:
        folder = folder / f"g{generation}"
    return folder / "errors.csv", folder / "retry.persons"


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
    digest, size = (UNHASHED, size) if size is not None else sha256_of(path)
    with write_tx(engine) as conn:
        found = store_tenants.get_tenant(conn, tenant)
        if found is None:
            raise OperatorError(f"unknown tenant {tenant!r}")
        import_id = store_imports.create(
            conn,
            tenant_id=found.id,
            file_name=file_name or path.name,
            sha256=digest,
            bytes=size,
            source=source,
            work_path=str(path),
            received_at=received_at or now(),
            mode=mode,
        )
        duplicate = (
            store_imports.find_duplicate(conn, found.id, digest, import_id, mode=mode)
            if digest != UNHASHED
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
                heartbeat_at=moment,
                started_at=moment,
                attempts=1,
            )
        elif duplicate is not None:
            store_imports.set_status(conn, import_id, "queued", duplicate_of=duplicate)
    return import_id


def carrier_for(cfg: Config) -> CarrierCheck:
    return carrier_check(cfg.imports.carrier_lookup, cfg.imports.carrier_lookup_url)


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
        tenant = _tenant_name(conn, record.tenant_id)
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
        record = _hash(engine, record, stop, lease)

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
            carrier or carrier_for(cfg),
            stop,
            on_chunk,
            bound,
            validate_in,
            lease,
        )
    except FileRejected as rejected:
        layers.discard(cfg.work_dir / str(import_id))
        return _reject(engine, cfg, record, rejected, lease)

    layers.discard(cfg.work_dir / str(import_id))
    outcome = _finish(engine, cfg, import_id, "completed", lease=lease)
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


def _hash(
    engine: Engine, record: ImportRecord, stop: threading.Event | None, lease: Lease | None
) -> ImportRecord:
    """The content's sha256, size and ``duplicate_of``, recorded at the import's start.

    Hashing a file of tens of GiB takes a while: the heartbeat is kept fresh
    meanwhile so that no other instance takes the import for abandoned.
    """
    beat = time.monotonic()

    def alive(_done: int) -> None:
        nonlocal beat
        if time.monotonic() - beat >= _HASH_HEARTBEAT_SECONDS:
            beat = time.monotonic()
            with write_tx(engine) as conn:
                store_imports.set_status(conn, record.id, record.status, heartbeat_at=now())

    digest, size = sha256_of(Path(record.work_path), stop, alive)
    with write_tx(engine) as conn:
        if lease is not None:  # an instance that lost the import writes nothing
            store_imports.fence(conn, lease)
        duplicate = store_imports.find_duplicate(
            conn, record.tenant_id, digest, record.id, mode=record.mode
        )
        store_imports.set_status(
            conn, record.id, record.status, sha256=digest, bytes=size, duplicate_of=duplicate
        )
        return store_imports.get(conn, record.id)


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


def _tenant_name(conn: Connection, tenant_id: int) -> str:
    name = store_tenants.tenant_name(conn, tenant_id)
    if name is None:
        raise InternalError(f"import of unknown tenant id {tenant_id}")
    return name


def _reject(
    engine: Engine,
    cfg: Config,
    record: ImportRecord,
    rejected: FileRejected,
    lease: Lease | None,
) -> Outcome:
    errors_path, _ = work_paths(cfg, record.id, _generation(record, lease))
    errors_path.parent.mkdir(parents=True, exist_ok=True)
    _check(engine, lease)
    reports.rejected_report(errors_path, rejected.error_class, rejected.message, rejected.line)
    outcome = _finish(
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
    generation = _generation(record, lease)
    errors_path, retry_path = work_paths(cfg, record.id, generation)
    errors_path.parent.mkdir(parents=True, exist_ok=True)
    _adopt(cfg, record.id, generation, point)
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
        _check(engine, lease)
        # Whatever a crashed run appended after its last checkpoint goes.
        errors_out.truncate(point.errors_bytes)
        retry_out.truncate(point.retry_bytes)
        progress = ProgressReporter(
            source.plain_bytes, start_rows=point.rows_total, start_bytes=point.next_offset or 0
        )
        statistics = _Statistics(engine, enabled=record.mode == "import")
        for chunk in chunks:
            if stop is not None and stop.is_set():
                raise Interrupted(f"import {record.id} stopped at row {point.next_row}")
            statistics.grown(point.rows_created)
            lookups = _CountingCheck(_ahead(engine, record, chunk, carrier))
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


def _ahead(
    engine: Engine, record: ImportRecord, chunk: validation.ValidatedChunk, carrier: CarrierCheck
) -> CarrierCheck:
    """The chunk's carrier check; a remote service is asked now, before the write transaction.

    Only MDNs nobody in the tenant holds can be newly assigned, so only those
    are asked (each once). An MDN a row frees and a later row of the same
    chunk assigns is the rare one not asked ahead: asked when applied.
    """
    if not isinstance(carrier, HttpCarrierLookup):
        return chunk.carrier(carrier)
    candidates = rules.carrier_candidates(chunk.rows)
    if not candidates:
        return carrier
    with engine.connect() as conn:
        held = store_persons.load(conn, record.tenant_id, [(rules.MDN, m) for m in candidates])
    answers = ask_all(carrier, sorted(candidates - {person.mdn for person in held}))

    def known(e164: str) -> RowError | None:
        return answers[e164] if e164 in answers else carrier(e164)

    return known


class _CountingCheck:
    """A carrier check that counts its calls: did the chunk assign new MDNs?"""

    __slots__ = ("calls", "check")

    def __init__(self, check: CarrierCheck) -> None:
        self.check = check
        self.calls = 0

    def __call__(self, e164: str) -> RowError | None:
        self.calls += 1
        return self.check(e164)


class _Statistics:
    """Keeps PostgreSQL's statistics of persons in step with an initial load.

    Plans made from the statistics of a nearly empty table scan the tenant on
    every chunk instead of probing the unique indexes: quadratic in the file.
    Autovacuum catches up eventually (if it runs at all); this analyses
    whenever the import has added a fifth of what the planner believes the
    table holds, so a few times per load, at doubling sizes.
    """

    def __init__(self, engine: Engine, *, enabled: bool = True) -> None:
        self.engine = engine
        # A validation adds no person: nothing to keep in step.
        self.enabled = enabled and engine.dialect.name == "postgresql"
        self.believed: float = 0.0
        self.created_at_analyze = 0
        if self.enabled:
            with engine.connect() as conn:
                self.believed = store_persons.planner_rows(conn) or 0.0

    def grown(self, created: int) -> None:
        added = created - self.created_at_analyze
        # The tenant's own growth counts, not the table's: a new tenant in a
        # table of other tenants' millions is believed empty, and its probes
        # then walk the tenant's rows (any index on tenant_id looks as good).
        base = min(self.believed, float(self.created_at_analyze))
        if not self.enabled or added < max(1000.0, 0.2 * base):
            return
        with self.engine.begin() as conn:
            store_persons.analyze(conn)
            self.believed = store_persons.planner_rows(conn) or float(created)
        self.created_at_analyze = created


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
        _lock_tenant(conn, record.tenant_id)
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
        persons = rules.PersonSet(loaded, new_ids=new_ids, new_key=_Keys())

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
    takeover can slip in before the checkpoint), and bounds how long the
    transaction may sit idle: a holder frozen mid-chunk (SIGSTOP, a VM
    paused) loses its session, so its locks do not hold up the instance that
    takes over.
    """
    if conn.dialect.name == "postgresql":
        idle_ms = max(1000, int(lease.seconds * 1000))
        conn.execute(text(f"SET LOCAL idle_in_transaction_session_timeout = {idle_ms}"))
    store_imports.fence(conn, lease)


def _check(engine: Engine, lease: Lease | None) -> None:
    """Raise LeaseLost unless ``lease`` still holds (no-op without one)."""
    if lease is not None:
        with write_tx(engine) as conn:
            store_imports.fence(conn, lease)


def _generation(record: ImportRecord, lease: Lease | None) -> int:
    # The lease's own: the row may already show a newer claim's.
    return lease.generation if lease is not None else record.lease_generation


def _adopt(cfg: Config, import_id: int, generation: int, point: Checkpoint) -> None:
    """Seed this claim's reports with the checkpointed part of the newest earlier claim's."""
    errors_path, retry_path = work_paths(cfg, import_id, generation)
    if generation == 0 or errors_path.exists():
        return
    earlier = [0]
    for folder in (cfg.work_dir / str(import_id)).glob("g*"):
        number = folder.name[1:]
        if number.isdigit() and int(number) < generation:
            earlier.append(int(number))
    source_errors, source_retry = work_paths(cfg, import_id, max(earlier))
    _copy_prefix(source_retry, retry_path, point.retry_bytes)
    # The errors file last: its presence says the copies are complete.
    _copy_prefix(source_errors, errors_path, point.errors_bytes)


def _copy_prefix(source: Path, path: Path, length: int) -> None:
    """``path`` becomes a new file holding the first ``length`` bytes of ``source``."""
    if not source.exists():
        return
    temp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    with source.open("rb") as src, temp.open("wb") as out:
        remaining = length
        while remaining > 0:
            block = src.read(min(_READ_BUFFER, remaining))
            if not block:
                break
            out.write(block)
            remaining -= len(block)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, path)


def _ids(conn: Connection, reserved: list[int]) -> Iterator[int]:
    """The ids reserved for the chunk, then more on demand.

    The reservation covers every key value the chunk names that nobody holds;
    a row can still free a value (``[null]``) that a later row creates a person
    with, so in that rare case more ids are fetched, a few at a time.
    """
    yield from reserved
    while True:
        yield from store_persons.allocate_ids(conn, 16)


class _Keys:
    """New person keys: lowercase, time-ordered UUIDs (version 7, RFC 9562).

    Random keys (version 4) land all over the person_key index, so once the
    index outgrows the cache every chunk of an initial load dirties (and
    writes, at its commit) a page per new person. Keys led by the time in
    milliseconds go to the end of the index. 74 random bits remain: keys are
    no easier to guess, and a key tells only when its person was created.
    The random bits of 256 keys come from one call to urandom; one instance
    per chunk, so threads never share a buffer.
    """

    __slots__ = ("_at", "_random")
    _BATCH = 256

    def __init__(self) -> None:
        self._random = ""
        self._at = 0

    def __call__(self) -> str:
        at = self._at
        if at >= len(self._random):
            self._random, at = os.urandom(10 * self._BATCH).hex(), 0
        self._at = at + 20
        h = self._random[at : at + 20]
        stamp = f"{time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF:012x}"
        # Version nibble 7; variant bits 10xx in the first nibble of the 4th group.
        return f"{stamp[:8]}-{stamp[8:]}-7{h[:3]}-{_VARIANT[int(h[3], 16) & 3]}{h[4:7]}-{h[7:19]}"


_VARIANT = "89ab"


def _lock_tenant(conn: Connection, tenant_id: int) -> None:
    """Serialise writers of one tenant's persons across processes and hosts.

    SQLite needs nothing: the write transaction holds the database lock.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(
            text("select pg_advisory_xact_lock(:ns, :tenant)"),
            {"ns": _LOCK_NAMESPACE, "tenant": tenant_id},
        )


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


def _finish(
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
    """
    changes = {"finished_at": now(), **changes}
    _check(engine, lease)
    with engine.connect() as conn:
        record = store_imports.get(conn, import_id)
        tenant = _tenant_name(conn, record.tenant_id)
    final = dataclasses.replace(record, status=status, **changes)
    summary = _publish_files(cfg, final, tenant)
    with write_tx(engine) as conn:
        if lease is not None:
            store_imports.fence(conn, lease)
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
    _check(engine, lease)
    with engine.connect() as conn:
        record = store_imports.get(conn, import_id)
        tenant = _tenant_name(conn, record.tenant_id)
    if record.status not in ("completed", "rejected", "failed"):
        raise InternalError(f"import {import_id} is {record.status}, not finished")
    summary = _publish_files(cfg, record, tenant)
    with write_tx(engine) as conn:
        if lease is not None:
            store_imports.fence(conn, lease)
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
    layers.discard(cfg.work_dir / str(import_id))
    if record.sha256 == UNHASHED:
        try:
            _hash(engine, record, None, lease)
        except OSError as exc:  # the summary says sha256 null
            log.warning("import.unhashed", import_id=import_id, error=repr(exc)[:300])
    changes: dict[str, Any] = {"last_error": reason[:2000]}
    if attempts is not None:
        changes["attempts"] = attempts
    outcome = _finish(engine, cfg, import_id, "failed", lease=lease, **changes)
    log.error(
        Event.IMPORT_FAILED,
        tenant=outcome.summary.tenant,
        import_id=import_id,
        file=outcome.record.file_name,
        reason=reason[:500],
        attempts=outcome.record.attempts,
    )
    return outcome
